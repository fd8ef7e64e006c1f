"""The oracle query service of a running agent: a dApp asks over MQTT 5 (Response Topic +
Correlation Data) and CoAP (GET, and Observe for a stream), against a real Mosquitto and a real
aiocoap client; answers carry the envelope and calldata matching the compiled contract's ABI."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiocoap
import pytest
from eth_abi.abi import decode as abi_decode

from agent.attest.keys import GatewayKey
from agent.attest.observation import verify_envelope
from agent.chainclient.contracts import load_artifact
from agent.chainclient.tx import selector
from agent.devices.codecs.frame import encode_frame
from agent.devices.registry import DeviceRegistry
from agent.localbroker import LocalMosquitto, free_port
from agent.model import Transport
from agent.oracle import OBSERVATION_TUPLE, observation_tuple
from tests.integration.conftest import Device, agent_config_dict, async_wait_until
from tests.integration.oracle.conftest import OracleAsker

CONTRACT = "0x" + "5a" * 20


def frame(counter: int, temp: int) -> bytes:
    return encode_frame(
        counter, [("temp", temp, -2, "Cel"), ("hum", 455, -1, "%")], timestamp=int(time.time())
    )


async def start_oracle_agent(
    broker: LocalMosquitto, start_agent: Callable[..., Any], coap_port: int
) -> tuple[Any, GatewayKey]:
    key = GatewayKey.generate()
    cfg = agent_config_dict(
        broker,
        broker,
        gateway={"verifying_contract": CONTRACT},
        bridge={"enabled": False},
        oracle={"enabled": True, "coap": {"enabled": True, "bind": f"127.0.0.1:{coap_port}"}},
    )
    running = await start_agent(cfg, key)
    return running, key


async def publish_and_wait(running: Any, device: Device, frames: list[bytes]) -> None:
    before = running.agent.metrics.get("observations_signed")
    for f in frames:
        await asyncio.to_thread(device.publish, "devices/dev-1/up", f)
    want = before + 2 * len(frames)
    await async_wait_until(
        lambda: running.agent.metrics.get("observations_signed") >= want, 10, "signed"
    )


async def test_mqtt_queries_latest_earlier_and_each_error(
    local_broker: LocalMosquitto,
    device: Device,
    start_agent: Callable[..., Any],
    contracts_built: Path,
    tmp_path: Path,
) -> None:
    # A device enrolled (not allowlisted) before the agent starts is known to the oracle too.
    DeviceRegistry(tmp_path / "agent" / "data" / "devices").enroll(
        "enr-1", transport=Transport.MQTT, sensors=[("temp", "Cel")]
    )
    running, key = await start_oracle_agent(local_broker, start_agent, free_port())
    asker = OracleAsker(local_broker.port, key.address)
    try:
        # Known (allowlisted, or enrolled) but silent so far.
        for name in ("dev-1", "enr-1"):
            ans = await asker.ask(device=name, sensor="temp")
            assert ans["ok"] is False and ans["error"]["code"] == "no_data", ans
        await publish_and_wait(running, device, [frame(1, 2100), frame(2, 2101), frame(3, 2102)])

        latest = await asker.ask(device="dev-1", sensor="temp")
        assert latest["ok"] is True
        v = verify_envelope(latest["observation"])
        assert v.signer == key.address and v.reading.value == 2102 and v.reading.counter == 3
        # The calldata is ObservationOracle.submit(gateway, observation, signature) as compiled.
        submit = latest["submit"]
        data = bytes.fromhex(submit["data"][2:])
        assert submit["to"] == CONTRACT
        assert data[:4] == selector(load_artifact("ObservationOracle").function("submit"))
        gateway, tup, sig = abi_decode(["address", OBSERVATION_TUPLE, "bytes"], data[4:])
        assert gateway.lower() == key.address and sig == v.signature
        assert tup == observation_tuple(v)

        first_seq = v.gateway_sequence - 4  # temp and hum of each frame, in order
        earlier = await asker.ask(device="dev-1", sensor="temp", sequence=first_seq)
        assert verify_envelope(earlier["observation"]).reading.value == 2100
        future = await asker.ask(device="dev-1", sensor="temp", at=int(time.time()) + 60)
        assert verify_envelope(future["observation"]).gateway_sequence == v.gateway_sequence

        errors: dict[str, list[dict[str, Any]]] = {
            "not_found": [
                {"device": "dev-1", "sensor": "temp", "sequence": first_seq + 1},  # a hum
                {"device": "dev-1", "sensor": "temp", "at": 1000},
            ],
            "unknown_device": [{"device": "nope", "sensor": "temp"}],
            "no_data": [{"device": "dev-2", "sensor": "temp"}],
            "unknown_sensor": [{"device": "dev-1", "sensor": "pressure"}],
            "malformed": [
                {"device": "dev-1"},
                {"device": "dev 1", "sensor": "temp"},
                {"device": "dev-1", "sensor": "temp", "sequence": 1, "at": 1},
                {"device": "dev-1", "sensor": "temp", "sequence": -1},
                {"device": "dev-1", "sensor": "temp", "color": "red"},
            ],
        }
        for code, queries in errors.items():
            for q in queries:
                ans = await asker.ask(**q)
                assert ans["ok"] is False and ans["error"]["code"] == code, (q, ans)
        garbage = json.loads(await asker.ask_raw(b"\xff not json"))
        assert garbage["error"]["code"] == "malformed"

        # A response topic outside the allowed filters gets no answer, only a counter.
        refused = running.agent.metrics.get("oracle_queries", transport="mqtt", result="malformed")
        asker.send(b'{"device":"dev-1","sensor":"temp"}', reply_to="devices/dev-1/up")
        await async_wait_until(
            lambda: (
                running.agent.metrics.get("oracle_queries", transport="mqtt", result="malformed")
                > refused
            ),
            10,
            "refusal counted",
        )
        # ... and the agent still answers.
        assert (await asker.ask(device="dev-1", sensor="temp"))["ok"] is True
    finally:
        asker.close()


async def test_coap_get_and_observe_stream(
    local_broker: LocalMosquitto,
    device: Device,
    start_agent: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    running, key = await start_oracle_agent(local_broker, start_agent, port)
    await publish_and_wait(running, device, [frame(1, 1900), frame(2, 1901)])
    base = f"coap://127.0.0.1:{port}/oracle"
    ctx = await aiocoap.Context.create_client_context()
    try:

        async def get(path: str) -> aiocoap.Message:
            msg = aiocoap.Message(code=aiocoap.GET, uri=base + path)
            return await asyncio.wait_for(ctx.request(msg).response, 10)

        resp = await get("/dev-1/temp")
        assert resp.code == aiocoap.CONTENT
        v = verify_envelope(json.loads(resp.payload)["observation"])
        assert v.reading.value == 1901 and v.signer == key.address
        resp = await get(f"/dev-1/temp?seq={v.gateway_sequence - 2}")
        assert verify_envelope(json.loads(resp.payload)["observation"]).reading.value == 1900
        for path, code, label in (
            ("/nope/temp", aiocoap.NOT_FOUND, "unknown_device"),
            ("/dev-1/pressure", aiocoap.NOT_FOUND, "unknown_sensor"),
            ("/dev-1", aiocoap.BAD_REQUEST, "malformed"),
            ("/dev-1/temp?seq=x", aiocoap.BAD_REQUEST, "malformed"),
        ):
            resp = await get(path)
            assert resp.code == code, path
            assert json.loads(resp.payload)["error"]["code"] == label

        # A stream: the first answer now, a notification after each new observation.
        req = ctx.request(aiocoap.Message(code=aiocoap.GET, uri=base + "/dev-1/temp", observe=0))
        first = await asyncio.wait_for(req.response, 10)
        assert verify_envelope(json.loads(first.payload)["observation"]).reading.value == 1901
        notifications = req.observation.__aiter__()
        await publish_and_wait(running, device, [frame(3, 1950)])
        note = await asyncio.wait_for(notifications.__anext__(), 10)
        assert verify_envelope(json.loads(note.payload)["observation"]).reading.value == 1950
        req.observation.cancel()

        # Observe on a fixed sequence or on an unknown device: one final answer, no stream,
        # and no watcher left behind for them.
        once = ctx.request(
            aiocoap.Message(
                code=aiocoap.GET, uri=base + f"/dev-1/temp?seq={v.gateway_sequence}", observe=0
            )
        )
        resp = await asyncio.wait_for(once.response, 10)
        assert resp.code == aiocoap.CONTENT and resp.opt.observe is None
        gone = ctx.request(aiocoap.Message(code=aiocoap.GET, uri=base + "/nope/x", observe=0))
        resp = await asyncio.wait_for(gone.response, 10)
        assert resp.code == aiocoap.NOT_FOUND and resp.opt.observe is None
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert not errors, [r.getMessage() for r in errors]
        service = running.agent.oracle
        assert service is not None
        await async_wait_until(
            lambda: ("nope", "x") not in service._watchers, 10, "the refused watcher released"
        )
    finally:
        await ctx.shutdown()


async def test_independent_clients_mosquitto_rr_and_libcoap(
    local_broker: LocalMosquitto, device: Device, start_agent: Callable[..., Any]
) -> None:
    """The commands docs/dapp-developers.md shows: Mosquitto's mosquitto_rr (MQTT 5 request/
    response) and libcoap's coap-client, neither of them sharing code with the agent."""
    port = free_port()
    running, key = await start_oracle_agent(local_broker, start_agent, port)
    await publish_and_wait(running, device, [frame(1, 1777)])
    gw = key.address

    def rr() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                "mosquitto_rr",
                "-V",
                "5",
                "-p",
                str(local_broker.port),
                "-h",
                "127.0.0.1",
                "-t",
                f"edgence/{gw}/oracle/req/me",
                "-e",
                f"edgence/{gw}/oracle/res/me",
                "-m",
                '{"device":"dev-1","sensor":"temp"}',
                "-W",
                "10",
            ],
            capture_output=True,
            text=True,
            timeout=20,
        )

    def coap() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["coap-client-notls", "-m", "get", f"coap://127.0.0.1:{port}/oracle/dev-1/temp"],
            capture_output=True,
            text=True,
            timeout=20,
        )

    for run in (rr, coap):
        out = await asyncio.to_thread(run)
        assert out.returncode == 0, out.stderr
        answer = json.loads(out.stdout.strip().splitlines()[-1])
        v = verify_envelope(answer["observation"])
        assert v.signer == gw and v.reading.value == 1777


