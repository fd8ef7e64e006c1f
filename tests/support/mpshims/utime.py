"""Stands in for MicroPython's `utime`/`time` extensions on CPython: ticks_ms, ticks_diff,
sleep_ms and friends over CPython's monotonic clock (the rest is CPython's own `time`)."""

from __future__ import annotations

import time as _t
from time import gmtime, localtime, sleep, time

__all__ = ["gmtime", "localtime", "sleep", "sleep_ms", "sleep_us", "ticks_add", "ticks_diff"]
__all__ += ["ticks_ms", "ticks_us", "time"]

_PERIOD = 1 << 30  # MicroPython's ticks wrap; the wrap is kept so that ticks_diff is exercised


def ticks_ms() -> int:
    return int(_t.monotonic() * 1000) % _PERIOD


def ticks_us() -> int:
    return int(_t.monotonic() * 1_000_000) % _PERIOD


def ticks_add(t: int, delta: int) -> int:
    return (t + delta) % _PERIOD


def ticks_diff(a: int, b: int) -> int:
    d = (a - b) % _PERIOD
    return d - _PERIOD if d >= _PERIOD // 2 else d


def sleep_ms(ms: int) -> None:
    _t.sleep(ms / 1000)


def sleep_us(us: int) -> None:
    _t.sleep(us / 1_000_000)
