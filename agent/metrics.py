"""In-process counters and gauges the agent keeps about itself (read by status and health).

The hot path only adds to a dict entry; the Prometheus endpoint and the health JSON read these
at scrape time (agent/telemetry.py, agent/prometheus.py), so exporting costs nothing per reading.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable


class Metrics:
    """Monotonic counters keyed by name and sorted label pairs, plus callable gauges."""

    def __init__(self) -> None:
        self._counters: defaultdict[tuple[str, tuple[tuple[str, str], ...]], int] = defaultdict(int)
        self._gauges: dict[str, Callable[[], float | None]] = {}
        self._facts: dict[str, Callable[[], str | None]] = {}

    def inc(self, name: str, amount: int = 1, **labels: str) -> None:
        self._counters[(name, tuple(sorted(labels.items())))] += amount

    def get(self, name: str, **labels: str) -> int:
        """The counter's value; with no labels given, the sum over all label sets."""
        if labels:
            return self._counters.get((name, tuple(sorted(labels.items()))), 0)
        return sum(v for (n, _), v in self._counters.items() if n == name)

    def by_label(self, name: str, label: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for (n, labels), v in self._counters.items():
            if n == name:
                key = dict(labels).get(label, "")
                out[key] = out.get(key, 0) + v
        return out

    def gauge(self, name: str, fn: Callable[[], float | None]) -> None:
        """A level read at scrape time; `fn` returns None while it is unknown (then the gauge is
        left out of exports, and the health document shows null)."""
        self._gauges[name] = fn

    def fact(self, name: str, fn: Callable[[], str | None]) -> None:
        """A textual fact read at scrape time (e.g. `election_role`); None means unknown."""
        self._facts[name] = fn

    def counters(self) -> list[tuple[str, dict[str, str], int]]:
        """Every counter as (name, labels, value), for exporters."""
        return [(n, dict(labels), v) for (n, labels), v in list(self._counters.items())]

    def gauges(self) -> dict[str, float]:
        levels = {name: fn() for name, fn in list(self._gauges.items())}
        return {name: float(v) for name, v in levels.items() if v is not None}

    def facts(self) -> dict[str, str | None]:
        return {name: fn() for name, fn in list(self._facts.items())}

    def snapshot(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for (name, labels), v in self._counters.items():
            suffix = ",".join(f"{k}={val}" for k, val in labels)
            out[f"{name}{{{suffix}}}" if suffix else name] = v
        out.update(self.gauges())
        return out
