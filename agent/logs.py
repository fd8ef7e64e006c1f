"""Structured logging: one line per event, key=value, suitable for stdout and journald.

Call `event(log, "bridge_connected", host=..., port=...)`; never pass secrets as fields.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:/@+#%,[]")


# Backslash, quote and every control character are escaped so that no value can start a line.
_ESCAPES = {
    ord("\\"): "\\\\",
    ord('"'): '\\"',
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
}
_ESCAPES.update({c: f"\\x{c:02x}" for c in [*range(32), 127] if c not in _ESCAPES})


def format_value(value: Any) -> str:
    """Render a value for key=value output, quoting only when needed."""
    text = str(value)
    if text and all(c in _PLAIN for c in text):
        return text
    escaped = text.translate(_ESCAPES)
    return f'"{escaped}"'


def kv(**fields: Any) -> str:
    return " ".join(f"{k}={format_value(v)}" for k, v in fields.items() if v is not None)


def event(log: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one structured event line: event=<name> k=v ..."""
    if log.isEnabledFor(level):
        log.log(level, "event=%s%s%s", name, " " if fields else "", kv(**fields))


# syslog priorities, for journald's "<N>" line prefix (journalctl -p warning filters on them)
_PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


def writes_to_journal(stream: Any, env: dict[str, str] | None = None) -> bool:
    """True when `stream` is the journald stream systemd gave this service ($JOURNAL_STREAM
    names its device and inode), so that lines may carry a priority prefix."""
    want = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return bool(want) and want == f"{st.st_dev}:{st.st_ino}"


class KeyValueFormatter(logging.Formatter):
    """ts=... level=... logger=... <message> — messages from `event` are already key=value.
    With `journald=True` each line starts with its syslog priority (`<4>`), which journald
    strips and records, so `journalctl -p warning` works."""

    def __init__(self, journald: bool = False) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        msg = record.getMessage()
        if not msg.startswith("event="):
            msg = "msg=" + format_value(msg)
        line = (
            f"ts={ts}.{int(record.msecs):03d}Z level={record.levelname.lower()} "
            f"logger={record.name} {msg}"
        )
        if record.exc_info:
            line += " exc=" + format_value(self.formatException(record.exc_info))
        if self.journald:
            line = f"<{_PRIORITY.get(record.levelname, 6)}>{line}"
        return line


def setup_logging(level: str = "info", stream: Any = None) -> None:
    out = stream or sys.stdout
    handler = logging.StreamHandler(out)
    handler.setFormatter(KeyValueFormatter(journald=writes_to_journal(out)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class RateLimitedLog:
    """Logs the first event per key at once, then at most one line per `interval` seconds
    carrying how many were suppressed in between (so a hostile device cannot flood the log).
    Suppressed events still go out at debug level, each one, for whoever debugs a device.

    `group` bounds how many distinct keys of one group (a device and a reason, whose detail
    varies per frame) log at `level` per interval: past `group_limit` they go to debug only."""

    def __init__(self, log: logging.Logger, interval: float = 60.0, group_limit: int = 8) -> None:
        self._log = log
        self._interval = interval
        self._group_limit = group_limit
        self._state: dict[tuple[str, ...], tuple[float, int]] = {}
        self._groups: dict[tuple[str, ...], tuple[float, int]] = {}

    def event(
        self,
        key: tuple[str, ...],
        name: str,
        level: int = logging.WARNING,
        *,
        group: tuple[str, ...] | None = None,
        **fields: Any,
    ) -> bool:
        now = time.monotonic()
        last, suppressed = self._state.get(key, (-1e18, 0))
        if now - last < self._interval or not self._group_allows(group, now):
            self._state[key] = (last, suppressed + 1)
            event(self._log, name, logging.DEBUG, **fields)
            return False
        if len(self._state) > 10_000:  # bound memory under a flood of distinct device ids
            self._state.clear()
            self._groups.clear()
        self._state[key] = (now, 0)
        event(self._log, name, level, **fields, suppressed=suppressed or None)
        return True

    def _group_allows(self, group: tuple[str, ...] | None, now: float) -> bool:
        if group is None:
            return True
        start, count = self._groups.get(group, (now, 0))
        if now - start >= self._interval:
            start, count = now, 0
        if count >= self._group_limit:
            return False
        self._groups[group] = (start, count + 1)
        return True
