"""[homeassistant]: optional Home Assistant MQTT discovery of the gateway's devices and sensors,
with their latest accepted values and the agent's availability (off by default)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.config.broker import TOPIC_PREFIX, BrokerEndpoint, read_broker, read_topic_prefix
from agent.config.reader import Section
from agent.model import NAME_RE

HA_REQUESTER = "homeassistant"  # the [[downlink.policy]] requester of Home Assistant's presses

# Home Assistant subscribes to <discovery_prefix>/#: a plain topic path, no wildcards.
_DISCOVERY_PREFIX_RE = re.compile(r"^[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-]+)*\Z")


@dataclass(frozen=True)
class HaCommand:
    """[[homeassistant.commands]]: `action` of `device` as a Home Assistant button (a press sends
    it with `args`) or switch (on/off sends it with `args` plus `state_arg` = 1 or 0)."""

    device: str
    action: str
    kind: str = "button"  # or "switch"
    name: str = ""  # the entity's name and id; default: the action
    args: tuple[tuple[str, int | str], ...] = ()
    state_arg: str = "value"  # switch only

    @property
    def entity(self) -> str:
        return self.name or self.action


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
    commands: tuple[HaCommand, ...] = ()


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
    commands = tuple(_command(c) for c in sec.sub_list("commands"))
    seen: set[tuple[str, str]] = set()
    for c in commands:
        if (c.device, c.entity) in seen:
            raise sec.err("commands", f"{c.device!r} has two commands named {c.entity!r}")
        seen.add((c.device, c.entity))
    sec.done()
    return HomeAssistantConfig(
        enabled=enabled,
        discovery_prefix=prefix,
        topic_prefix=topic_prefix,
        state_interval_s=interval,
        mqtt=broker,
        commands=commands,
    )


def _label(sec: Section, k: str, default: str | None = None) -> str:
    v = sec.get(k, str, default, required=default is None)
    if not NAME_RE.match(v):
        raise sec.err(k, f"{v!r}: 1-32 of A-Z a-z 0-9 _ . : -")
    return v


def _command(c: Section) -> HaCommand:
    device = _label(c, "device")
    action = _label(c, "action")
    kind = c.choice("kind", HaCommand.kind, ("button", "switch"))
    name = _label(c, "name", action)
    args: list[tuple[str, int | str]] = []
    for k, v in c.get("args", dict, {}).items():
        if not NAME_RE.match(k) or isinstance(v, bool) or not isinstance(v, int | str):
            raise c.err(
                "args", f"{k!r}: names of 1-32 A-Z a-z 0-9 _ . : - with integer or text values"
            )
        args.append((k, v))
    state_arg = HaCommand.state_arg
    if kind == "switch":
        state_arg = _label(c, "state_arg", HaCommand.state_arg)
        if any(k == state_arg for k, _ in args):
            raise c.err("args", f"{state_arg!r} is the switch's state_arg: on = 1, off = 0")
    elif "state_arg" in c.data:
        raise c.err("state_arg", 'is for kind = "switch" only')
    c.done()
    return HaCommand(device, action, kind, name, tuple(args), state_arg)
