"""Who may command what: a requester's [[downlink.policy]] rule, the device's enrollment and
status, and the transports commands can reach. Returns the refusal; counting and logging it is
the service's job."""

from __future__ import annotations

from collections.abc import Mapping
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


class CommandPolicy:
    """[[downlink.policy]] over the enrolled devices; `transports` are those commands can reach
    (wiring adds CoAP and BLE when their sources run)."""

    def __init__(
        self,
        cfg: DownlinkConfig,
        devices: DeviceKeys,
        transports: set[Transport],
        config_file: str,
    ) -> None:
        self.cfg, self.devices, self.config_file = cfg, devices, config_file
        self.transports = transports

    def refusal(
        self, requester: str, device: str, action: str, trusted: bool
    ) -> tuple[str, str] | None:
        """(reason, detail) when `requester` may not send `action` to `device`, else None.
        `trusted`: the operator's own configuration asks ([[downlink.events]]), no policy."""
        if not NAME_RE.match(action):
            return "bad_request", "action must be 1-32 of A-Z a-z 0-9 _ . : -"
        if not NAME_RE.match(device):
            return "unknown_device", "not a device id"
        rule = self.cfg.rule_for(requester)
        if not trusted and (rule is None or not rule.allows(device, action)):
            allowed = (
                "nothing (no [[downlink.policy]] for this requester)"
                if rule is None
                else f"actions {list(rule.actions)} on devices {list(rule.devices)}"
            )
            return (
                "not_allowed",
                f"{requester!r} may not send {action!r} to {device!r}; "
                f"[[downlink.policy]] in {self.config_file} allows it {allowed}",
            )
        rec = self.devices.records.get(device)
        if rec is None or self.devices.keys.get(device) is None:
            return "unknown_device", f"{device!r} is not enrolled (edgence-agent pair)"
        if rec.status is DeviceStatus.REVOKED:
            return "revoked", f"{device!r} was revoked"
        if rec.transport not in self.transports:
            return (
                "wrong_transport",
                f"{device!r} is enrolled over {rec.transport}; commands go over "
                + " and ".join(str(t) for t in sorted(self.transports)),
            )
        return None


__all__ = ["CommandPolicy", "DeviceKeys"]
