"""The CoAP source against real peers: aiocoap clients and libcoap's coap-client-notls POST
frames, the agent OBSERVEs an aiocoap device server that restarts, OSCORE-protected devices,
malformed requests and a saturated pipeline. Observations are verified upstream."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiocoap
import aiocoap.resource
import cbor2
import pytest
from aiocoap.numbers.codes import Code

from agent.attest.keys import GatewayKey
from agent.attest.observation import verify_envelope
from agent.devices.auth import encode_signed_frame, frame_mac
from agent.devices.codecs.cbor_frame import encode_cbor_frame, parse_cbor_frame
from agent.devices.codecs.frame import encode_frame
from agent.devices.registry import DeviceRegistry
from agent.localbroker import LocalMosquitto
from agent.model import Transport

from .conftest import Collector, JournalStall, async_wait_until


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def coap_config(upstream: LocalMosquitto, port: int, **coap: Any) -> dict[str, Any]:
    return {
        "gateway": {"key_file": "gateway.key", "data_dir": "data", "chain_id": 31337},
        "sources": {
            "mqtt": {"enabled": False},
            "coap": {
                "enabled": True,
                "bind": "127.0.0.1",
                "port": port,
                "allowed_devices": ["dev-1", "dev-2"],
                **coap,
            },
        },
        "bridge": {"url": upstream.url},
    }


@pytest.fixture
async def client() -> AsyncIterator[aiocoap.Context]:
    ctx = await aiocoap.Context.create_client_context()
    yield ctx
    await ctx.shutdown()


async def post(
    ctx: aiocoap.Context, port: int, path: str, payload: bytes, cf: int | None = 50
) -> aiocoap.Message:
    msg = aiocoap.Message(code=Code.POST, uri=f"coap://127.0.0.1:{port}/{path}", payload=payload)
    if cf is not None:
        msg.opt.content_format = cf
    return await ctx.request(msg).response


def by_counter(collector: Collector, device: str) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    for o in collector.observations():
        if o["reading"]["device"] == device:
            out.setdefault(o["message"]["deviceCounter"], []).append(o)
    return out


def frame(n: int, value: int = 2137) -> bytes:
    return encode_frame(n, [("temperature", value, -2, "Cel")], timestamp=int(time.time()))


async def test_json_and_cbor_posts_from_aiocoap_are_answered_2_04_and_signed_upstream(
    upstream_broker: LocalMosquitto,
    collector: Collector,
    start_agent: Any,
    client: aiocoap.Context,
) -> None:
    port = free_udp_port()
    key = GatewayKey.generate()
    running = await start_agent(coap_config(upstream_broker, port), key)
    r1 = await post(client, port, "up/dev-1", frame(1))
    r2 = await post(
        client, port, "up/dev-1", encode_cbor_frame(2, [("humidity", 455, -1, "%")]), cf=60
    )
    assert (r1.code, r2.code) == (Code.CHANGED, Code.CHANGED)
    # 2.04 was sent after journaling: both are in the journal now.
    assert running.agent.metrics.get("observations_signed") == 2
    await async_wait_until(lambda: len(collector.observations()) == 2, 10, "2 observations")
    verified = sorted(
        (verify_envelope(p) for _, p in collector.raw_observations()),
        key=lambda v: v.reading.counter,
    )
    assert [v.signer for v in verified] == [key.address, key.address]
    got = [(v.reading.sensor, v.reading.value, v.reading.exponent) for v in verified]
    assert got == [("temperature", 2137, -2), ("humidity", 455, -1)]
    assert {v.reading.transport for v in verified} == {"coap"}


async def test_libcoap_coap_client_posts_are_signed_and_refusals_come_back_as_codes(
    upstream_broker: LocalMosquitto, collector: Collector, start_agent: Any
) -> None:
    assert shutil.which("coap-client-notls"), "install libcoap3-bin (scripts/test does)"
    port = free_udp_port()
    await start_agent(coap_config(upstream_broker, port))

    async def coap_client(path: str, payload: bytes) -> str:
        proc = await asyncio.create_subprocess_exec(
            "coap-client-notls", "-m", "post", "-t", "50", "-e", payload.decode(),
            f"coap://127.0.0.1:{port}/{path}",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        return out.decode(errors="replace")

    ok = await coap_client("up/dev-2", frame(5, 1999))
    assert "4." not in ok and "5." not in ok, ok
    await async_wait_until(lambda: 5 in by_counter(collector, "dev-2"), 10, "libcoap's reading")
    assert by_counter(collector, "dev-2")[5][0]["reading"]["value"] == "19.99"
    refused = await coap_client("up/stranger", frame(1))
    assert "4.01" in refused, refused
    bad = await coap_client("up/dev-2", b"{not json")
    assert "4.00" in bad, bad


async def test_malformed_requests_get_their_codes_and_counters_and_the_agent_keeps_serving(
    upstream_broker: LocalMosquitto,
    start_agent: Any,
    client: aiocoap.Context,
) -> None:
    port = free_udp_port()
    running = await start_agent(coap_config(upstream_broker, port, max_payload=1024))
    assert (await post(client, port, "up/dev-1", frame(10))).code == Code.CHANGED
    cases: list[tuple[str, bytes, int | None, Code, str]] = [
        ("up/dev-1", b"\xa1\x61", 60, Code.BAD_REQUEST, "not_cbor"),
        ("up/dev-1", cbor2.dumps({"v": 1, "n": 11}) + b"\x00", 60, Code.BAD_REQUEST, "not_cbor"),
        ("up/dev-1", frame(11), 41, Code.UNSUPPORTED_CONTENT_FORMAT, "bad_content_format"),
        ("up/dev-1", b"", 50, Code.BAD_REQUEST, "not_json"),
        ("up/dev-1", b"", 60, Code.BAD_REQUEST, "not_cbor"),
        ("up/dev-1", b"{" + b" " * 3000 + b"}", 50, Code.REQUEST_ENTITY_TOO_LARGE, "oversize"),
        ("up/dev-1", frame(10), 50, Code.BAD_REQUEST, "replay"),
        ("up/dev-9", frame(1), 50, Code.UNAUTHORIZED, "unknown_device"),
        ("up/dev-2", encode_frame(1, [("t", 1, 0, "C")], device_id="dev-1"), 50,
         Code.BAD_REQUEST, "device_mismatch"),
        ("up/a/b", frame(1), 50, Code.NOT_FOUND, "bad_path"),
    ]  # fmt: skip
    for path, payload, cf, code, reason in cases:
        r = await post(client, port, path, payload, cf)
        assert (r.code, r.payload.decode()) == (code, reason), (path, payload[:20], cf)
        if code == Code.REQUEST_ENTITY_TOO_LARGE:
            assert r.opt.size1 == 1024
    m = running.agent.metrics
    rejected = m.by_label("frames_rejected", "reason")
    assert rejected["not_cbor"] == 3 and rejected["oversize"] == 1 and rejected["replay"] == 1
    assert m.get("frames_rejected") == len(cases)
    # GET on the up resource is not allowed; the agent still serves afterwards.
    r = await client.request(
        aiocoap.Message(code=Code.GET, uri=f"coap://127.0.0.1:{port}/up/dev-1")
    ).response
    assert r.code == Code.METHOD_NOT_ALLOWED
    assert (await post(client, port, "up/dev-1", frame(11))).code == Code.CHANGED
    assert m.get("observations_signed") == 2


async def test_well_known_core_lists_the_up_resource_with_its_content_formats(
    upstream_broker: LocalMosquitto, start_agent: Any, client: aiocoap.Context
) -> None:
    port = free_udp_port()
    await start_agent(coap_config(upstream_broker, port))
    r = await client.request(
        aiocoap.Message(code=Code.GET, uri=f"coap://127.0.0.1:{port}/.well-known/core")
    ).response
    assert r.code == Code.CONTENT and int(r.opt.content_format) == 40
    links = r.payload.decode().split(",")
    up = [lk for lk in links if lk.startswith("</up>")]
    assert up and 'ct="50 60"' in up[0] and 'rt="edgence.frame"' in up[0]


async def test_a_saturated_pipeline_answers_5_03_with_max_age_and_loses_nothing_accepted(
    upstream_broker: LocalMosquitto,
    collector: Collector,
    start_agent: Any,
    client: aiocoap.Context,
) -> None:
    port = free_udp_port()
    devices = [f"d-{i}" for i in range(20)]  # one frame each: arrival order cannot matter
    cfg = coap_config(upstream_broker, port, busy_max_age=7, allowed_devices=[*devices, "dev-2"])
    cfg["pipeline"] = {"queue_size": 16, "batch_max": 4}
    running = await start_agent(cfg)
    agent = running.agent
    stall = JournalStall(agent.cfg.journal.path)  # the journal's writes wait
    pending = [asyncio.create_task(post(client, port, f"up/{d}", frame(1))) for d in devices]
    await async_wait_until(lambda: not agent.pipeline.has_space(), 10, "the queue bound")
    busy = await post(client, port, "up/dev-2", frame(1))
    assert busy.code == Code.SERVICE_UNAVAILABLE and busy.opt.max_age == 7
    stall.release()
    answers = await asyncio.gather(*pending)
    accepted = {d for d, a in zip(devices, answers, strict=True) if a.code == Code.CHANGED}
    others = {a.code for a in answers if a.code != Code.CHANGED}
    assert len(accepted) >= 16 and others <= {Code.SERVICE_UNAVAILABLE}
    # Every 2.04 is a signed observation upstream, and only those.
    await async_wait_until(
        lambda: {o["reading"]["device"] for o in collector.observations()} == accepted,
        15,
        "accepted readings",
    )
    assert agent.metrics.get("source_paused", source="coap") >= 1


def write_oscore_context(path: Path, sender: str, recipient: str, secret: str) -> None:
    path.mkdir(parents=True)
    (path / "secret.json").write_text(
        json.dumps(
            {
                "sender-id_hex": sender,
                "recipient-id_hex": recipient,
                "secret_ascii": secret,
                "salt_hex": "9e7ca92223786340",
            }
        )
    )
    os.chmod(path / "secret.json", 0o600)


async def test_oscore_device_must_be_protected_by_its_own_context(
    tmp_path: Path,
    upstream_broker: LocalMosquitto,
    collector: Collector,
    start_agent: Any,
    client: aiocoap.Context,
) -> None:
    port = free_udp_port()
    secret = "0123456789abcdef-shared-by-pairing"
    agent_dir = tmp_path / "agent" / "oscore"
    write_oscore_context(agent_dir / "sec-1", "01", "02", secret)
    client_dir = tmp_path / "device-sec-1"
    write_oscore_context(client_dir, "02", "01", secret)
    running = await start_agent(coap_config(upstream_broker, port, oscore_dir=str(agent_dir)))
    secure = await aiocoap.Context.create_client_context()
    try:
        secure.client_credentials.load_from_dict(
            {f"coap://127.0.0.1:{port}/*": {"oscore": {"basedir": str(client_dir) + "/"}}}
        )
        ok = await post(secure, port, "up/sec-1", frame(1))
        assert ok.code == Code.CHANGED
        # The same device without OSCORE: refused, though the site accepts unprotected requests.
        plain = await post(client, port, "up/sec-1", frame(2))
        assert (plain.code, plain.payload) == (Code.UNAUTHORIZED, b"oscore_required")
        # sec-1's context cannot speak for dev-1 (an allowlisted, unprotected device).
        other = await post(secure, port, "up/dev-1", frame(1))
        assert (other.code, other.payload) == (Code.UNAUTHORIZED, b"oscore_required")
        assert (await post(client, port, "up/dev-1", frame(1))).code == Code.CHANGED
    finally:
        await secure.shutdown()
    await async_wait_until(lambda: 1 in by_counter(collector, "sec-1"), 10, "sec-1 reading")
    assert set(by_counter(collector, "sec-1")) == {1}
    # The transport authenticated sec-1: its observation is signed with assurance 1.
    (signed,) = by_counter(collector, "sec-1")[1]
    assert (signed["message"]["assurance"], signed["reading"]["auth"]) == (1, "oscore")
    await async_wait_until(lambda: 1 in by_counter(collector, "dev-1"), 10, "dev-1 reading")
    assert by_counter(collector, "dev-1")[1][0]["message"]["assurance"] == 0
    assert (
        running.agent.metrics.get("frames_rejected", reason="oscore_required", source="coap") == 2
    )


class SensorResource(aiocoap.resource.ObservableResource):  # type: ignore[misc]
    """A device's observable sensor: each state change is a new frame (its counter kept
    across restarts, as firmware keeps it in flash)."""

    def __init__(self, counter: int) -> None:
        super().__init__()
        self.counter = counter

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        return aiocoap.Message(
            payload=encode_cbor_frame(self.counter, [("temperature", self.counter, 0, "Cel")]),
            content_format=60,
            max_age=1,
        )


class DeviceServer:
    """An aiocoap CoAP device on a fixed loopback port that can be stopped and started."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.counter = 1
        self.ctx: aiocoap.Context | None = None
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        site = aiocoap.resource.Site()
        res = SensorResource(self.counter)
        site.add_resource(("sensor",), res)
        self.ctx = await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", self.port))

        async def tick() -> None:
            while True:
                await asyncio.sleep(0.1)
                self.counter += 1
                res.counter = self.counter
                res.updated_state()

        self.task = asyncio.create_task(tick())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.ctx is not None:
            await self.ctx.shutdown()
        self.ctx = self.task = None


