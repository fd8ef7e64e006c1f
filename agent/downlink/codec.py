"""The downlink frame (a command for one device) and the device's answer: their JSON form and
the canonical bytes each HMAC covers (docs/downlink.md). Pure: no I/O.

A command carries the device's *downlink* counter (separate from its uplink frame counter):
the device executes only a counter above the last one it executed, so a replayed command is
refused, and a forged one fails its MAC.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.model import NAME_RE, UINT64_MAX

COMMAND_PREFIX = b"EDGENCE-CMD-1\n"
ANSWER_PREFIX = b"EDGENCE-ACK-1\n"
MAX_ARGS = 8
MAX_ANSWER_BYTES = 1024
ARG_INT_MAX = 2**63 - 1
# Argument and result text values: printable ASCII without tab, newline or quote/backslash
# (so the firmware's JSON and the canonical lines need no escaping).
_TEXT_RE = re.compile(r"^[ !#-\[\]-~]{0,64}\Z")
_MAC_RE = re.compile(r"^[0-9a-f]{64}\Z")

ArgValue = int | str
Args = Mapping[str, ArgValue]


class DownlinkError(ValueError):
    """A command or an answer that breaks the format; `reason` is a stable label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def check_args(args: Any, what: str = "args") -> dict[str, ArgValue]:
    """A flat object of at most MAX_ARGS names -> integer (int64) or short text."""
    if not isinstance(args, dict):
        raise DownlinkError("bad_args", f"{what} must be an object")
    if len(args) > MAX_ARGS:
        raise DownlinkError("bad_args", f"{what} has {len(args)} entries, at most {MAX_ARGS}")
    out: dict[str, ArgValue] = {}
    for k, v in args.items():
        if not isinstance(k, str) or not NAME_RE.match(k):
            raise DownlinkError(
                "bad_args", f"{what} name {str(k)[:40]!r}: 1-32 of A-Z a-z 0-9 _ . : -"
            )
        if type(v) is int:
            if not -ARG_INT_MAX - 1 <= v <= ARG_INT_MAX:
                raise DownlinkError("bad_args", f"{what}.{k} is outside int64")
        elif isinstance(v, str):
            if not _TEXT_RE.match(v):
                raise DownlinkError(
                    "bad_args",
                    f"{what}.{k}: text of 0-64 printable ASCII, no tab, quote or backslash",
                )
        else:
            raise DownlinkError("bad_args", f"{what}.{k} must be an integer or text")
        out[k] = v
    return out


def _args_lines(args: Args) -> str:
    # Sorted by name; "i" marks an integer, "s" text, so 5 and "5" differ.
    return "".join(
        f"{k}\ti\t{v}\n" if type(v) is int else f"{k}\ts\t{v}\n" for k, v in sorted(args.items())
    )


@dataclass(frozen=True, slots=True)
class Command:
    """What to do on one device. `expires` is Unix seconds; `counter` is the device's downlink
    counter, assigned when the command is first framed."""

    command_id: str
    device_id: str
    action: str
    args: Mapping[str, ArgValue]
    expires: int
    counter: int

    def __post_init__(self) -> None:
        for label, what in (
            (self.command_id, "command id"),
            (self.device_id, "device id"),
            (self.action, "action"),
        ):
            if not NAME_RE.match(label):
                raise DownlinkError(
                    "bad_label", f"{what} {label[:40]!r}: 1-32 of A-Z a-z 0-9 _ . : -"
                )
        check_args(dict(self.args))
        for n, what in ((self.expires, "expires"), (self.counter, "counter")):
            if type(n) is not int or not 0 <= n <= UINT64_MAX:
                raise DownlinkError("out_of_range", f"{what} {n!r} is outside uint64")


def command_canonical(cmd: Command) -> bytes:
    """EDGENCE-CMD-1\\n<device>\\n<n>\\n<command id>\\n<expires>\\n<action>\\n then one
    `<name>\\t<i|s>\\t<value>\\n` line per argument, sorted by name."""
    head = f"{cmd.device_id}\n{cmd.counter}\n{cmd.command_id}\n{cmd.expires}\n{cmd.action}\n"
    return COMMAND_PREFIX + (head + _args_lines(cmd.args)).encode("ascii")


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def encode_command(key: bytes, cmd: Command) -> bytes:
    """The JSON the device receives on `devices/<id>/down`."""
    mac = hmac.digest(key, command_canonical(cmd), "sha256")
    return _json(
        {
            "v": 1,
            "id": cmd.command_id,
            "n": cmd.counter,
            "exp": cmd.expires,
            "a": cmd.action,
            "args": dict(sorted(cmd.args.items())),
            "mac": mac.hex(),
        }
    )


