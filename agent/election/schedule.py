"""Round schedule in block heights: when a round starts, when an agent may submit, the cutoff,
and when a round's result is final. Pure arithmetic; no wall-clock time anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.errors import ElectionError


@dataclass(frozen=True)
class RoundSchedule:
    """Round r's boundary block is start + r * length. Its seed (VRF) or definite-hash source
    (paper) is that block's hash. Submissions are taken in blocks (boundary, cutoff], cutoff =
    boundary + window. Agents submit once the boundary block has `confirmations` confirmations,
    and decide once the cutoff block has them: a reorg shallower than that changes nothing."""

    start: int
    length: int
    window: int
    confirmations: int

    def __post_init__(self) -> None:
        if self.start < 0 or self.length < 1:
            raise ElectionError(f"bad schedule: start {self.start}, length {self.length}")
        if not 1 <= self.window <= self.length:
            raise ElectionError(
                f"the submission window ({self.window} blocks) must be 1..round length "
                f"({self.length})"
            )
        if not 1 <= self.confirmations < self.window:
            # At confirmations == window the last submission block would already be the cutoff.
            raise ElectionError(
                f"confirmations ({self.confirmations}) must be at least 1 and below the "
                f"submission window ({self.window} blocks)"
            )

    def boundary(self, round: int) -> int:
        return self.start + round * self.length

    def cutoff(self, round: int) -> int:
        return self.boundary(round) + self.window

    def round_at(self, height: int) -> int | None:
        """The round whose boundary is the last one at or below `height` (None before start)."""
        if height < self.start:
            return None
        return (height - self.start) // self.length

    def may_submit(self, round: int, head: int) -> bool:
        """The boundary block is final and a transaction sent now can still land by the cutoff."""
        return self.boundary(round) + self.confirmations - 1 <= head < self.cutoff(round)

    def is_final(self, round: int, head: int) -> bool:
        """The cutoff block has `confirmations` confirmations: the round can be decided."""
        return head >= self.cutoff(round) + self.confirmations - 1

    def last_final_round(self, head: int) -> int | None:
        """The highest round that is final at `head`, or None."""
        r = self.round_at(head)
        while r is not None and r >= 0:
            if self.is_final(r, head):
                return r
            r -= 1
        return None
