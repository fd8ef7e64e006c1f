"""agent.backoff: the one reconnect/restart schedule (a seeded Random stands in for jitter)."""

from __future__ import annotations

import random

import pytest

from agent.backoff import Backoff


def test_delays_double_up_to_the_maximum_without_jitter() -> None:
    b = Backoff(0.5, 4.0, jitter=0.0)
    assert [b.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert b.failures == 6


def test_success_starts_over() -> None:
    b = Backoff(1.0, 30.0, jitter=0.0)
    b.next_delay()
    b.next_delay()
    b.succeeded()
    assert b.next_delay() == 1.0
    assert b.failures == 1


def test_jitter_stays_within_its_band() -> None:
    b = Backoff(2.0, 2.0, jitter=0.5, rng=random.Random(7))
    delays = [b.next_delay() for _ in range(200)]
    assert all(1.0 <= d <= 2.0 for d in delays)
    assert max(delays) - min(delays) > 0.5  # it does spread


def test_a_long_quiet_spell_resets_the_schedule() -> None:
    b = Backoff(1.0, 30.0, jitter=0.0, reset_after=0.0)
    b.next_delay()
    assert b.next_delay() == 1.0


@pytest.mark.parametrize("args", [(0.0, 1.0), (2.0, 1.0)])
def test_nonsense_bounds_are_refused(args: tuple[float, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(*args)
