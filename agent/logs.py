"""Structured logging: one line per event, key=value, suitable for stdout and journald.

Call `event(log, "bridge_connected", host=..., port=...)`; never pass secrets as fields.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
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
    varies per frame) log at `level` per interval: past `group_limit` they go to debug only.

    With `reason_budget`, events that name a `budget` (their reason) share one budget per reason
    of that many
    lines per interval, whatever their keys (20,000 frames from 20,000 unknown ids give a few
    lines, not 20,000); what was held back is told in one `summary_event` line per interval:
    counts by reason and the ids (`ident`) heard most (`flush()` writes it at once)."""

    TOP_IDS = 5
    MAX_IDS = 10_000  # distinct ids counted per interval; the rest count as "(others)"

    def __init__(
        self,
        log: logging.Logger,
        interval: float = 60.0,
        group_limit: int = 8,
        *,
        reason_budget: int | None = None,
        summary_event: str = "events_suppressed",
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._log = log
        self._interval = interval
        self._group_limit = group_limit
        self._reason_budget = reason_budget
        self._summary_event = summary_event
        self._clock = clock or (lambda: time.monotonic())  # looked up per call: tests patch it
        self._state: dict[tuple[str, ...], tuple[float, int]] = {}
        self._groups: dict[tuple[str, ...], tuple[float, int]] = {}
        self._window_start = self._clock()
        self._used: dict[str, int] = {}  # reason -> lines logged in this window
        self._held: dict[str, dict[str, int]] = {}  # reason -> id -> events held back

    @property
    def pending_summary(self) -> bool:
        """Whether events were held back since the last summary line."""
        return bool(self._held)

    def seconds_to_summary(self) -> float:
        return max(0.0, self._window_start + self._interval - self._clock())

    def event(
        self,
        key: tuple[str, ...],
        name: str,
        level: int = logging.WARNING,
        *,
        group: tuple[str, ...] | None = None,
        budget: str | None = None,
        ident: str | None = None,
        **fields: Any,
    ) -> bool:
        now = self._clock()
        if self._reason_budget is not None and now - self._window_start >= self._interval:
            self.flush(now)
        last, suppressed = self._state.get(key, (-1e18, 0))
        if (
            now - last < self._interval
            or not self._group_allows(group, now)
            or not self._budget_allows(budget)
        ):
            self._state[key] = (last, suppressed + 1)
            if budget is not None and self._reason_budget is not None:
                self._hold(budget, ident or "?")
            event(self._log, name, logging.DEBUG, **fields)
            return False
        if len(self._state) > 10_000:  # bound memory under a flood of distinct device ids
            self._state.clear()
            self._groups.clear()
        self._state[key] = (now, 0)
        event(self._log, name, level, **fields, suppressed=suppressed or None)
        return True

    def flush(self, now: float | None = None) -> None:
        """Write the summary of what the reason budgets held back (if anything) and start a
        new window."""
        now = self._clock() if now is None else now
        held, self._held = self._held, {}
        self._used.clear()
        elapsed = now - self._window_start
        self._window_start = now
        if not held:
            return
        by_reason = {r: sum(ids.values()) for r, ids in held.items()}
        ids: dict[str, int] = {}
        for per_id in held.values():
            for i, n in per_id.items():
                ids[i] = ids.get(i, 0) + n
        top = sorted(ids.items(), key=lambda kv: (-kv[1], kv[0]))[: self.TOP_IDS]
        event(
            self._log,
            self._summary_event,
            logging.WARNING,
            seconds=int(elapsed),
            held_back=sum(by_reason.values()),
            reasons=",".join(f"{r}:{n}" for r, n in sorted(by_reason.items())),
            distinct_ids=len(ids),
            top_ids=",".join(f"{i}:{n}" for i, n in top),
        )

    def _budget_allows(self, reason: str | None) -> bool:
        if reason is None or self._reason_budget is None:
            return True
        used = self._used.get(reason, 0)
        if used >= self._reason_budget:
            return False
        self._used[reason] = used + 1
        return True

    def _hold(self, reason: str, ident: str) -> None:
        per_id = self._held.setdefault(reason, {})
        if ident not in per_id and len(per_id) >= self.MAX_IDS:
            ident = "(others)"
        per_id[ident] = per_id.get(ident, 0) + 1

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
