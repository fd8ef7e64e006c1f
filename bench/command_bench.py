"""Command latency: an operator's command request to the gateway's signed receipt, against a bare
MQTT request/response round trip to the same device, both measured in the same run.

The agent is a child process (`edgence-agent run`, [downlink] on, the device enrolled); the
device is the firmware's own command handler (firmware/micropython/lib/edgence/downlink.py,
on CPython) behind a paho client in a thread, which also echoes the baseline's requests. The
requester is one asyncio client (agent/downlink/client.py), sequential requests.

- baseline: requester -> broker -> device -> broker -> requester (MQTT 5, QoS 1 both ways);
- command: requester -> broker -> agent (policy, store commit, counter commit, HMAC frame) ->
  broker -> device (MAC, counter write to flash, handler, answer MAC) -> broker -> agent (MAC,
  EIP-712 receipt signed, store commit) -> broker -> requester: twice the hops, three
  synchronous=FULL commits in the agent and one file write in the device.

Run: python -m bench.command_bench [--commands N] [--write]    (about half a minute)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import secrets
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from agent.attest.keys import GatewayKey, write_key_file
from agent.attest.receipt import verify_receipt
from agent.config import BrokerEndpoint
from agent.devices.registry import DeviceRegistry
from agent.downlink.client import CommandClient
from agent.localbroker import LocalMosquitto
from agent.model import Transport
from agent.mqtt import MqttConnection
from bench.agentproc import spawn_agent, wait_ready
from bench.results import write_section

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "firmware" / "micropython" / "lib"))
from edgence.downlink import Downlink as FirmwareDownlink

DEVICE = "dev-1"


class Device:
    """The firmware's command handler on a paho connection; echoes bench/<id>/echo too."""

    def __init__(self, port: int, key: bytes, flash: Path) -> None:
        cfg = SimpleNamespace(key=key, device_id=DEVICE)
        self.dl = FirmwareDownlink(cfg, {"version": lambda a: {"version": "0.1.0"}}, str(flash))
        self.c = paho.Client(
            CallbackAPIVersion.VERSION2, client_id="bench-dev", protocol=paho.MQTTv5
        )
        self.ready = threading.Event()
        self.c.on_subscribe = lambda *a: self.ready.set()
        self.c.on_connect = lambda cl, *a: cl.subscribe(
            [(f"devices/{DEVICE}/down", 1), (f"bench/{DEVICE}/echo", 1)]
        )
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port, 30)
        self.c.loop_start()
        assert self.ready.wait(10)

    def _on_message(self, c: paho.Client, ud: Any, msg: paho.MQTTMessage) -> None:
        if msg.topic.endswith("/echo"):
            c.publish(f"bench/{DEVICE}/echo-res", msg.payload, qos=1)
            return
        with contextlib.redirect_stdout(io.StringIO()):  # the firmware's console lines
            answer = self.dl.handle(bytes(msg.payload))
        if answer is not None:
            c.publish(f"devices/{DEVICE}/ack", answer, qos=1)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


async def echo_round_trips(port: int, n: int) -> list[float]:
    conn = MqttConnection(
        BrokerEndpoint("127.0.0.1", port, protocol=5), clean_start=True, name="bench-echo",
        nodelay=True,
    )  # fmt: skip
    got: asyncio.Queue[bytes] = asyncio.Queue()
    subscribed = asyncio.Event()

    def on_message(c: paho.Client, u: Any, m: paho.MQTTMessage) -> None:
        got.put_nowait(bytes(m.payload))  # paho runs on the event loop here (agent/mqtt.py)

    conn.client.on_message = on_message
    conn.client.on_subscribe = lambda *a: subscribed.set()
    conn.on_connected = lambda sp: conn.client.subscribe(f"bench/{DEVICE}/echo-res", 1) and None
    task = asyncio.create_task(conn.run())
    await subscribed.wait()
    out = []
    for _ in range(n):
        token = secrets.token_bytes(8)
        t0 = time.perf_counter()
        conn.client.publish(f"bench/{DEVICE}/echo", token, qos=1)
        while await got.get() != token:
            pass
        out.append(time.perf_counter() - t0)
    await conn.stop()
    task.cancel()
    return out


