"""[homeassistant]: optional Home Assistant MQTT discovery of the gateway's devices and sensors,
with their latest accepted values and the agent's availability (off by default)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.config.broker import TOPIC_PREFIX, BrokerEndpoint, read_broker, read_topic_prefix
from agent.config.reader import Section

# Home Assistant subscribes to <discovery_prefix>/#: a plain topic path, no wildcards.
_DISCOVERY_PREFIX_RE = re.compile(r"^[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-]+)*\Z")


@dataclass(frozen=True, kw_only=True)
class HomeAssistantConfig:
    """Where Home Assistant listens for discovery (`discovery_prefix`, its own default), where
    the agent publishes states and availability (`topic_prefix`), on which broker ([.mqtt],
    the local one by default), and at most one state message per device per `state_interval_s`."""

    enabled: bool = False
    discovery_prefix: str = "homeassistant"
    topic_prefix: str = TOPIC_PREFIX
    state_interval_s: float = 1.0
    mqtt: BrokerEndpoint | None = None  # None only when built in code; the reader always sets it


def read_homeassistant(sec: Section, local_broker_url: str) -> HomeAssistantConfig:
    HA = HomeAssistantConfig
    enabled = sec.get("enabled", bool, HA.enabled)
    prefix = sec.checked(
        "discovery_prefix",
        HA.discovery_prefix,
        lambda v: bool(_DISCOVERY_PREFIX_RE.match(v)),
        'topic levels of A-Z a-z 0-9 _ - separated by "/" (Home Assistant\'s default is '
        '"homeassistant")',
    )
    topic_prefix = read_topic_prefix(sec, HA.topic_prefix)
    interval = sec.duration("state_interval", HA.state_interval_s)
    if interval > 3600:
        raise sec.err("state_interval", f"must be at most 3600 seconds; got {interval:g}")
    m = sec.sub("mqtt")
    broker = read_broker(m, local_broker_url)
    m.done()
    sec.done()
    return HomeAssistantConfig(
        enabled=enabled,
        discovery_prefix=prefix,
        topic_prefix=topic_prefix,
        state_interval_s=interval,
        mqtt=broker,
    )
