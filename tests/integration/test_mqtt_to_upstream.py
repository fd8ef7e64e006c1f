"""Readings published to a real Mosquitto become signed observations on a real upstream
Mosquitto: the agent's main job, end to end, in process."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import time
from typing import Any

import pytest

from agent.attest.keys import GatewayKey, recover_address
from agent.attest.observation import verify_envelope
from agent.devices.codecs.frame import encode_frame
from agent.localbroker import LocalMosquitto

from .conftest import Collector, Device, agent_config_dict, async_wait_until


async def test_reading_becomes_observation_upstream_signed_by_gateway(
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    collector: Collector,
    device: Device,
    start_agent: Any,
) -> None:
    key = GatewayKey.generate()
    await start_agent(agent_config_dict(local_broker, upstream_broker), key)
    ts = int(time.time())  # within the gateway's allowed clock skew (pipeline.max_ts_age)
    device.publish(
        "devices/dev-1/up",
        encode_frame(
            7,
            [("temperature", 2137, -2, "Cel"), ("humidity", 455, -1, "%")],
            timestamp=ts,
        ),
    )
    await async_wait_until(lambda: len(collector.observations()) == 2, 10, "2 observations")
    raw = collector.raw_observations()
    topics = [t for t, _ in raw]
    assert topics == [
        f"edgence/{key.address}/obs/dev-1/temperature",
        f"edgence/{key.address}/obs/dev-1/humidity",
    ]
    first = json.loads(raw[0][1])
    # The signature recovers to the gateway's address from the digest alone...
    assert (
        recover_address(bytes.fromhex(first["digest"][2:]), bytes.fromhex(first["signature"][2:]))
        == key.address
    )
    # ...and the digest is recomputed from the signed fields by the verifier.
    v = verify_envelope(raw[0][1])
    assert v.signer == key.address
    assert (v.reading.device_id, v.reading.sensor, v.reading.value, v.reading.exponent) == (
        "dev-1",
        "temperature",
        2137,
        -2,
    )
    assert v.reading.counter == 7 and v.reading.timestamp == ts
    assert first["reading"]["value"] == "21.37" and first["reading"]["unit"] == "Cel"
    seqs = [o["message"]["gatewaySequence"] for o in collector.observations()]
    assert seqs == sorted(seqs) and len(set(seqs)) == 2


async def test_status_is_retained_online_while_running_and_offline_after_stop(
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    start_agent: Any,
) -> None:
    key = GatewayKey.generate()
    running = await start_agent(agent_config_dict(local_broker, upstream_broker), key)
    topic = f"edgence/{key.address}/status"
    watcher = Collector(upstream_broker.port, topic)
    try:
        await async_wait_until(
            lambda: any(json.loads(p)["state"] == "online" for _, p, _ in watcher.messages),
            10,
            "online status",
        )
        late = Collector(upstream_broker.port, topic)  # subscribes afterwards: gets the retained
        await async_wait_until(lambda: bool(late.messages), 10, "retained status")
        late.close()
        assert late.messages[0][2] is True
        assert json.loads(late.messages[0][1])["state"] == "online"
        await running.stop()
        await async_wait_until(
            lambda: json.loads(watcher.messages[-1][1])["state"] == "offline", 10, "offline"
        )
    finally:
        watcher.close()


async def test_every_kind_of_malformed_payload_is_counted_and_valid_readings_keep_flowing(
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    collector: Collector,
    device: Device,
    start_agent: Any,
) -> None:
    running = await start_agent(
        agent_config_dict(
            local_broker,
            upstream_broker,
        )
    )
    bad = {
        "not_json": b"{this is not json",
        "not_utf8": b"\xff\xfe\x00garbage",
        "not_object": b"[1, 2, 3]",
        "missing_field": b'{"v":1,"r":[{"s":"t","v":1,"u":"Cel"}]}',
        "bad_type": b'{"v":1,"n":"seven","r":[{"s":"t","v":1,"u":"Cel"}]}',
        "not_finite": b'{"v":1,"n":9,"r":[{"s":"t","v":NaN,"u":"Cel"}]}',
        "oversize": b'{"v":1,"n":9,"r":[{"s":"t","v":1,"u":"Cel"}],"pad":"' + b"x" * 5000 + b'"}',
        "bad_version": b'{"v":2,"n":9,"r":[{"s":"t","v":1,"u":"Cel"}]}',
        "out_of_range": b'{"v":1,"n":9,"r":[{"s":"t","v":1,"e":300,"u":"Cel"}]}',
        "unknown_device": encode_frame(1, [("t", 1, 0, "Cel")]),
    }
    for counter, (reason, payload) in enumerate(bad.items(), 1):
        good = encode_frame(counter, [("t", counter, 0, "Cel")])
        topic = "devices/intruder/up" if reason == "unknown_device" else "devices/dev-1/up"
        device.publish(topic, payload)
        device.publish("devices/dev-1/up", good)
    # Infinity as a value, and a replayed counter, too.
    device.publish("devices/dev-1/up", b'{"v":1,"n":99,"r":[{"s":"t","v":Infinity,"u":"C"}]}')
    device.publish("devices/dev-1/up", encode_frame(3, [("t", 3, 0, "Cel")]))  # replay of n=3
    await async_wait_until(
        lambda: len(collector.observations()) == len(bad), 10, "every valid reading upstream"
    )
    m = running.agent.metrics
    await async_wait_until(lambda: m.get("frames_rejected") == len(bad) + 2, 5, "rejections")
    by_reason = m.by_label("frames_rejected", "reason")
    for reason in bad:
        assert by_reason.get(reason) == (1 if reason != "not_finite" else 2), (reason, by_reason)
    assert by_reason["replay"] == 1
    values = [o["message"]["value"] for o in collector.observations()]
    assert values == [str(i) for i in range(1, len(bad) + 1)]
    assert not running.task.done()


async def test_periodic_stats_line_reports_the_known_workload(
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    collector: Collector,
    device: Device,
    start_agent: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    running = await start_agent(agent_config_dict(local_broker, upstream_broker))
    for n in range(1, 4):
        device.publish("devices/dev-3/up", encode_frame(n, [("t", n, 0, "Cel"), ("h", n, 0, "%")]))
    device.publish("devices/dev-3/up", b"not json")
    await async_wait_until(lambda: len(collector.observations()) == 6, 10, "6 observations")
    caplog.set_level(logging.INFO, logger="agent.runtime")
    # The journal upkeep the agent runs every 10 s, here at a faster pace.
    upkeep = copy.copy(running.agent.upkeep)
    upkeep.every, upkeep.stats_every = 0.05, 1
    task = asyncio.create_task(upkeep.run())
    try:
        await async_wait_until(
            lambda: any("event=stats" in r.getMessage() for r in caplog.records), 5, "stats"
        )
    finally:
        task.cancel()
    line = next(r.getMessage() for r in caplog.records if "event=stats" in r.getMessage())
    assert "signed=6 delivered=6 rejected=1 journal_entries=6" in line
    assert "backlog=0 upstream=up" in line
