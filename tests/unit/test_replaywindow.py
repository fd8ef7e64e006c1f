"""The device-counter replay window (agent/replaywindow.py): which counters pass once, which are
replays, at the window's edges, near 0 and at 2^64-1, and its stored form."""

from __future__ import annotations

import itertools
import random

import pytest

from agent.model import UINT64_MAX
from agent.replaywindow import (
    MAX_REPLAY_WINDOW,
    ReplayWindow,
    after_accepting,
    replay_violation,
)


def accepted(window: ReplayWindow | None, counters: list[int], size: int) -> list[int]:
    """Offer counters in order as the pipeline does; returns those that passed."""
    passed = []
    for c in counters:
        if replay_violation(window, c) is None:
            passed.append(c)
            window = after_accepting(window, c, size)
    return passed


def test_a_device_never_seen_may_start_anywhere() -> None:
    assert replay_violation(None, 0) is None
    assert replay_violation(None, UINT64_MAX) is None


def test_each_counter_inside_the_window_passes_once_in_any_order() -> None:
    assert accepted(None, [10, 8, 9, 8, 10, 7, 11, 9], size=4) == [10, 8, 9, 7, 11]


def test_the_window_edge_is_size_counters_ending_at_the_highest() -> None:
    w = ReplayWindow.first(100, 64)
    assert w.low == 37
    assert w.violation(37) is None  # the lowest the window keeps: 100 - 63
    below = w.violation(36)
    assert below is not None and below.reason == "replay"
    assert "below the replay window" in below.detail and "last accepted is 100" in below.detail
    seen = w.violation(100)
    assert seen is not None and "accepted before" in seen.detail


def test_a_jump_of_the_window_size_or_more_forgets_everything_below() -> None:
    w = ReplayWindow.first(10, 8).accept(9)
    near = w.accept(17)  # keeps 10..17: 10 still remembered as seen, 9 below the window
    assert near.violation(10) is not None and near.violation(11) is None
    assert near.violation(9) is not None and "below" in str(near.violation(9))
    far = w.accept(18)
    assert far.seen == 1 and far.violation(10) is not None and far.violation(11) is None


def test_near_zero_the_window_does_not_reach_below_it() -> None:
    w = ReplayWindow.first(3, 64)
    assert w.low == 0
    assert accepted(w, [0, 1, 2, 3, 0], size=64) == [0, 1, 2]


def test_the_highest_uint64_counter_is_accepted_once_and_the_window_below_it_still_works() -> None:
    top = UINT64_MAX
    assert accepted(None, [top, top, top - 1, top - 64, top - 63, top - 1], size=64) == [
        top,
        top - 1,
        top - 63,
    ]
    w = after_accepting(after_accepting(None, top - 1, 64), top, 64)
    assert w.high == top and w.seen == 0b11
    with pytest.raises(ValueError, match="outside uint64"):
        ReplayWindow(top + 1, 1, 64)


def test_size_one_is_the_strict_rule_with_its_old_message() -> None:
    w = ReplayWindow.first(49, 1)
    v = w.violation(42)
    assert v is not None and v.detail == "counter 42 is not above the last accepted 49"
    assert w.violation(49) is not None and w.violation(50) is None


def test_folding_is_order_free_so_the_journal_and_the_pipeline_agree() -> None:
    rng = random.Random(7)
    for _ in range(200):
        counters = rng.sample(range(0, 300), 12)
        results = set()
        for order in itertools.islice(itertools.permutations(counters), 6):
            w: ReplayWindow | None = None
            for c in order:
                w = after_accepting(w, c, 16)
            results.add(w)
        assert len(results) == 1


def test_spent_upto_refuses_everything_at_or_below() -> None:
    w = ReplayWindow.spent_upto(20, 64)
    assert all(w.violation(c) is not None for c in range(0, 21))
    assert w.violation(21) is None


def test_the_stored_form_round_trips_and_a_missing_one_means_all_spent() -> None:
    w = ReplayWindow.first(1000, 64).accept(990).accept(1003)
    back = ReplayWindow.stored(w.high, w.size, w.seen_bytes(), 64)
    assert back == w
    assert len(ReplayWindow.first(5, 12).seen_bytes()) == 2
    assert ReplayWindow.stored(1003, None, None, 64) == ReplayWindow.spent_upto(1003, 64)


def test_growing_the_window_counts_what_it_never_knew_as_spent_and_shrinking_forgets() -> None:
    w = ReplayWindow.first(100, 4).accept(98)  # knows 97..100: 99 and 97 unseen
    grown = w.resized(8)
    assert grown.violation(99) is None and grown.violation(97) is None
    assert all(grown.violation(c) is not None for c in (96, 95, 94, 93))  # never known
    shrunk = w.resized(2)
    assert shrunk.violation(99) is None and shrunk.violation(98) is not None


@pytest.mark.parametrize(
    ("high", "seen", "size"),
    [(5, 0, 4), (5, 0b10000, 4), (5, 1, 0), (5, 1, MAX_REPLAY_WINDOW + 1)],
)
def test_an_inconsistent_window_cannot_be_built(high: int, seen: int, size: int) -> None:
    with pytest.raises(ValueError):
        ReplayWindow(high, seen, size)