async def test_observed_device_restarts_and_notifications_resume_while_a_dead_one_waits(
    upstream_broker: LocalMosquitto,
    collector: Collector,
    start_agent: Any,
) -> None:
    device = DeviceServer(free_udp_port())
    await device.start()
    dead_port = free_udp_port()
    observe = [
        {"device": "dead-1", "uri": f"coap://127.0.0.1:{dead_port}/sensor", "timeout": "1s"},
        {"device": "obs-1", "uri": f"coap://127.0.0.1:{device.port}/sensor"},
    ]
    running = await start_agent(
        coap_config(upstream_broker, free_udp_port(), observe=observe, backoff_max="2s")
    )
    m = running.agent.metrics
    try:
        await async_wait_until(lambda: len(by_counter(collector, "obs-1")) >= 5, 20, "notes")
        await device.stop()
        stopped_at = device.counter
        await asyncio.sleep(0.5)
        await device.start()  # a reboot: the new server knows no observers
        await async_wait_until(
            lambda: any(n > stopped_at + 3 for n in by_counter(collector, "obs-1")),
            30,
            "notifications after the restart",
        )
    finally:
        await device.stop()
    seen = by_counter(collector, "obs-1")
    assert all(len(v) == 1 for v in seen.values()), "a notification was signed twice"
    assert m.get("coap_observe_registered", device="obs-1") >= 2
    assert m.get("coap_observe_lost", device="dead-1") >= 1
    assert m.get("coap_observe_registered", device="dead-1") == 0
    assert not by_counter(collector, "dead-1")


