"""`edgence-agent demo`: the whole main job on one machine, live.

Starts two Mosquitto brokers on loopback (the gateway's local broker and a stand-in upstream),
creates a throwaway gateway key and config, runs the real agent, publishes frames from
simulated sensors to the local broker, and prints every signed observation that arrives
upstream after verifying its EIP-712 signature independently of the agent. anvil, started on
loopback, is the embedded full node: a dApp asks the gateway for eth_chainId over MQTT 5
request/response (forwarded) and for anvil_setBalance (refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

import paho.mqtt.client as paho

from agent.attest.keys import GatewayKey, write_key_file
from agent.attest.observation import verify_envelope
from agent.chainclient.anvil import LocalAnvil
from agent.config import BrokerEndpoint, load_config
from agent.devices.registry import DeviceRegistry
from agent.errors import ChainError, EnvelopeError
from agent.localbroker import LocalMosquitto
from agent.model import Transport
from agent.mqtt import MqttConnection
from agent.runtime import Agent
from agent.simulator import SimulatedDevice, demo_devices

INTRUDER_EVERY = 15  # frames between two attempts to slip something past the gateway

CONFIG_TEMPLATE = """\
# Throwaway config written by `edgence-agent demo`.
[gateway]
key_file = "gateway.key"
data_dir = "data"
chain_id = 31337

[sources.mqtt]
url = "{local}"

[bridge]
url = "{upstream}"

[metrics]
# Any free port: the demo must not collide with an installed agent on 127.0.0.1:9464.
listen = "127.0.0.1:0"
"""

CHAIN_TEMPLATE = """
[chain]
enabled = true
rpc_url = "{rpc}"
ws_url = "{ws}"

