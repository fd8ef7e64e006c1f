"""Home Assistant discovery ([homeassistant]) with a real Mosquitto and the real agent: a client
subscribed to `homeassistant/#` as Home Assistant is sees the enrolled device's entities, the
accepted values on the state topic, "online", the entities removed when the device is revoked,
and "offline" from the last will when the agent dies (and from the agent when it stops)."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

from agent.devices.auth import encode_signed_frame
from agent.devices.codecs.frame import encode_frame
from agent.devices.registry import DeviceRegistry
from agent.localbroker import LocalMosquitto
from agent.model import Transport
from tests.integration.conftest import (
    Collector,
    Device,
    agent_config_dict,
    async_wait_until,
    wait_until,
    write_agent_dir,
)


def ha_config(local: LocalMosquitto, upstream: LocalMosquitto) -> dict[str, Any]:
    cfg = agent_config_dict(local, upstream, homeassistant={"enabled": True})
    cfg["sources"]["mqtt"]["allowed_devices"] = []
    return cfg


def latest(c: Collector, topic: str) -> bytes | None:
    """The last payload seen on `topic` (None: nothing yet)."""
    with c.lock:
        found = [p for t, p, _ in c.messages if t == topic]
    return found[-1] if found else None


def configs(c: Collector) -> dict[str, dict[str, Any]]:
    """Home Assistant's view: the newest non-empty config per discovery topic."""
    out: dict[str, dict[str, Any]] = {}
    with c.lock:
        for t, p, _ in c.messages:
            if t.endswith("/config"):
                if p:
                    out[t] = json.loads(p)
                else:
                    out.pop(t, None)
    return out


async def test_enrolled_device_appears_in_home_assistant_with_states_and_goes_on_revocation(
    tmp_path: Path,
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    device: Device,
    start_agent: Any,
) -> None:
    reg = DeviceRegistry(tmp_path / "agent" / "data" / "devices")
    _, key = reg.enroll(
        "dev-1", transport=Transport.MQTT, name="Kitchen", sensors=[("t", "Cel"), ("hum", "%")]
    )
    reg.activate(["dev-1"])
    ha = Collector(local_broker.port, "homeassistant/#")
    running = await start_agent(ha_config(local_broker, upstream_broker))
    gw = running.agent.key.address
    node = f"edgence_{gw[2:14].lower()}"
    t_topic = f"homeassistant/sensor/{node}/dev-1__t/config"
    hum_topic = f"homeassistant/sensor/{node}/dev-1__hum/config"
    state_topic = f"edgence/{gw}/ha/dev-1/state"
    avail_topic = f"edgence/{gw}/ha/availability"
    states = Collector(local_broker.port, f"edgence/{gw}/ha/#")

    # Declared sensors appear before any reading, with the gateway as the device's hub.
    await async_wait_until(lambda: {t_topic, hum_topic} <= set(configs(ha)), 10, "configs")
    t_cfg = configs(ha)[t_topic]
    assert t_cfg["state_topic"] == state_topic
    assert t_cfg["unit_of_measurement"] == "°C" and t_cfg["device_class"] == "temperature"
    assert t_cfg["value_template"] == "{{ value_json['t'] }}"
    assert t_cfg["unique_id"] == f"{node}__dev-1__t"
    assert t_cfg["availability"] == [
        {"topic": avail_topic, "payload_available": "online", "payload_not_available": "offline"}
    ]
    dev_block = t_cfg["device"]
    assert dev_block["identifiers"] == [f"{node}__dev-1"] and dev_block["name"] == "Kitchen"
    assert dev_block["manufacturer"] == "edgence"
    assert dev_block["via_device"] == f"{node}__gateway"
    gateway = configs(ha)[f"homeassistant/sensor/{node}/gateway__devices/config"]
    assert gateway["device"]["identifiers"] == [f"{node}__gateway"]
    assert configs(ha)[hum_topic]["device_class"] == "humidity"
    await async_wait_until(lambda: latest(states, avail_topic) == b"online", 10, "online")

    # Accepted readings reach the state topic as exact numbers.
    for n, (t, h) in enumerate([(215, 40), (218, 41)], start=1):
        device.publish(
            "devices/dev-1/up",
            encode_signed_frame(key, "dev-1", n, [("t", t, -1, "Cel"), ("hum", h, 0, "%")]),
        )
    await async_wait_until(
        lambda: latest(states, state_topic) == b'{"hum":41,"t":21.8}', 10, "latest state"
    )

    # A late subscriber (Home Assistant restarting) gets all of it retained.
    late = Collector(local_broker.port, "homeassistant/#")
    late_states = Collector(local_broker.port, f"edgence/{gw}/ha/#")
    await async_wait_until(lambda: {t_topic, hum_topic} <= set(configs(late)), 10, "retained")
    await async_wait_until(
        lambda: latest(late_states, state_topic) == b'{"hum":41,"t":21.8}', 10, "retained state"
    )
    assert latest(late_states, avail_topic) == b"online"
    with late.lock:
        assert all(r for t, _, r in late.messages), "discovery configs are retained"

    # Revoked: both entities are removed (empty retained payloads), and the state cleared.
    reg.revoke("dev-1")
    await async_wait_until(lambda: not {t_topic, hum_topic} & set(configs(ha)), 10, "removal")
    await async_wait_until(lambda: latest(states, state_topic) == b"", 10, "state cleared")
    gone = Collector(local_broker.port, "homeassistant/#")
    await async_wait_until(lambda: f"homeassistant/sensor/{node}/gateway__devices/config"
                           in configs(gone), 10, "gateway config")  # fmt: skip
    assert not {t_topic, hum_topic} & set(configs(gone)), "removed configs are not retained"
    h = running.agent.homeassistant.health()
    assert h.state == "up" and h.detail["devices"] == 0

    await running.stop()  # a clean stop says offline itself (no last will on DISCONNECT)
    await async_wait_until(lambda: latest(states, avail_topic) == b"offline", 10, "offline")
    for c in (ha, states, late, late_states, gone):
        c.close()


