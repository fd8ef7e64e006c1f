"""Typed access to one TOML table of the agent's config (the `Section` every reader uses).

Each getter records the key it read, so `done()` can refuse unknown keys with the allowed list;
every refusal is a ConfigError naming the file, the dotted key and what is allowed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

from agent.errors import ConfigError
from agent.model import NAME_RE

T = TypeVar("T")

ADDRESS_RE = re.compile(r"^0x[0-9a-fA-F]{40}\Z")
ZERO_ADDRESS = "0x" + "00" * 20
DEVICE_ID_RULE = "1-32 of A-Z a-z 0-9 _ . : -"

_SIZE_RE = re.compile(r"^\s*([0-9]+)\s*(B|KiB|MiB|GiB|KB|MB|GB)?\s*\Z")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
}
_DURATION_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)?\s*\Z")
_DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_KIND_NAMES: dict[type, str] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    list: "a list",
    dict: "a table",
}


class Section:
    """One TOML table; remembers which keys were read to reject unknown ones."""

    def __init__(self, file: str, name: str, data: Any, base: Path) -> None:
        if not isinstance(data, dict):
            raise ConfigError(file, name, "must be a table")
        self.file, self.name, self.data, self.base = file, name, data, base
        self.read: set[str] = set()

    def key(self, k: str) -> str:
        return f"{self.name}.{k}" if self.name else k

    def err(self, k: str, problem: str) -> ConfigError:
        return ConfigError(self.file, self.key(k), problem)

    def get(self, k: str, kind: type[T], default: T | None = None, *, required: bool = False) -> T:
        self.read.add(k)
        if k not in self.data:
            if required:
                raise self.err(k, f"is required ({_KIND_NAMES.get(kind, kind.__name__)})")
            return cast(T, default)
        v = self.data[k]
        ok = isinstance(v, kind) and not (kind is int and isinstance(v, bool))
        if kind is float and isinstance(v, int) and not isinstance(v, bool):
            v, ok = float(v), True
        if not ok:
            want = _KIND_NAMES.get(kind, kind.__name__)
            raise self.err(k, f"must be {want}, got {type(v).__name__} {v!r}")
        return cast(T, v)

    def int_range(self, k: str, default: int, lo: int, hi: int) -> int:
        v = self.get(k, int, default)
        if not lo <= v <= hi:
            raise self.err(k, f"must be between {lo} and {hi}, got {v}")
        return v

    def choice(self, k: str, default: str, allowed: tuple[str, ...]) -> str:
        v = self.get(k, str, default)
        if v not in allowed:
            raise self.err(k, f"must be one of {', '.join(allowed)}; got {v!r}")
        return v

    def checked(self, k: str, default: str, pred: Callable[[str], bool], what: str) -> str:
        """A string that `pred` accepts; `what` says what is allowed."""
        v = self.get(k, str, default)
        if not pred(v):
            raise self.err(k, f"must be {what}; got {v!r}")
        return v

    def path(self, k: str, default: str | None = None, *, required: bool = False) -> Path | None:
        """A path; relative ones are resolved against the config file's directory."""
        v = self.get(k, str, default, required=required)
        if v is None:
            return None
        p = Path(v).expanduser()
        return p if p.is_absolute() else (self.base / p)

    def size(self, k: str, default: int) -> int:
        self.read.add(k)
        v = self.data.get(k, default)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
        m = _SIZE_RE.match(v) if isinstance(v, str) else None
        if not m or int(m.group(1)) <= 0:
            raise self.err(k, f'must be a positive size such as 268435456 or "256 MiB"; got {v!r}')
        return int(m.group(1)) * _SIZE_UNITS[m.group(2)]

    def duration(self, k: str, default: float) -> float:
        self.read.add(k)
        v = self.data.get(k, default)
        if isinstance(v, int | float) and not isinstance(v, bool) and v > 0:
            return float(v)
        m = _DURATION_RE.match(v) if isinstance(v, str) else None
        if not m or float(m.group(1)) <= 0:
            raise self.err(k, f'must be a positive duration such as 3600 or "7d", "12h"; got {v!r}')
        return float(m.group(1)) * _DURATION_UNITS[m.group(2)]

    def str_list(self, k: str, default: tuple[str, ...]) -> tuple[str, ...]:
        v = self.get(k, list, list(default))
        if not all(isinstance(x, str) for x in v):
            raise self.err(k, "must be a list of strings")
        return tuple(v)

    def device_id(
        self, k: str, default: str | None = None, *, required: bool = False
    ) -> str | None:
        v = self.get(k, str, default, required=required)
        if v is not None and not NAME_RE.match(v):
            raise self.err(k, f"device id {v!r} must be {DEVICE_ID_RULE}")
        return v

    def device_ids(self, k: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        ids = self.str_list(k, default)
        for d in ids:
            if not NAME_RE.match(d):
                raise self.err(k, f"device id {d!r} must be {DEVICE_ID_RULE}")
        return ids

    def address(
        self,
        k: str,
        default: str | None,
        what: str = "0x followed by 40 hex digits",
        *,
        required: bool = False,
    ) -> str | None:
        """An Ethereum address (0x and 40 hex digits); `what` names it in the refusal."""
        v = self.get(k, str, default, required=required)
        if v is not None and not ADDRESS_RE.match(v):
            raise self.err(k, f"must be {what}; got {v!r}")
        return v

    def sub(self, k: str) -> Section:
        """The table at `k` (an empty one when absent)."""
        self.read.add(k)
        return Section(self.file, self.key(k), self.data.get(k, {}), self.base)

    def sub_list(self, k: str) -> list[Section]:
        """An array of tables ([[a.k]]): one section per entry, keys named a.k[i].x."""
        self.read.add(k)
        v = self.data.get(k, [])
        if not isinstance(v, list):
            raise self.err(k, f"must be an array of tables ([[{self.key(k)}]])")
        return [Section(self.file, f"{self.key(k)}[{i}]", d, self.base) for i, d in enumerate(v)]

    def done(self) -> None:
        """Refuse any key nobody read, listing the keys allowed here."""
        unknown = sorted(set(self.data) - self.read)
        if unknown:
            allowed = ", ".join(sorted(self.read))
            raise self.err(unknown[0], f"is not a known key; allowed here: {allowed}")