async def test_an_observation_signed_under_another_domain_gets_no_calldata_and_says_why(
    local_broker: LocalMosquitto,
    device: Device,
    start_agent: Callable[..., Any],
    contracts_built: Path,
) -> None:
    """The gateway signed before `verifying_contract` was set; then the operator set it. The
    old observation is still served (it is genuine) but without calldata the oracle would
    refuse, and the answer says why."""
    key = GatewayKey.generate()

    def cfg(contract: str) -> dict[str, Any]:
        return agent_config_dict(
            local_broker,
            local_broker,
            gateway={"verifying_contract": contract},
            bridge={"enabled": False},
            oracle={"enabled": True},
        )

    unset = await start_agent(cfg("0x" + "00" * 20), key)
    await publish_and_wait(unset, device, [frame(1, 2100)])
    await unset.stop()
    running = await start_agent(cfg(CONTRACT), key)
    asker = OracleAsker(local_broker.port, key.address)
    try:
        old = await asker.ask(device="dev-1", sensor="temp")
        assert old["ok"] is True and old["submit"] is None, old
        assert f"not of the oracle contract {CONTRACT}" in old["submit_refused"]
        assert verify_envelope(old["observation"]).domain.verifying_contract == "0x" + "00" * 20
        await publish_and_wait(running, device, [frame(2, 2101)])
        new = await asker.ask(device="dev-1", sensor="temp")
        assert new["submit"]["to"] == CONTRACT and "submit_refused" not in new
    finally:
        asker.close()