[forward]
enabled = true
"""


def _endpoint(port: int, client_id: str) -> BrokerEndpoint:
    return BrokerEndpoint(host="127.0.0.1", port=port, client_id=client_id)


async def run_demo(
    duration: float | None, rate: float, out: TextIO = sys.stdout, keep: bool = False
) -> int:
    """The demo; its brokers and work dir are cleaned up however it ends."""
    workdir = Path(tempfile.mkdtemp(prefix="edgence-demo-"))
    local = LocalMosquitto(workdir, name="local")
    upstream = LocalMosquitto(workdir, name="upstream")
    node: LocalAnvil | None = None
    try:
        local.start()
        upstream.start()
        try:
            node = LocalAnvil(workdir)  # the embedded default full node
            node.start()
        except ChainError as exc:
            print(f"  (no full node: {exc}; the demo runs without one)", file=out)
            node = None
        return await _demo(workdir, local, upstream, duration, rate, out, node)
    finally:
        local.stop()
        upstream.stop()
        if node is not None:
            node.stop()
        if keep:
            print(f"work dir kept: {workdir}", file=out)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


async def _demo(
    workdir: Path,
    local: LocalMosquitto,
    upstream: LocalMosquitto,
    duration: float | None,
    rate: float,
    out: TextIO,
    node: LocalAnvil | None = None,
) -> int:
    key = GatewayKey.generate()
    write_key_file(workdir / "gateway.key", key)
    cfg_path = workdir / "agent.toml"
    text = CONFIG_TEMPLATE.format(local=local.url, upstream=upstream.url)
    if node is not None:
        text += CHAIN_TEMPLATE.format(rpc=node.url, ws=node.ws_url)
    cfg_path.write_text(text)
    cfg = load_config(cfg_path)
    devices = demo_devices()
    # The simulated sensors are enrolled as `edgence-agent pair` would leave them: active,
    # each with its own key; every frame they send carries its HMAC.
    assert cfg.enrollment is not None
    registry = DeviceRegistry(cfg.enrollment.registry_dir)
    for d in devices:
        d.key = secrets.token_bytes(32)
    registry.enroll_active((d.device_id, Transport.MQTT, d.key) for d in devices if d.key)
    agent = Agent(cfg, key)
    print(f"edgence-agent demo  (work dir {workdir})", file=out)
    print(f"  gateway address  {key.checksum_address}  (throwaway key)", file=out)
    print(
        f"  local broker     {local.url}   <- simulated sensors publish devices/<id>/up", file=out
    )
    print(
        f"  upstream broker  {upstream.url}   -> edgence/{key.address}/obs/<device>/<sensor>",
        file=out,
    )
    if node is not None:
        print(
            f"  full node        {node.url}   anvil; dApps ask over MQTT 5 on "
            f"edgence/{key.address}/rpc/req/<name>",
            file=out,
        )
    print(
        "\n  Lines below, Ctrl-C stops:\n"
        "    ✓ signed by   an observation as it arrived on the upstream broker, its signature\n"
        "                  checked here with ecrecover; latency = sensor publish -> upstream\n"
        "    ✗ refused     a frame the gateway did not sign (the demo's intruder, replayed and\n"
        "                  forged frames), with the reason and how many so far\n"
        "    dApp          a dApp's JSON-RPC request over MQTT 5 and the gateway's answer\n",
        file=out,
    )
    out.flush()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    sent_at: dict[tuple[str, int], float] = {}
    seen = {"ok": 0, "bad": 0}

    viewer = MqttConnection(
        _endpoint(upstream.port, "edgence-demo-viewer"), clean_start=True, name="viewer"
    )

    def on_view(client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        try:
            v = verify_envelope(bytes(msg.payload))
        except EnvelopeError as exc:
            seen["bad"] += 1
            print(f"  ✗ {msg.topic}: {exc}", file=out)
            return
        seen["ok"] += 1
        r = v.reading
        t0 = (
            sent_at.pop((r.device_id, r.counter), None)
            if r.sensor == _last_sensor(r.device_id)
            else sent_at.get((r.device_id, r.counter))
        )
        lat = f"{(time.monotonic() - t0) * 1000:5.1f} ms" if t0 else "       -"
        signer = f"{v.signer[:6]}…{v.signer[-4:]}"
        print(
            f"  {time.strftime('%H:%M:%S')}  seq {v.gateway_sequence:<5} {r.device_id:<6} "
            f"{r.sensor:<12} {r.decimal:>10} {r.unit:<4} ✓ signed by {signer}  {lat}",
            file=out,
        )
        out.flush()

    viewer.client.on_message = on_view

    def view_subscribe(session_present: bool) -> None:
        viewer.client.subscribe(f"edgence/{key.address}/obs/#", 1)

    viewer.on_connected = view_subscribe
    shown_rejections: dict[str, int] = {}

    def show_rejections() -> None:
        for reason, count in agent.metrics.by_label("frames_rejected", "reason").items():
            if count > shown_rejections.get(reason, 0):
                shown_rejections[reason] = count
                print(
                    f"  {time.strftime('%H:%M:%S')}  ✗ refused, not signed: {reason} "
                    f"(total {count})",
                    file=out,
                )

    last_sensor = {d.device_id: d.sensors[-1][0] for d in devices}

    def _last_sensor(device_id: str) -> str:
        return last_sensor.get(device_id, "")

    publisher = MqttConnection(
        _endpoint(local.port, "edgence-demo-sensors"), clean_start=True, name="sensors"
    )
    agent_task = asyncio.create_task(agent.run(stop))
    viewer_task = asyncio.create_task(viewer.run())
    pub_task = asyncio.create_task(publisher.run())
    started = time.monotonic()
    try:
        await asyncio.wait_for(agent.ready.wait(), 10)
        await asyncio.wait_for(viewer.connected.wait(), 10)
        await asyncio.wait_for(publisher.connected.wait(), 10)
        if node is not None:
            await _dapp_requests(local.port, key.address, out)
        print(
            f"\n  {'time':<8}  {'gw seq':<9} {'device':<6} {'sensor':<12} {'value':>10} "
            f"{'unit':<4} {'signature':<23}  {'latency':>8}",
            file=out,
        )
        out.flush()
        i = 0
        while not stop.is_set():
            if duration is not None and time.monotonic() - started >= duration:
                break
            dev = devices[i % len(devices)]
            frame = dev.next_frame()
            sent_at[(dev.device_id, dev.counter)] = time.monotonic()
            publisher.client.publish(f"devices/{dev.device_id}/up", frame, qos=1)
            i += 1
            if i % INTRUDER_EVERY == 0:
                # An unknown device, a replayed frame and a forged one (right device, wrong
                # key): the gateway must vouch for none of them.
                publisher.client.publish("devices/intruder/up", dev.next_frame(), qos=1)
                publisher.client.publish(f"devices/{dev.device_id}/up", frame, qos=1)
                forger = SimulatedDevice(
                    dev.device_id, list(dev.sensors), dev.counter + 1, key=bytes(32)
                )
                publisher.client.publish(f"devices/{dev.device_id}/up", forger.next_frame(), qos=1)
            show_rejections()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0 / rate)
        # Let the last observations arrive upstream (bounded: the demo must stop promptly).
        for _ in range(60):
            if seen["ok"] >= agent.metrics.get("observations_signed"):
                break
            await asyncio.sleep(0.05)
        show_rejections()
    finally:
        stop.set()
        await publisher.stop()
        await asyncio.gather(agent_task, return_exceptions=True)
        await viewer.stop()
        for t in (viewer_task, pub_task):
            t.cancel()
        await asyncio.gather(viewer_task, pub_task, return_exceptions=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        m = agent.metrics
        print(
            f"\nsigned {m.get('observations_signed')}, delivered upstream "
            f"{m.get('observations_delivered')}, verified by the viewer {seen['ok']}, "
            f"failed verification {seen['bad']}, rejected frames {m.get('frames_rejected')}",
            file=out,
        )
    return 0 if seen["bad"] == 0 else 1


async def _dapp_requests(port: int, gateway: str, out: TextIO) -> None:
    """A dApp asks the gateway over MQTT 5 request/response: one allowed method, one denied."""
    import json

    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    dapp = MqttConnection(
        BrokerEndpoint(host="127.0.0.1", port=port, client_id="edgence-demo-dapp", protocol=5),
        clean_start=True,
        name="dapp",
    )
    reply = f"edgence/{gateway}/rpc/res/demo-dapp"
    answers: asyncio.Queue[bytes] = asyncio.Queue()
    subscribed = asyncio.Event()
    dapp.client.on_message = lambda c, u, m: answers.put_nowait(bytes(m.payload))
    dapp.client.on_subscribe = lambda *a: subscribed.set()

    def on_connected(session_present: bool) -> None:
        dapp.client.subscribe(reply, 1)

    dapp.on_connected = on_connected
    task = asyncio.create_task(dapp.run())
    try:
        await asyncio.wait_for(subscribed.wait(), 10)
        for method, params in (("eth_chainId", []), ("anvil_setBalance", [gateway, "0x1"])):
            p = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            p.ResponseTopic = reply
            p.CorrelationData = method.encode()
            body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
            dapp.client.publish(
                f"edgence/{gateway}/rpc/req/demo-dapp", json.dumps(body), 1, properties=p
            )
            answer = json.loads(await asyncio.wait_for(answers.get(), 10))
            shown = (
                f"-> {answer['result']}"
                if "result" in answer
                else f"✗ refused: {answer['error']['message']}"
            )
            print(f"  {time.strftime('%H:%M:%S')}  dApp over MQTT 5: {method} {shown}", file=out)
        out.flush()
    except TimeoutError:
        print("  dApp request over MQTT 5 got no answer within 10 s", file=out)
    finally:
        await dapp.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