async def test_a_device_above_its_rate_gets_4_29_with_max_age(
    upstream_broker: LocalMosquitto, start_agent: Any, client: aiocoap.Context
) -> None:
    port = free_udp_port()
    cfg = coap_config(upstream_broker, port, busy_max_age=9)
    cfg["enrollment"] = {"rate": 0.001, "burst": 2}  # two frames, then one per 1000 s
    running = await start_agent(cfg)
    codes = [(await post(client, port, "up/dev-1", frame(n))).code for n in (1, 2)]
    assert codes == [Code.CHANGED, Code.CHANGED]
    limited = await post(client, port, "up/dev-1", frame(3))
    assert (limited.code, limited.payload, limited.opt.max_age) == (
        Code.TOO_MANY_REQUESTS,
        b"rate_limited",
        9,
    )
    # Another device has its own bucket.
    assert (await post(client, port, "up/dev-2", frame(1))).code == Code.CHANGED
    assert running.agent.metrics.by_label("frames_rejected", "reason") == {"rate_limited": 1}


async def test_enrolled_coap_devices_get_codes_from_the_enrollment_gate(
    tmp_path: Path,
    upstream_broker: LocalMosquitto,
    collector: Collector,
    start_agent: Any,
    client: aiocoap.Context,
) -> None:
    reg = DeviceRegistry(tmp_path / "agent" / "data" / "devices")
    _, key = reg.enroll("enr-1", transport=Transport.COAP)
    _, mqtt_key = reg.enroll("enr-mqtt", transport=Transport.MQTT)
    reg.activate(["enr-1", "enr-mqtt"])
    port = free_udp_port()
    await start_agent(coap_config(upstream_broker, port, allowed_devices=[]))

    def signed(k: bytes, dev: str, n: int, cbor: bool = False) -> bytes:
        values = [("temperature", 2000 + n, -2, "Cel")]
        if not cbor:
            return encode_signed_frame(k, dev, n, values)
        unsigned = parse_cbor_frame(encode_cbor_frame(n, values))
        return encode_cbor_frame(n, values, mac=frame_mac(k, dev, unsigned))

    async def code(dev: str, payload: bytes, cf: int = 50) -> tuple[Code, bytes]:
        r = await post(client, port, f"up/{dev}", payload, cf)
        return r.code, r.payload

    assert await code("enr-1", signed(key, "enr-1", 1)) == (Code.CHANGED, b"")
    # The same key covers the CBOR form: the MAC is over the parsed fields.
    assert await code("enr-1", signed(key, "enr-1", 2, cbor=True), 60) == (Code.CHANGED, b"")
    assert await code("enr-1", signed(bytes(32), "enr-1", 3)) == (Code.UNAUTHORIZED, b"bad_mac")
    assert await code("enr-1", frame(3)) == (Code.UNAUTHORIZED, b"missing_mac")
    assert await code("enr-1", signed(key, "enr-1", 2)) == (Code.BAD_REQUEST, b"replay")
    assert await code("ghost", signed(key, "ghost", 1)) == (Code.UNAUTHORIZED, b"unknown_device")
    wrong = signed(mqtt_key, "enr-mqtt", 1)
    assert await code("enr-mqtt", wrong) == (Code.UNAUTHORIZED, b"wrong_transport")
    await async_wait_until(lambda: set(by_counter(collector, "enr-1")) == {1, 2}, 10, "upstream")
    auth = {verify_envelope(p).reading.auth for _, p in collector.raw_observations()}
    assert auth == {"hmac"}
