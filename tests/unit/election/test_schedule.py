"""Round schedule in block heights: boundaries, the submission window, finality."""

from __future__ import annotations

import pytest

from agent.election.schedule import RoundSchedule
from agent.errors import ElectionError

S = RoundSchedule(start=100, length=10, window=6, confirmations=3)


def test_boundaries_and_cutoffs() -> None:
    assert [S.boundary(r) for r in range(3)] == [100, 110, 120]
    assert [S.cutoff(r) for r in range(3)] == [106, 116, 126]


def test_round_at_height() -> None:
    assert S.round_at(99) is None
    assert [S.round_at(h) for h in (100, 109, 110, 125)] == [0, 0, 1, 2]


def test_submission_waits_for_a_final_boundary_and_stops_before_the_cutoff() -> None:
    # Boundary 110 has 3 confirmations at head 112; a transaction sent at head 115 lands by 116.
    allowed = [h for h in range(105, 125) if S.may_submit(1, h)]
    assert allowed == [112, 113, 114, 115]


def test_a_round_is_final_once_its_cutoff_has_its_confirmations() -> None:
    assert not S.is_final(1, 117)
    assert S.is_final(1, 118)
    assert S.last_final_round(107) is None
    assert S.last_final_round(108) == 0
    assert S.last_final_round(117) == 0
    assert S.last_final_round(118) == 1


@pytest.mark.parametrize(
    ("start", "length", "window", "confirmations"),
    [(-1, 10, 5, 2), (0, 0, 5, 2), (0, 10, 11, 2), (0, 10, 0, 1), (0, 10, 5, 5), (0, 10, 5, 0)],
)
def test_impossible_schedules_are_refused(
    start: int, length: int, window: int, confirmations: int
) -> None:
    with pytest.raises(ElectionError):
        RoundSchedule(start, length, window, confirmations)