def test_agent_killed_shows_offline_through_the_last_will_and_online_after_restart(
    tmp_path: Path,
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    device: Device,
    agent_process: Any,
) -> None:
    cfg = agent_config_dict(local_broker, upstream_broker, homeassistant={"enabled": True})
    cfg_path, key = write_agent_dir(tmp_path / "gw", cfg)
    avail_topic = f"edgence/{key.address}/ha/availability"
    states = Collector(local_broker.port, f"edgence/{key.address}/ha/#")
    ha = Collector(local_broker.port, "homeassistant/#")
    agent = agent_process(cfg_path)
    agent.start()
    wait_until(lambda: latest(states, avail_topic) == b"online", 10, "online")
    # An allowlisted device's sensor appears on its first accepted reading.
    device.publish("devices/dev-2/up", encode_frame(1, [("co2", 412, 0, "[ppm]")]))
    node = f"edgence_{key.address[2:14].lower()}"
    topic = f"homeassistant/sensor/{node}/dev-2__co2/config"
    wait_until(lambda: topic in configs(ha), 10, "co2 entity")
    assert configs(ha)[topic]["device_class"] == "carbon_dioxide"
    assert configs(ha)[topic]["unit_of_measurement"] == "ppm"
    wait_until(
        lambda: latest(states, f"edgence/{key.address}/ha/dev-2/state") == b'{"co2":412}',
        10,
        "co2 state",
    )

    agent.signal(signal.SIGKILL)  # no chance to say anything: the broker says it
    agent.wait(10)
    wait_until(lambda: latest(states, avail_topic) == b"offline", 15, "last will")

    agent.start()
    wait_until(lambda: latest(states, avail_topic) == b"online", 10, "online again")
    agent.signal(signal.SIGTERM)
    assert agent.wait(15) == 0
    wait_until(lambda: latest(states, avail_topic) == b"offline", 10, "offline at stop")
    assert "event=ha_available" in agent.log_text()
    states.close()
    ha.close()
