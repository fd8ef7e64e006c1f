"""The one rate limiter (agent/ratelimit.py): a token bucket's burst and rate, and the keyed set's
bound. Times are passed explicitly or come from a fake clock: waiting for real time would make
the tests slow and timing-dependent."""

from __future__ import annotations

import pytest

from agent.ratelimit import KeyedBuckets, TokenBucket


class FakeClock:
    """A clock the test moves by hand (a fake: real time cannot be stepped)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_burst_then_its_rate() -> None:
    b = TokenBucket(rate=2.0, burst=4, now=0.0)
    assert [b.take(0.0) for _ in range(4)] == [0.0] * 4
    assert b.take(0.0) == pytest.approx(0.5)  # empty: half a second per token
    assert b.take(0.5) == 0.0  # one token back after 0.5 s
    assert b.take(0.5) == pytest.approx(0.5)


def test_a_refused_take_takes_nothing_and_a_batch_needs_a_token_each() -> None:
    b = TokenBucket(rate=1.0, burst=3, now=0.0)
    assert b.take(0.0, 2) == 0.0
    assert b.take(0.0, 3) == pytest.approx(2.0)  # 1 left, 3 wanted: 2 s away
    assert b.take(0.0, 1) == 0.0  # the refused batch did not spend the last token
    assert b.take(60.0, 3) == 0.0  # refilled, but never past the burst:
    assert b.take(60.0, 1) == pytest.approx(1.0)


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1.0), (1.0, 0.0), (-1.0, 5.0)])
def test_a_bucket_refuses_a_rate_or_burst_that_is_not_positive(rate: float, burst: float) -> None:
    with pytest.raises(ValueError, match="rate > 0 and burst > 0"):
        TokenBucket(rate, burst, 0.0)
    with pytest.raises(ValueError, match="rate > 0 and burst > 0"):
        KeyedBuckets(rate, burst)


def test_keys_have_buckets_of_their_own() -> None:
    clock = FakeClock()
    b = KeyedBuckets(rate=1.0, burst=2, clock=clock)
    assert [b.take("a"), b.take("a")] == [0.0, 0.0]
    assert b.take("a") == pytest.approx(1.0)
    assert b.take("b") == 0.0  # another key is not affected
    clock.now += 1.0
    assert b.take("a") == 0.0  # the fake clock moved: one token back


def test_a_bounded_set_forgets_the_least_recently_used_key() -> None:
    b = KeyedBuckets(rate=1.0, burst=1, max_keys=2)
    b.take("a", now=0.0)
    b.take("b", now=0.0)
    b.take("a", now=0.0)  # refused, but "a" is now the most recently used
    b.take("c", now=0.0)  # one too many: "b" goes
    assert len(b) == 2 and "b" not in b and "a" in b
    assert b.take("a", now=0.0) > 0  # kept, still empty
    assert b.take("b", now=0.0) == 0.0  # forgotten, so a fresh (full) bucket


def test_an_unbounded_set_keeps_every_key_until_told_to_forget() -> None:
    b = KeyedBuckets(rate=1.0, burst=1)
    for i in range(1000):
        b.take(f"dev-{i}", now=0.0)
    assert len(b) == 1000
    b.retain(lambda k: k.endswith("7"))
    assert len(b) == 100 and "dev-7" in b and "dev-8" not in b
    assert b.take("dev-7", now=0.0) > 0  # retained buckets keep their state
    assert b.take("dev-8", now=0.0) == 0.0


def test_max_keys_must_allow_one_key() -> None:
    with pytest.raises(ValueError, match="max_keys"):
        KeyedBuckets(1.0, 1.0, max_keys=0)
