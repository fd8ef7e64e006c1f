"""The device-counter replay rule: a sliding window per device, as IPsec and DTLS keep one.

Pure: no I/O. The pipeline decides with it, the journal persists it with the observations.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.frame import Violation
from agent.model import UINT64_MAX

DEFAULT_REPLAY_WINDOW = 64
MAX_REPLAY_WINDOW = 4096


@dataclass(frozen=True, slots=True)
class ReplayWindow:
    """What a device's counters may still be: anything above `high` (the highest counter
    accepted), or a counter in the `size` counters ending at `high` whose bit in `seen` is
    clear. Bit i of `seen` stands for counter `high - i` (bit 0, `high` itself, is always set).
    Counters below the window are refused: nobody remembers whether they came.

    Frames that arrive out of order (QoS 1 redelivery after a broker restart, a CoAP retry
    overtaken by the next frame) are accepted once each; `size = 1` is the strict rule, every
    counter above the last one."""

    high: int
    seen: int
    size: int

    def __post_init__(self) -> None:
        if not 1 <= self.size <= MAX_REPLAY_WINDOW:
            raise ValueError(f"replay window size {self.size} is outside 1..{MAX_REPLAY_WINDOW}")
        if not 0 <= self.high <= UINT64_MAX:
            raise ValueError(f"counter {self.high} is outside uint64")
        if not self.seen & 1 or self.seen >> self.size:
            raise ValueError(f"seen bits {self.seen:#x} do not fit a window of {self.size}")

    @classmethod
    def first(cls, counter: int, size: int) -> ReplayWindow:
        """The window after a device's first accepted counter."""
        return cls(counter, 1, size)

    @classmethod
    def spent_upto(cls, last: int, size: int) -> ReplayWindow:
        """Every counter up to `last` is spent: a bundle's `counter_start - 1`, or a counter
        kept without its window (journals written before windows)."""
        return cls(last, (1 << size) - 1, size)

    @property
    def low(self) -> int:
        """The lowest counter the window still remembers (0 near the start)."""
        return max(0, self.high - self.size + 1)

    def violation(self, counter: int) -> Violation | None:
        """`replay` for a counter accepted before or below the window; None if it may pass."""
        if counter > self.high:
            return None
        back = self.high - counter
        if self.size == 1:
            detail = f"counter {counter} is not above the last accepted {self.high}"
        elif back >= self.size:
            detail = (
                f"counter {counter} is below the replay window (the last accepted is "
                f"{self.high}, the window keeps the last {self.size})"
            )
        elif self.seen >> back & 1:
            detail = f"counter {counter} was accepted before (the last accepted is {self.high})"
        else:
            return None
        return Violation("replay", detail)

    def accept(self, counter: int) -> ReplayWindow:
        """The window with `counter` marked seen. Idempotent and order-free (folding a set of
        counters gives one window whatever the order); a counter below the window changes
        nothing, as the journal folds what the pipeline already checked."""
        if counter > self.high:
            shift = counter - self.high
            seen = (self.seen << shift | 1) & self._mask if shift < self.size else 1
            return ReplayWindow(counter, seen, self.size)
        back = self.high - counter
        if back >= self.size:
            return self
        return ReplayWindow(self.high, self.seen | 1 << back, self.size)

    def resized(self, size: int) -> ReplayWindow:
        """The same memory in a window of another size: a smaller one forgets (its lower
        counters become refused), a larger one counts what it never knew as spent."""
        if size == self.size:
            return self
        if size < self.size:
            return ReplayWindow(self.high, self.seen & ((1 << size) - 1), size)
        unknown = ((1 << size) - 1) ^ self._mask
        return ReplayWindow(self.high, self.seen | unknown, size)

    @property
    def _mask(self) -> int:
        return (1 << self.size) - 1

    # -- stored form (the journal's device_counters.window) ----------------------------------

    def seen_bytes(self) -> bytes:
        """`seen` as little-endian bytes, ceil(size / 8) of them."""
        return self.seen.to_bytes((self.size + 7) // 8, "little")

    @classmethod
    def stored(cls, high: int, size: int | None, seen: bytes | None, want: int) -> ReplayWindow:
        """A window read back from storage, in a window of `want` counters. No size or bits
        (a counter written before windows): everything up to `high` is spent."""
        if size is None or seen is None:
            return cls.spent_upto(high, want)
        return cls(high, int.from_bytes(seen, "little"), size).resized(want)


def replay_violation(window: ReplayWindow | None, counter: int) -> Violation | None:
    """The counter rule: a device never seen may start anywhere."""
    return None if window is None else window.violation(counter)


def after_accepting(window: ReplayWindow | None, counter: int, size: int) -> ReplayWindow:
    """The window once `counter` was accepted (the first one of a device opens it)."""
    return ReplayWindow.first(counter, size) if window is None else window.accept(counter)
