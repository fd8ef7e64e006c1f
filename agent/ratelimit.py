"""The one rate limiter: a token bucket, and a bounded set of them keyed by client or device.

Used per device by the enrollment gate (devices/gate.py) and per dApp client by forwarding
(chainclient/forward.py) and the oracle (oracle/service.py). Pure arithmetic on a clock the
caller may inject; no I/O, no asyncio.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """`rate` tokens per second on average, bursts up to `burst`; starts full."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("a token bucket needs rate > 0 and burst > 0")
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float, n: float = 1.0) -> float:
        """0.0 when `n` tokens were taken; otherwise none are, and the result is the seconds
        until `n` would be there."""
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens >= n:
            self.tokens = tokens - n
            return 0.0
        self.tokens = tokens
        return (n - tokens) / self.rate


class KeyedBuckets:
    """One TokenBucket per key, created full on first use. With `max_keys`, the least recently
    used bucket is forgotten when one more is needed (a forgotten key starts full again), so a
    flood of new keys costs bounded memory."""

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        max_keys: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_keys is not None and max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        TokenBucket(rate, burst, 0.0)  # the same checks, once, here
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self.clock = clock
        self._buckets: dict[str, TokenBucket] = {}  # in order of last use when bounded

    def take(self, key: str, n: float = 1.0, now: float | None = None) -> float:
        """0.0 when `key` had `n` tokens (taken); otherwise the seconds until it would."""
        if now is None:
            now = self.clock()
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            bucket = buckets[key] = TokenBucket(self.rate, self.burst, now)
            if self.max_keys is not None and len(buckets) > self.max_keys:
                del buckets[next(iter(buckets))]
        elif self.max_keys is not None:
            buckets[key] = buckets.pop(key)  # most recently used goes last
        return bucket.take(now, n)

    def retain(self, keep: Callable[[str], bool]) -> None:
        """Forget the buckets of keys for which `keep` is false (devices that left)."""
        for key in [k for k in self._buckets if not keep(k)]:
            del self._buckets[key]

    def __contains__(self, key: object) -> bool:
        return key in self._buckets

    def __len__(self) -> int:
        return len(self._buckets)


__all__ = ["KeyedBuckets", "TokenBucket"]
