"""The metrics endpoint (Prometheus text), /health and the retained health topic report the
numbers of a known workload: N accepted frames, K refused per reason, against real Mosquitto."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.attest.keys import GatewayKey
from agent.config import config_from_dict
from agent.devices.codecs.frame import encode_frame
from agent.localbroker import LocalMosquitto
from agent.runtime import Agent

from .conftest import Collector, Device, agent_config_dict, async_wait_until

N = 40  # accepted frames, one reading each
UNKNOWN = 3  # frames from a device that is not allowed
REPLAYS = 2  # frames repeating an accepted counter
MALFORMED = 1  # a payload that is not JSON


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics as {(name, sorted labels): value}, parsed by prometheus_client."""
    status, ctype, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(body.decode())
        for s in fam.samples
    }


async def send_workload(device: Device) -> None:
    for n in range(1, N + 1):
        device.publish("devices/dev-1/up", encode_frame(n, [("t", n, -1, "Cel")]), wait=False)
    for n in range(1, UNKNOWN + 1):
        device.publish("devices/stranger/up", encode_frame(n, [("t", 1, 0, "Cel")]), wait=False)
    for n in range(1, REPLAYS + 1):
        device.publish("devices/dev-1/up", encode_frame(n, [("t", 1, 0, "Cel")]), wait=False)
    device.publish("devices/dev-2/up", b"{not json", wait=True)


def health_messages(collector: Collector, gateway: str) -> list[dict[str, Any]]:
    with collector.lock:
        msgs = list(collector.messages)
    return [json.loads(p) for t, p, _ in msgs if t == f"edgence/{gateway}/health"]


async def test_metrics_health_and_health_topic_match_a_known_workload(
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    collector: Collector,
    device: Device,
    start_agent: Any,
) -> None:
    key = GatewayKey.generate()
    cfg = agent_config_dict(local_broker, upstream_broker, metrics={"health_interval": "0.2"})
    running = await start_agent(cfg, key)
    telemetry = running.agent.telemetry
    await async_wait_until(lambda: telemetry.port is not None, 10, "metrics endpoint listening")
    port = telemetry.port

    await send_workload(device)
    await async_wait_until(lambda: len(collector.observations()) == N, 20, f"{N} observations")

    # Prometheus: counters of the workload (delivered and the journal backlog settle once the
    # PUBACKs are in and the cursor is persisted, shortly after the collector saw everything).
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    async def settled() -> bool:
        samples.clear()
        samples.update(await scrape(port))
        return (
            samples.get(("edgence_observations_delivered_total", ())) == N
            and samples.get(("edgence_journal_backlog", ())) == 0
        )

    for _ in range(500):
        if await settled():
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail(f"metrics did not settle: {samples}")

    def rejected(reason: str) -> float | None:
        return samples.get(
            ("edgence_frames_rejected_total", (("reason", reason), ("source", "mqtt")))
        )

    assert samples[("edgence_observations_signed_total", ())] == N
    assert rejected("unknown_device") == UNKNOWN
    assert rejected("replay") == REPLAYS
    assert rejected("not_json") == MALFORMED
    assert samples[("edgence_frames_received_mqtt", ())] == N + UNKNOWN + REPLAYS + MALFORMED
    assert samples[("edgence_devices", (("source", "mqtt"),))] == 1
    assert samples[("edgence_journal_entries", ())] == N
    assert samples[("edgence_journal_last_sequence", ())] == N
    assert samples[("edgence_bridge_connected", ())] == 1
    info = [k for k in samples if k[0] == "edgence_agent_info"]
    assert info and ("gateway", key.address) in info[0][1]
    assert samples[("edgence_process_resident_memory_bytes", ())] > 0

    # /health: the same numbers as JSON.
    status, ctype, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/health")
    assert (status, ctype) == (200, "application/json")
    h = json.loads(body)
    assert h["gateway"] == key.address and h["ready"] is True
    assert h["readings"]["signed"] == N
    assert h["rejected"] == {"not_json": 1, "replay": REPLAYS, "unknown_device": UNKNOWN}
    assert h["sources"]["mqtt"]["devices"] == 1 and h["sources"]["mqtt"]["connected"] is True
    assert h["devices"] == {"heard": 1, "enrolled": 0}  # dev-1 is allowlisted, not enrolled
    assert h["journal"] == {
        "entries": N,
        "bytes": h["journal"]["bytes"],
        "backlog": 0,
        "last_seq": N,
        "errors": 0,
    }
    assert h["upstream"]["connected"] is True and h["upstream"]["delivered"] == N

    # The health topic upstream carries the same document, retained.
    def settled_health() -> bool:
        return any(
            m["readings"]["signed"] == N
            and m["upstream"]["delivered"] == N
            and m["journal"]["backlog"] == 0
            for m in health_messages(collector, key.address)
        )

    await async_wait_until(settled_health, 20, "a health message with the whole workload")
    last = [m for m in health_messages(collector, key.address) if m["upstream"]["delivered"] == N]
    assert last[-1]["rejected"] == h["rejected"]
    assert last[-1]["sources"]["mqtt"]["devices"] == 1
    late = Collector(upstream_broker.port, f"edgence/{key.address}/health")
    try:
        await async_wait_until(lambda: bool(late.messages), 10, "the retained health message")
        _, payload, retained = late.messages[0]
        assert retained and json.loads(payload)["gateway"] == key.address
    finally:
        late.close()

    # Anything else is a 404; the endpoint stays up.
    status, _, _ = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/nothing")
    assert status == 404
    assert (await scrape(port))[("edgence_observations_signed_total", ())] == N


async def test_metrics_can_be_turned_off(
    local_broker: LocalMosquitto, upstream_broker: LocalMosquitto, start_agent: Any
) -> None:
    cfg = agent_config_dict(local_broker, upstream_broker, metrics={"enabled": False})
    running = await start_agent(cfg)
    assert running.agent.telemetry is None


async def test_first_health_message_goes_out_when_the_link_comes_up_not_an_interval_later(
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    collector: Collector,
    start_agent: Any,
) -> None:
    key = GatewayKey.generate()
    cfg = agent_config_dict(local_broker, upstream_broker, metrics={"health_interval": "1h"})
    await start_agent(cfg, key)
    await async_wait_until(
        lambda: bool(health_messages(collector, key.address)), 10, "a health message"
    )
    first = health_messages(collector, key.address)[0]
    assert first["gateway"] == key.address and first["upstream"]["connected"] is True
    assert first["ready"] is True  # the agent was ready: the first document says so


async def test_an_agent_that_is_not_ready_still_publishes_health_saying_so_then_ready(
    tmp_path: Path,
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    collector: Collector,
) -> None:
    """Waiting for readiness before the first health message never hides an agent that is
    stuck: with the local broker down, the documents say "ready": false until it is back."""
    local_broker.stop()
    key = GatewayKey.generate()
    cfg = config_from_dict(
        agent_config_dict(local_broker, upstream_broker, metrics={"health_interval": "0.5"}),
        str(tmp_path / "agent.toml"),
        tmp_path,
    )
    agent = Agent(cfg, key)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await async_wait_until(
            lambda: bool(health_messages(collector, key.address)), 20, "a health message"
        )
        assert health_messages(collector, key.address)[0]["ready"] is False
        local_broker.start()
        await async_wait_until(
            lambda: health_messages(collector, key.address)[-1]["ready"] is True,
            30,
            "a health message saying ready",
        )
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
