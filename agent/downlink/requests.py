"""What a requester sends to the command service and how it is refused: the request's JSON
(parsed and bounded here, no I/O) and `CommandRefused`, the refusal every entry point returns."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from agent.config import DownlinkConfig
from agent.downlink.codec import DownlinkError, check_args
from agent.downlink.store import StoredCommand
from agent.errors import AgentError
from agent.model import NAME_RE

MAX_REQUEST_BYTES = 4096


class CommandRefused(AgentError):
    """A command the gateway will not queue; `reason` is a stable label, `detail` says why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def topic_device(template: str) -> Callable[[str], str | None]:
    """The device id in a topic made from `template` ("devices/{id}/ack"), or None."""
    levels = template.split("/")
    at = levels.index("{id}")

    def device_of(topic: str) -> str | None:
        parts = topic.split("/")
        if len(parts) != len(levels):
            return None
        dev = parts[at]
        return dev if NAME_RE.match(dev) else None

    return device_of


def parse_request(payload: bytes) -> dict[str, Any]:
    """{"device":..., "action":..., "args":{...}, "ttl": seconds, "id": optional}."""
    if len(payload) > MAX_REQUEST_BYTES:
        raise CommandRefused("bad_request", f"larger than {MAX_REQUEST_BYTES} bytes")
    try:
        req = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise CommandRefused("bad_request", "the request is not JSON") from None
    if not isinstance(req, dict):
        raise CommandRefused("bad_request", "the request must be a JSON object")
    unknown = sorted(set(req) - {"device", "action", "args", "ttl", "id"})
    if unknown:
        raise CommandRefused(
            "bad_request", f"unknown field {unknown[0]!r}; allowed: device, action, args, ttl, id"
        )
    for k in ("device", "action"):
        if not isinstance(req.get(k), str):
            raise CommandRefused("bad_request", f"{k} is required (text)")
    req.setdefault("args", {})
    ttl = req.get("ttl")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float)):
        raise CommandRefused("bad_request", "ttl must be a number of seconds")
    if "id" in req and not isinstance(req["id"], str):
        raise CommandRefused("bad_request", "id must be text")
    return req


def new_command(
    cfg: DownlinkConfig,
    requester: str,
    device: str,
    action: str,
    args: Mapping[str, Any],
    ttl: float | None,
    command_id: str | None,
    now: float,
) -> StoredCommand:
    """The command to queue (its TTL, arguments and id checked); raises CommandRefused."""
    ttl = cfg.default_ttl_s if ttl is None else ttl
    if ttl <= 0:
        raise CommandRefused("expired", f"the command's ttl ({ttl:g} s) has already ended")
    if ttl > cfg.max_ttl_s:
        raise CommandRefused(
            "bad_ttl", f"ttl {ttl:g} s is above downlink.max_ttl ({cfg.max_ttl_s:g} s)"
        )
    try:
        clean = check_args(dict(args))
    except DownlinkError as exc:
        raise CommandRefused("bad_args", exc.detail) from None
    if command_id is not None and not NAME_RE.match(command_id):
        raise CommandRefused("bad_request", "id must be 1-32 of A-Z a-z 0-9 _ . : -")
    return StoredCommand(
        command_id=command_id or f"c{secrets.token_hex(8)}",
        device_id=device,
        action=action,
        args=clean,
        requester=requester,
        created=int(now),
        expires=int(now + ttl + 0.999),
        counter=None,
        state="queued",
        outcome=None,
    )


__all__ = ["MAX_REQUEST_BYTES", "CommandRefused", "new_command", "parse_request", "topic_device"]
