"""The discovery component's bookkeeping (agent/hadiscovery.py) without a broker: entities per
device are bounded, the registry is followed (declared sensors, revocation, enrolment again).
Nothing is connected here, so nothing is published; what would be re-sent on connection is
what these tests read. The MQTT side is tested with Mosquitto in tests/integration."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace

from agent.config.broker import BrokerEndpoint
from agent.config.homeassistant import HomeAssistantConfig
from agent.hadiscovery import MAX_SENSORS_PER_DEVICE, HomeAssistantDiscovery
from agent.model import AuthMethod, Observation, Reading, Transport

GW = "0x" + "12" * 20


@dataclass(frozen=True)
class Record:
    """The fields of a registry record that discovery reads."""

    id: str
    name: str
    status: str
    sensors: tuple[tuple[str, str], ...] = ()


def component(records: dict[str, Record]) -> HomeAssistantDiscovery:
    cfg = HomeAssistantConfig(enabled=True, mqtt=BrokerEndpoint(host="127.0.0.1", port=1))
    return HomeAssistantDiscovery(
        cfg, gateway=GW, enrolled=lambda: records, agent_ready=asyncio.Event(), client_id="t"
    )


def obs(device: str, sensor: str, value: int, n: int = 1) -> Observation:
    r = Reading(device, sensor, value, 0, "Cel", 1_700_000_000, n, Transport.MQTT, AuthMethod.HMAC)
    return Observation(r, n, GW, b"\0" * 32, b"\0" * 65, b"{}")


async def test_a_device_naming_endless_sensors_gets_a_bounded_number_of_entities() -> None:
    ha = component({})
    ha.offer(0, [obs("d", f"s{i}", i) for i in range(MAX_SENSORS_PER_DEVICE + 50)])
    assert len(ha._configs["d"]) == MAX_SENSORS_PER_DEVICE
    assert len(ha.states.latest["d"]) == MAX_SENSORS_PER_DEVICE  # no state for the rest
    assert ha.health().detail["entities"] == MAX_SENSORS_PER_DEVICE
    ha.offer(1, [obs("e", "t", 1)])  # another device is not affected
    assert len(ha._configs["e"]) == 1


async def test_registry_is_followed_declared_sensors_revocation_and_enrolment_again() -> None:
    records = {"k": Record("k", "Kitchen", "active", (("t", "Cel"), ("hum", "%")))}
    ha = component(records)
    ha._follow_registry()
    t = ha.topics
    declared = {t.config("sensor", "k", "t"), t.config("sensor", "k", "hum")}
    assert set(ha._configs["k"]) == declared
    ha.offer(0, [obs("k", "extra", 5)])  # learned from a reading
    assert t.config("sensor", "k", "extra") in ha._configs["k"]

    records["k"] = replace(records["k"], status="revoked")
    ha._follow_registry()
    assert "k" not in ha._configs and "k" not in ha.states.latest
    assert ha._revoked["k"] == declared | {t.config("sensor", "k", "extra"), t.state("k")}
    ha.offer(1, [obs("k", "t", 1, 2)])  # nothing from a revoked device is announced
    assert "k" not in ha._configs

    records["k"] = replace(records["k"], status="pending")
    ha._follow_registry()
    assert "k" not in ha._revoked and set(ha._configs["k"]) == declared
