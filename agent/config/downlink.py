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


@dataclass(frozen=True, slots=True)
class EventRule:
    """[[downlink.events]]: each `event` log of `contract` becomes `action` for a device
    (`device`, or the bytes32 event field `device_from`), with fixed `args` plus `args_from`
    (command argument -> event field)."""

    contract: str  # 0x-lowercase address
    event: str  # "Name(type [indexed] name, ...)"
    action: str
    device: str | None = None
    device_from: str | None = None
    args: tuple[tuple[str, int | str], ...] = ()
    args_from: tuple[tuple[str, str], ...] = ()
    ttl_s: float | None = None


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
    reply_topics: tuple[str, ...] = ("{prefix}/{gateway}/cmd/res/{client}/#",)
    events: tuple[EventRule, ...] = ()

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


def _event_rule(e: Section) -> EventRule:
    from agent.downlink.eventabi import EventSpec  # pure: the event signature parser

    contract = e.address("contract", None, required=True)
    assert contract is not None
    sig = e.get("event", str, required=True)
    try:
        spec = EventSpec.parse(sig)
    except ValueError as exc:
        raise e.err(
            "event", f'{exc}; e.g. "GateOpened(bytes32 indexed device, uint256 seconds)"'
        ) from None
    action = e.get("action", str, required=True)
    if not NAME_RE.match(action):
        raise e.err("action", f"{action!r}: 1-32 of A-Z a-z 0-9 _ . : -")
    device = e.device_id("device")
    device_from = e.get("device_from", str, None)
    if (device is None) == (device_from is None):
        raise e.err("device", "give exactly one of device (an id) or device_from (a bytes32 field)")
    fields = {f.name: f.type for f in spec.fields}
    if device_from is not None and fields.get(device_from) != "bytes32":
        allowed = [n for n, t in fields.items() if t == "bytes32"]
        raise e.err(
            "device_from",
            f"{device_from!r} is not a bytes32 field of the event; allowed: {allowed}",
        )
    args: list[tuple[str, int | str]] = []
    for k, v in e.get("args", dict, {}).items():
        if not NAME_RE.match(k) or isinstance(v, bool) or not isinstance(v, int | str):
            raise e.err(
                "args", f"{k!r}: names of 1-32 A-Z a-z 0-9 _ . : - with integer or text values"
            )
        args.append((k, v))
    args_from: list[tuple[str, str]] = []
    for k, v in e.get("args_from", dict, {}).items():
        if not NAME_RE.match(k) or v not in fields:
            raise e.err(
                "args_from",
                f"{k!r} = {v!r}: the value must be a field of the event; allowed: {sorted(fields)}",
            )
        args_from.append((k, v))
    ttl = e.duration("ttl", DownlinkConfig.default_ttl_s) if "ttl" in e.data else None
    e.done()
    return EventRule(
        contract=contract.lower(),
        event=sig,
        action=action,
        device=device,
        device_from=device_from,
        args=tuple(args),
        args_from=tuple(args_from),
        ttl_s=ttl,
    )


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
    events = tuple(_event_rule(e) for e in d.sub_list("events"))
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
        events=events,
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
    "EventRule",
    "downlink_acl_lines",
    "read_downlink",
]
