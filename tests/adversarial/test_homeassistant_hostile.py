"""Hostile input against Home Assistant discovery: device ids and sensor names with every
character the registry allows that Home Assistant's ids do not (`.` `:` `_`) stay valid and
apart, and a flood of frames does not publish state faster than one message per device per
`state_interval`."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from agent.devices.auth import encode_signed_frame
from agent.devices.registry import DeviceRegistry
from agent.localbroker import LocalMosquitto
from agent.model import Transport
from tests.integration.conftest import Collector, Device, agent_config_dict, async_wait_until
from tests.integration.test_homeassistant import configs, latest

ID_CLASS = re.compile(r"^[a-zA-Z0-9_-]+\Z")


async def test_hostile_ids_give_valid_distinct_discovery_topics_and_a_flood_is_coalesced(
    tmp_path: Path,
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    device: Device,
    start_agent: Any,
) -> None:
    reg = DeviceRegistry(tmp_path / "agent" / "data" / "devices")
    ids = ["a.b", "a_b", "a:b", "a_2eb"]  # escaped naively, the first three would collide
    keys = {}
    for d in ids:
        _, keys[d] = reg.enroll(d, transport=Transport.MQTT, sensors=[("pm2.5", "ug/m3")])
    reg.activate(ids)
    cfg = agent_config_dict(local_broker, upstream_broker, homeassistant={"enabled": True})
    cfg["sources"]["mqtt"]["allowed_devices"] = []
    ha = Collector(local_broker.port, "homeassistant/#")
    running = await start_agent(cfg)
    gw = running.agent.key.address
    states = Collector(local_broker.port, f"edgence/{gw}/ha/#")

    await async_wait_until(lambda: len(configs(ha)) == len(ids) + 1, 10, "four entities + gw")
    seen = configs(ha)
    for topic, doc in seen.items():
        prefix, component, node, obj, last = topic.split("/")
        assert (prefix, component, last) == ("homeassistant", "sensor", "config")
        assert ID_CLASS.match(node) and ID_CLASS.match(obj) and ID_CLASS.match(doc["unique_id"])
    assert len({d["unique_id"] for d in seen.values()}) == len(seen)
    assert len({json.dumps(d["device"]["identifiers"]) for d in seen.values()}) == len(seen)
    assert {d["device"].get("serial_number") for d in seen.values()} >= set(ids)

    # A flood: 300 frames from one device as fast as the broker takes them.
    flooder, n = "a.b", 300
    state_topic = f"edgence/{gw}/ha/a_2eb/state"
    started = time.monotonic()
    for i in range(1, n + 1):
        frame = encode_signed_frame(keys[flooder], flooder, i, [("pm2.5", i, 0, "ug/m3")])
        device.publish(f"devices/{flooder}/up", frame, wait=i == n)
    await async_wait_until(
        lambda: latest(states, state_topic) == f'{{"pm2.5":{n}}}'.encode(), 15, "last value"
    )
    elapsed = time.monotonic() - started
    with states.lock:
        sent = [p for t, p, _ in states.messages if t == state_topic]
    interval = running.agent.cfg.homeassistant.state_interval_s
    # At most one per interval over the flood's duration, plus the first one at once.
    assert len(sent) <= elapsed / interval + 2, (len(sent), elapsed)
    assert len(sent) < n / 10  # coalesced, not one per frame
    accepted = running.agent.metrics.get("observations_signed")
    assert accepted == n  # every frame was accepted; only the state messages merged
    ha.close()
    states.close()


async def test_a_press_flood_and_garbage_on_command_topics_queue_at_most_the_pending_bound(
    tmp_path: Path,
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    start_agent: Any,
    caplog: Any,
) -> None:
    """Whoever can publish on the command topics presses for Home Assistant (the broker's ACL
    is the gate, docs/home-assistant.md): a flood of presses for a device that never answers
    queues at most MAX_PENDING_PRESSES commands at once, payloads that are not the entity's
    are ignored, and a press on a topic of no declared entity does nothing."""
    from agent.hacommands import MAX_PENDING_PRESSES

    reg = DeviceRegistry(tmp_path / "agent" / "data" / "devices")
    reg.enroll("gate-9", transport=Transport.MQTT)  # never connects
    cfg = agent_config_dict(
        local_broker,
        upstream_broker,
        downlink={
            "enabled": True,
            "default_ttl": "10s",
            "mqtt": {"url": local_broker.url},
            "policy": [{"requester": "homeassistant", "devices": ["*"], "actions": ["*"]}],
        },
        homeassistant={
            "enabled": True,
            "commands": [{"device": "gate-9", "action": "open"}],
        },
    )
    cfg["sources"]["mqtt"]["allowed_devices"] = []
    running = await start_agent(cfg)
    gw = running.agent.key.address
    base = f"edgence/{gw}/ha/gate-9/cmd"
    ha = Collector(local_broker.port, "homeassistant/#")
    await async_wait_until(lambda: any("action_2eopen" in t for t in configs(ha)), 10, "entity")
    for payload in (b"ON", b"", b"\xff" * 300, b"PRESS " * 50):
        ha.client.publish(f"{base}/open", payload, qos=1)
    ha.client.publish(f"{base}/other", b"PRESS", qos=1)
    ha.client.publish(f"edgence/{gw}/ha/nobody/cmd/open", b"PRESS", qos=1)
    for _ in range(200):
        ha.client.publish(f"{base}/open", b"PRESS", qos=1)
    metrics = running.agent.metrics
    await async_wait_until(
        lambda: metrics.get("commands_queued") >= MAX_PENDING_PRESSES, 20, "presses queued"
    )
    outcome_topic = f"{base}/open/receipt"
    states = Collector(local_broker.port, f"{base}/#")
    await async_wait_until(lambda: latest(states, outcome_topic) is not None, 30, "outcome")
    got = json.loads(latest(states, outcome_topic) or b"{}")
    assert got["ok"] is False and got["error"] == "device_offline"
    assert metrics.get("commands_queued") <= MAX_PENDING_PRESSES
    assert "event=ha_command_ignored" in caplog.text and "reason=busy" in caplog.text
    assert "reason=bad_payload" in caplog.text
    ha.close()
    states.close()
