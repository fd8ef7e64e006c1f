"""The oracle's queries: which observation a dApp asks for (JSON over MQTT, a CoAP path and
query), and the error every refused query is answered with. Pure: no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from agent.errors import AgentError
from agent.model import NAME_RE

MAX_REQUEST_BYTES = 4096
_UINT64_MAX = 2**64 - 1
_QUERY_KEYS = frozenset({"device", "sensor", "sequence", "at"})
_DIGITS_RE = re.compile(r"^[0-9]{1,20}\Z")
_COMPACT = json.JSONEncoder(separators=(",", ":"))


class QueryError(AgentError):
    """A query the service answers with an error; `code` is a stable label (also the counter's)."""

    STATUS: ClassVar[dict[str, int]] = {
        "malformed": 400,
        "unknown_device": 404,
        "unknown_sensor": 404,
        "no_data": 404,
        "not_found": 404,
        "busy": 503,
        "unavailable": 503,
        "rate_limited": 429,
    }

    def __init__(self, code: str, message: str, *, retry_after_ms: int | None = None) -> None:
        self.code, self.message, self.retry_after_ms = code, message, retry_after_ms
        super().__init__(f"{code}: {message}")

    @property
    def status(self) -> int:
        return self.STATUS.get(self.code, 500)

    def body(self) -> bytes:
        error: dict[str, str | int] = {"code": self.code, "message": self.message}
        if self.retry_after_ms is not None:
            error["retry_after_ms"] = self.retry_after_ms
        return _COMPACT.encode({"v": 1, "ok": False, "error": error}).encode()


@dataclass(frozen=True)
class OracleQuery:
    """Which observation is asked for: the latest, the one with `sequence`, or the newest one
    journaled at or before unix time `at` (the gateway's clock)."""

    device: str
    sensor: str
    sequence: int | None = None
    at: int | None = None

    def __post_init__(self) -> None:
        for what, name in (("device", self.device), ("sensor", self.sensor)):
            if not isinstance(name, str) or not NAME_RE.match(name):
                raise QueryError(
                    "malformed", f"{what} must be 1-32 characters of A-Z a-z 0-9 _ . : -"
                )
        if self.sequence is not None and self.at is not None:
            raise QueryError("malformed", "give sequence or at, not both")
        for what, n in (("sequence", self.sequence), ("at", self.at)):
            if n is not None and (type(n) is not int or not 0 <= n <= _UINT64_MAX):
                raise QueryError("malformed", f"{what} must be an integer in uint64")

    @classmethod
    def from_json(cls, payload: bytes) -> OracleQuery:
        if len(payload) > MAX_REQUEST_BYTES:
            raise QueryError(
                "malformed", f"request of {len(payload)} bytes; at most {MAX_REQUEST_BYTES}"
            )
        try:
            body = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            raise QueryError("malformed", "request is not valid JSON") from None
        if not isinstance(body, dict):
            raise QueryError("malformed", 'request must be a JSON object like {"device":..}')
        unknown = sorted(set(body) - _QUERY_KEYS)
        if unknown:
            raise QueryError(
                "malformed",
                f"unknown field {unknown[0][:32]!r}; allowed: at, device, sensor, sequence",
            )
        for k in ("device", "sensor"):
            if k not in body:
                raise QueryError("malformed", f"missing field {k}")
        return cls(body["device"], body["sensor"], body.get("sequence"), body.get("at"))

    @classmethod
    def from_coap(cls, path: Sequence[str], query: Sequence[str]) -> OracleQuery:
        if len(path) != 2:
            raise QueryError("malformed", "the path is /oracle/{device}/{sensor}")
        args: dict[str, int] = {}
        for item in query:
            k, sep, v = item.partition("=")
            if k not in ("seq", "at") or not sep or not _DIGITS_RE.match(v) or k in args:
                raise QueryError("malformed", f"query {item[:40]!r}: use ?seq=N or ?at=UNIXTIME")
            args[k] = int(v)
        return cls(path[0], path[1], args.get("seq"), args.get("at"))
