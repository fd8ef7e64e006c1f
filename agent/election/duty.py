"""The elected committee's job, as the board's `mayReport` defines it: the nodes elected in
round e are the oracle's aggregators in epoch e, blocks (boundary(e+1), boundary(e+2)]. There
the node of rank i (0 = leader) reports from offset i * leader_timeout if nobody before it did,
and any active masternode from offset fallback_timeout (liveness). Pure: block arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.election.schedule import RoundSchedule


@dataclass(frozen=True)
class Epoch:
    round: int  # the round whose committee serves it
    first: int  # its first block
    last: int  # its last block


def epoch_at(sched: RoundSchedule, block: int) -> Epoch | None:
    """The epoch holding `block`, None before the first one (the board's `epochAt`)."""
    first = sched.start + sched.length
    if block <= first:
        return None
    e = (block - first - 1) // sched.length
    start = first + 1 + e * sched.length
    return Epoch(e, start, start + sched.length - 1)


@dataclass(frozen=True)
class Duty:
    """A node's duty in one epoch: `rank` in the committee (None: not elected), the block from
    which it may report (`from_block`), and `kind`: leader, standby, fallback."""

    epoch: Epoch
    rank: int | None
    from_block: int
    kind: str

    def describe(self) -> str:
        e = self.epoch
        where = f"epoch {e.round} (blocks {e.first}..{e.last})"
        if self.kind == "leader":
            return f"{where}: LEADER, aggregates and reports from block {self.from_block}"
        if self.kind == "standby":
            return (
                f"{where}: elected #{(self.rank or 0) + 1}, reports from block {self.from_block} "
                "if the nodes before it have not"
            )
        return f"{where}: not elected, may report from block {self.from_block} (fallback)"


def duty(
    epoch: Epoch,
    elected: tuple[str, ...],
    node: str,
    *,
    leader_timeout: int,
    fallback_timeout: int,
) -> Duty:
    """`node`'s duty in `epoch`, whose committee is `elected` (best first)."""
    node = node.lower()
    ranks = [i for i, n in enumerate(elected) if n.lower() == node]
    fallback = epoch.first + fallback_timeout
    if not ranks:
        return Duty(epoch, None, fallback, "fallback")
    rank = ranks[0]
    start = epoch.first + min(rank * leader_timeout, fallback_timeout)
    return Duty(epoch, rank, start, "leader" if rank == 0 else "standby")


def committee_post_from(sched: RoundSchedule, round: int, rank: int, *, leader_timeout: int) -> int:
    """The block from which the elected node of `rank` posts round `round`'s committee on the
    board if nobody did: the leader as soon as the round is final (the board takes it once the
    cutoff has passed, and the epoch it serves starts length - window blocks later), each next
    rank `leader_timeout` blocks after the one before. Posted before the epoch, the committee is
    on the board when the epoch starts, so a dead leader costs its standby nothing but its
    turn: until the committee is posted the board lets no one report before the fallback."""
    return sched.cutoff(round) + sched.confirmations - 1 + rank * leader_timeout
