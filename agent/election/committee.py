"""Posting a decided round's committee on the ElectionBoard (`postCommittee`): the elected nodes
in rank order, each when its turn comes (agent/election/duty.py: committee_post_from) and only
if nobody posted it yet; a node that finds another committee posted disputes it with its own."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from agent.chainclient.sender import TxSender
from agent.election.board import ElectionBoard, committee_hash
from agent.election.duty import committee_post_from
from agent.election.schedule import RoundSchedule
from agent.errors import TransactionError
from agent.logs import event
from agent.metrics import Metrics

COMMITTEE_GAS = 80_000  # postCommittee, plus 30,000 per elected node (its rank slot)


class CommitteePoster:
    """`await post_due(head, round, elected)` on every head for the rounds whose epoch is still to
    come or under way; `done` holds the rounds found posted (or posted by this node)."""

    def __init__(
        self,
        board: ElectionBoard,
        sender: TxSender,
        node: str,
        schedule: RoundSchedule,
        leader_timeout: int,
        is_active: Callable[[], Awaitable[bool]],
        metrics: Metrics,
        log: logging.Logger,
    ) -> None:
        self.board = board
        self.sender = sender
        self.node = node.lower()
        self.schedule = schedule
        self.leader_timeout = leader_timeout
        self.is_active = is_active
        self.metrics = metrics
        self.log = log
        self.done: set[int] = set()

    def turn(self, round: int, elected: tuple[str, ...]) -> int | None:
        """The block from which this node posts `round`'s committee; None: not elected."""
        ranks = [i for i, n in enumerate(elected) if n.lower() == self.node]
        if not ranks:
            return None
        return committee_post_from(
            self.schedule, round, ranks[0], leader_timeout=self.leader_timeout
        )

    async def post_due(self, head: int, round: int, elected: tuple[str, ...]) -> None:
        if round in self.done:
            return
        turn = self.turn(round, elected)
        if turn is None or head < turn:
            return
        posted = await self.board.committee_hash(round)
        mine = committee_hash(elected)
        if posted == mine or (posted != bytes(32) and await self.board.disputed(round)):
            self.done.add(round)
            return
        if not await self.is_active():
            return
        data = self.board.committee_data(round, elected)
        self.done.add(round)
        await self.sender.open()
        if await self.sender.store.find_by_data(self.board.address, data):
            return  # sent before a restart
        try:
            tx_id = await self.sender.send(
                self.board.address, data, gas=COMMITTEE_GAS + 30_000 * len(elected)
            )
        except TransactionError as exc:
            event(self.log, "election_committee_failed", logging.ERROR, round=round, error=str(exc))
            return
        what = "posted" if posted == bytes(32) else "disputed"
        self.metrics.inc("election_committee", action=what)
        event(self.log, "election_committee", round=round, action=what, block=head, tx=tx_id)
