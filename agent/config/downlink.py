"""[downlink]: commands to devices from operators and dApps (MQTT 5 request/response), who may
command what ([[downlink.policy]]), and how long commands wait for an offline device."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.config.reader import Section
from agent.config.service import RequestResponseConfig, read_request_response
from agent.model import NAME_RE

ANY = "*"
OPERATOR = "operator"  # the requester `edgence-agent devices command` speaks as


@dataclass(frozen=True, slots=True)
class CommandRule:
    """`requester` may send `actions` to `devices` ("*" in a list: any)."""

    requester: str
    devices: tuple[str, ...]
    actions: tuple[str, ...]

    def allows(self, device: str, action: str) -> bool:
        return (ANY in self.devices or device in self.devices) and (
            ANY in self.actions or action in self.actions
        )


@dataclass(frozen=True, kw_only=True)
class DownlinkConfig(RequestResponseConfig):
    enabled: bool = False
    store: Path | None = None  # default: <gateway.data_dir>/downlink.sqlite
    default_ttl_s: float = 60.0
    max_ttl_s: float = 86400.0
    resend_s: float = 30.0
    down_topic: str = "devices/{id}/down"
    ack_topic: str = "devices/{id}/ack"
    policy: tuple[CommandRule, ...] = (CommandRule(OPERATOR, (ANY,), (ANY,)),)
    reply_topics: tuple[str, ...] = ("{prefix}/{gateway}/cmd/res/#",)

    def rule_for(self, requester: str) -> CommandRule | None:
        for r in self.policy:
            if r.requester == requester:
                return r
        return None


def _names(sec: Section, k: str, what: str) -> tuple[str, ...]:
    items = sec.str_list(k, ())
    if not items:
        raise sec.err(k, f'must list at least one {what}, or "*" for any')
    for x in items:
        if x != ANY and not NAME_RE.match(x):
            raise sec.err(k, f'{what} {x!r} must be "*" or 1-32 of A-Z a-z 0-9 _ . : -')
    return items


def _topic(sec: Section, k: str, default: str) -> str:
    t = sec.get(k, str, default)
    if t.count("{id}") != 1 or set(t) & set("+#") or t.startswith("/"):
        raise sec.err(k, f"must be a topic with one {{id}} level and no wildcards, e.g. {default}")
    return t


def read_downlink(d: Section, local_broker_url: str, data_dir: Path) -> DownlinkConfig:
    D = DownlinkConfig
    enabled = d.get("enabled", bool, D.enabled)
    shared = read_request_response(d, D, local_broker_url)
    rules: list[CommandRule] = []
    if "policy" in d.data:
        for p in d.sub_list("policy"):
            requester = p.get("requester", str, required=True)
            if not NAME_RE.match(requester):
                raise p.err("requester", f"{requester!r}: 1-32 of A-Z a-z 0-9 _ . : -")
            if any(r.requester == requester for r in rules):
                raise p.err(
                    "requester", f"{requester!r} has a rule already: one rule per requester"
                )
            rules.append(
                CommandRule(
                    requester, _names(p, "devices", "device"), _names(p, "actions", "action")
                )
            )
            p.done()
    else:
        d.read.add("policy")
        rules = list(D.policy)
    default_ttl = d.duration("default_ttl", D.default_ttl_s)
    max_ttl = d.duration("max_ttl", D.max_ttl_s)
    if default_ttl > max_ttl:
        raise d.err("default_ttl", f"must not exceed max_ttl ({max_ttl:g} s)")
    cfg = DownlinkConfig(
        enabled=enabled,
        store=d.path("store") or data_dir / "downlink.sqlite",
        default_ttl_s=default_ttl,
        max_ttl_s=max_ttl,
        resend_s=d.duration("resend", D.resend_s),
        down_topic=_topic(d, "down_topic", D.down_topic),
        ack_topic=_topic(d, "ack_topic", D.ack_topic),
        policy=tuple(rules),
        **shared,
    )
    d.done()
    return cfg


def downlink_acl_lines(agent_username: str | None) -> list[str]:
    """Mosquitto ACL lines for commands on the default topics: each device reads only its own
    down topic and writes only its own ack topic (`%u` is the device's login, its id); the
    agent writes every down topic, reads every ack, and serves the command request/response
    topics. Patterns apply to every user wherever they stand in the file."""
    down = DownlinkConfig.down_topic.format(id="%u")
    ack = DownlinkConfig.ack_topic.format(id="%u")
    lines = ["", "# Commands (docs/downlink.md).", f"pattern read {down}", f"pattern write {ack}"]
    if agent_username:
        lines += [
            f"user {agent_username}",
            f"topic write {DownlinkConfig.down_topic.format(id='+')}",
            f"topic read {DownlinkConfig.ack_topic.format(id='+')}",
            "topic readwrite +/+/cmd/#",
        ]
    return lines


__all__ = [
    "ANY",
    "OPERATOR",
    "CommandRule",
    "DownlinkConfig",
    "downlink_acl_lines",
    "read_downlink",
]