async def command_round_trips(port: int, gateway: str, n: int) -> list[float]:
    out = []
    ep = BrokerEndpoint("127.0.0.1", port, protocol=5)
    async with CommandClient(ep, "edgence", gateway, "operator") as client:
        for _ in range(n):
            t0 = time.perf_counter()
            answer = await client.send({"device": DEVICE, "action": "version", "ttl": 30}, 30)
            out.append(time.perf_counter() - t0)
            if not answer.get("ok"):
                raise RuntimeError(f"command failed: {answer}")
        verify_receipt(answer["receipt"])  # the last one, outside the timing
    return out


def pct(xs: list[float], p: float) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[int(p) - 1] * 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--commands", type=int, default=500)
    ap.add_argument("--write", action="store_true", help="record in bench/RESULTS.md")
    args = ap.parse_args(argv)
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with LocalMosquitto(work / "mosq", name="local", extra="set_tcp_nodelay true") as broker:
            d = work / "agent"
            d.mkdir()
            key = GatewayKey.generate()
            write_key_file(d / "gateway.key", key)
            dev_key = secrets.token_bytes(32)
            DeviceRegistry(d / "data" / "devices").enroll_active(
                [(DEVICE, Transport.MQTT, dev_key)]
            )
            (d / "agent.toml").write_text(
                f'[gateway]\nkey_file = "gateway.key"\ndata_dir = "data"\n'
                f'[sources.mqtt]\nurl = "{broker.url}"\n[bridge]\nenabled = false\n'
                "[enrollment]\nenabled = true\n[downlink]\nenabled = true\n"
            )
            log = d / "agent.log"
            proc = spawn_agent(d / "agent.toml", log)
            (work / "flash").mkdir()
            device = Device(broker.port, dev_key, work / "flash")
            try:
                wait_ready(proc, log)
                warm = max(20, args.commands // 10)
                asyncio.run(echo_round_trips(broker.port, warm))
                asyncio.run(command_round_trips(broker.port, key.address, warm))
                echo = asyncio.run(echo_round_trips(broker.port, args.commands))
                cmd = asyncio.run(command_round_trips(broker.port, key.address, args.commands))
            finally:
                device.close()
                proc.terminate()
                proc.wait(10)
    rows = [
        ("bare MQTT 5 request/response to the device (baseline)", echo),
        ("command request -> signed receipt (`version`)", cmd),
    ]
    base = pct(echo, 50)
    lines = [
        "| path | round trips | p50 ms | p99 ms | p50 ratio to baseline |",
        "|---|---|---|---|---|",
    ]
    for name, xs in rows:
        p50, p99 = pct(xs, 50), pct(xs, 99)
        lines.append(f"| {name} | {len(xs)} | {p50:.2f} | {p99:.2f} | {p50 / base:.2f} |")
    took = time.monotonic() - t_start
    body = "\n".join(lines) + (
        f"\n\n{args.commands} sequential round trips per path from one asyncio client (after "
        f"{max(20, args.commands // 10)} warm-up ones each), the agent a child process "
        "(`edgence-agent run`, [downlink] enabled, store synchronous=FULL), the device the "
        "firmware's command handler (edgence.downlink, on CPython, its counter file written per "
        "command) behind a paho client; Mosquitto with `set_tcp_nodelay true`. The baseline "
        "goes requester -> broker -> device -> broker -> requester; a command twice that, plus "
        "three fsynced sqlite commits, the device's counter write, three HMACs and an EIP-712 "
        f"signature. Everything on the same 2 shared cores; took {took:.0f} s."
    )
    print(body)
    if args.write:
        write_section(
            "command",
            f"python -m bench.command_bench --commands {args.commands} --write",
            body,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
