"""One exponential backoff with jitter, used by every reconnect and restart loop in the agent.

    backoff = Backoff(initial=0.5, maximum=30.0)
    while not stopped:
        try:
            await connect()
            backoff.succeeded()          # next failure starts from `initial` again
            ...
        except OSError:
            await backoff.wait()         # sleeps initial, 2x, 4x ... up to maximum, jittered

Jitter is "equal" by default (a delay d sleeps uniformly in [d*(1-jitter), d]) so that a fleet of
gateways that lost the same broker does not reconnect in step; `jitter=1.0` is full jitter.
A run that lasted `reset_after` seconds before failing starts from `initial` again, so a
component that fails once a day is not punished for yesterday's failures.
"""

from __future__ import annotations

import asyncio
import random
import time


class Backoff:
    """Exponential delays with jitter; `wait()` sleeps the next one."""

    def __init__(
        self,
        initial: float = 0.5,
        maximum: float = 30.0,
        *,
        factor: float = 2.0,
        jitter: float = 0.5,
        reset_after: float = 60.0,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 < initial <= maximum:
            raise ValueError("need 0 < initial <= maximum")
        if not 0.0 <= jitter <= 1.0:
            raise ValueError("jitter is a fraction from 0 to 1")
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.jitter = jitter
        self.reset_after = reset_after
        self._rng = rng or random.Random()
        self._delay = initial
        self._since = time.monotonic()
        self.failures = 0

    def succeeded(self) -> None:
        """The operation worked: the next failure waits `initial` again."""
        self._delay = self.initial
        self._since = time.monotonic()
        self.failures = 0

    def next_delay(self) -> float:
        """The (jittered) delay to wait now, and advance the schedule."""
        now = time.monotonic()
        if now - self._since >= self.reset_after:
            self._delay = self.initial
        self._since = now
        d = self._delay
        self._delay = min(self._delay * self.factor, self.maximum)
        self.failures += 1
        return d * (1.0 - self.jitter * self._rng.random())

    @property
    def current(self) -> float:
        """The un-jittered delay the next failure will wait (for log lines)."""
        return self._delay

    async def wait(self) -> float:
        """Sleep the next delay; returns how long it slept."""
        d = self.next_delay()
        await asyncio.sleep(d)
        return d


__all__ = ["Backoff"]