def parse_command(key: bytes, device_id: str, payload: bytes) -> Command:
    """The device side of encode_command (tests and the simulator): raises DownlinkError
    `bad_mac` when the MAC does not verify."""
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise DownlinkError("not_json", "the command is not JSON") from None
    if not isinstance(obj, dict) or set(obj) != {"v", "id", "n", "exp", "a", "args", "mac"}:
        raise DownlinkError("bad_fields", "a command has exactly v, id, n, exp, a, args, mac")
    if obj["v"] != 1:
        raise DownlinkError("bad_version", f"v is {obj['v']!r}, not 1")
    try:
        cmd = Command(obj["id"], device_id, obj["a"], check_args(obj["args"]), obj["exp"], obj["n"])
    except TypeError:
        raise DownlinkError("bad_type", "id and a must be text") from None
    mac = obj["mac"]
    if not isinstance(mac, str) or not _MAC_RE.match(mac):
        raise DownlinkError("bad_mac", "mac must be 64 lowercase hex digits")
    if not hmac.compare_digest(hmac.digest(key, command_canonical(cmd), "sha256").hex(), mac):
        raise DownlinkError("bad_mac", "the command's mac does not verify with the device key")
    return cmd


@dataclass(frozen=True, slots=True)
class Answer:
    """A device's authenticated answer to command `command_id` (counter `counter`).

    `status` is "ok", or why the device refused or failed ("replay", "unknown_action",
    "bad_args", "expired", "failed", "duplicate"); `result` is what it reports.
    """

    command_id: str
    device_id: str
    counter: int
    status: str
    result: Mapping[str, ArgValue]
    mac: bytes

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def answer_canonical(
    device_id: str, counter: int, command_id: str, status: str, result: Args
) -> bytes:
    """EDGENCE-ACK-1\\n<device>\\n<n>\\n<command id>\\n<status>\\n then the result lines as the
    command's argument lines."""
    head = f"{device_id}\n{counter}\n{command_id}\n{status}\n"
    return ANSWER_PREFIX + (head + _args_lines(result)).encode("ascii")


def encode_answer(
    key: bytes, device_id: str, counter: int, command_id: str, status: str, result: Args
) -> bytes:
    """The JSON a device publishes on `devices/<id>/ack` (what the firmware builds)."""
    mac = hmac.digest(
        key, answer_canonical(device_id, counter, command_id, status, result), "sha256"
    )
    return _json(
        {
            "v": 1,
            "id": command_id,
            "n": counter,
            "st": status,
            "r": dict(sorted(result.items())),
            "mac": mac.hex(),
        }
    )


def parse_answer(payload: bytes, device_id: str) -> Answer:
    """An answer's fields, not yet authenticated (verify_answer checks the MAC)."""
    if len(payload) > MAX_ANSWER_BYTES:
        raise DownlinkError("oversize", f"{len(payload)} bytes, at most {MAX_ANSWER_BYTES}")
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise DownlinkError("not_json", "the answer is not JSON") from None
    if not isinstance(obj, dict) or set(obj) != {"v", "id", "n", "st", "r", "mac"}:
        raise DownlinkError("bad_fields", "an answer has exactly v, id, n, st, r, mac")
    if obj["v"] != 1:
        raise DownlinkError("bad_version", f"v is {obj['v']!r}, not 1")
    cid, n, st, mac = obj["id"], obj["n"], obj["st"], obj["mac"]
    if not isinstance(cid, str) or not NAME_RE.match(cid):
        raise DownlinkError("bad_label", "id must be a command id")
    if not isinstance(st, str) or not NAME_RE.match(st):
        raise DownlinkError("bad_label", "st must be a status label")
    if type(n) is not int or not 0 <= n <= UINT64_MAX:
        raise DownlinkError("out_of_range", "n must be an integer in uint64")
    if not isinstance(mac, str) or not _MAC_RE.match(mac):
        raise DownlinkError("bad_mac", "mac must be 64 lowercase hex digits")
    return Answer(cid, device_id, n, st, check_args(obj["r"], "r"), bytes.fromhex(mac))


def verify_answer(key: bytes, answer: Answer) -> bool:
    canon = answer_canonical(
        answer.device_id, answer.counter, answer.command_id, answer.status, answer.result
    )
    return hmac.compare_digest(hmac.digest(key, canon, "sha256"), answer.mac)


__all__ = [
    "Answer",
    "Command",
    "DownlinkError",
    "answer_canonical",
    "check_args",
    "command_canonical",
    "encode_answer",
    "encode_command",
    "parse_answer",
    "parse_command",
    "verify_answer",
]
