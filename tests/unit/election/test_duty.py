"""The committee's duty in block heights, as the board's mayReport defines it."""

from __future__ import annotations

from agent.election.duty import Epoch, committee_post_from, duty, epoch_at
from agent.election.schedule import RoundSchedule

SCHED = RoundSchedule(100, 8, 5, 2)
A, B, C = "0x" + "aa" * 20, "0x" + "bb" * 20, "0x" + "cc" * 20


def test_epoch_e_is_served_by_round_e_and_spans_the_round_after_it() -> None:
    assert epoch_at(SCHED, 108) is None  # boundary(1): epoch 0 starts after it
    assert epoch_at(SCHED, 109) == Epoch(0, 109, 116)
    assert epoch_at(SCHED, 116) == Epoch(0, 109, 116)
    assert epoch_at(SCHED, 117) == Epoch(1, 117, 124)


def test_leader_first_then_the_next_in_rank_then_anyone() -> None:
    epoch = Epoch(3, 133, 140)
    committee = (A, B)
    lead = duty(epoch, committee, A.upper(), leader_timeout=2, fallback_timeout=6)
    assert (lead.kind, lead.rank, lead.from_block) == ("leader", 0, 133)
    second = duty(epoch, committee, B, leader_timeout=2, fallback_timeout=6)
    assert (second.kind, second.rank, second.from_block) == ("standby", 1, 135)
    other = duty(epoch, committee, C, leader_timeout=2, fallback_timeout=6)
    assert (other.kind, other.rank, other.from_block) == ("fallback", None, 139)
    far = duty(epoch, (C, B, A), A, leader_timeout=4, fallback_timeout=6)
    assert far.from_block == 139  # never later than the fallback
    assert "LEADER" in lead.describe() and "fallback" in other.describe()


def test_the_committee_is_posted_before_its_epoch_leader_first_then_each_rank_later() -> None:
    # Round 3: boundary 124, cutoff 129, final at 130 (2 confirmations); epoch 3 starts at 133.
    posts = [committee_post_from(SCHED, 3, rank, leader_timeout=2) for rank in range(3)]
    assert posts == [130, 132, 134]
    assert posts[0] > SCHED.cutoff(3)  # the board takes it only after the cutoff
    epoch = epoch_at(SCHED, 133)
    assert epoch is not None and epoch.round == 3
    # The leader's and the first standby's posts come before the epoch: a dead leader leaves
    # the committee to the standby in time for the standby's own turn (133 + 2).
    assert posts[0] < epoch.first and posts[1] < epoch.first
    assert posts[1] < duty(epoch, (A, B), B, leader_timeout=2, fallback_timeout=6).from_block
