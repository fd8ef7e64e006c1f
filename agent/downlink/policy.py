"""Who may command what: a requester's [[downlink.policy]] rule, the device's enrollment and
status, and the transports commands can reach. Returns the refusal; counting and logging it is
the service's job."""

from __future__ import annotations

from collections.abc import Mapping, Set
from typing import Protocol

from agent.config import DownlinkConfig
from agent.devices.registry import DeviceRecord, DeviceStatus
from agent.model import NAME_RE, Transport


class DeviceKeys(Protocol):
    """The enrolled devices as the gateway last read them (agent/devices/gate.py)."""

    @property
    def records(self) -> Mapping[str, DeviceRecord]: ...

    @property
    def keys(self) -> Mapping[str, bytes]: ...


def policy_refusal(
    cfg: DownlinkConfig,
    devices: DeviceKeys,
    transports: Set[Transport],
    config_file: str,
    requester: str,
    device: str,
    action: str,
    trusted: bool,
) -> tuple[str, str] | None:
    """(reason, detail) when `requester` may not send `action` to `device`, else None.
    `trusted`: the operator's own configuration asks ([[downlink.events]]), no policy."""
    if not NAME_RE.match(device):
        return "unknown_device", "not a device id"
    rule = cfg.rule_for(requester)
    if not trusted and (rule is None or not rule.allows(device, action)):
        allowed = (
            "nothing (no [[downlink.policy]] for this requester)"
            if rule is None
            else f"actions {list(rule.actions)} on devices {list(rule.devices)}"
        )
        return (
            "not_allowed",
            f"{requester!r} may not send {action!r} to {device!r}; "
            f"[[downlink.policy]] in {config_file} allows it {allowed}",
        )
    rec = devices.records.get(device)
    if rec is None or devices.keys.get(device) is None:
        return "unknown_device", f"{device!r} is not enrolled (edgence-agent pair)"
    if rec.status is DeviceStatus.REVOKED:
        return "revoked", f"{device!r} was revoked"
    if rec.transport not in transports:
        return (
            "wrong_transport",
            f"{device!r} is enrolled over {rec.transport}; commands go over "
            + " and ".join(str(t) for t in sorted(transports)),
        )
    return None


__all__ = ["DeviceKeys", "policy_refusal"]
