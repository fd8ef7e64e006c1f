"""The agent's election round loop: candidates are the MasternodeRegistry's active masternodes
(the node registers there, with collateral: `edgence-agent masternode register`). At every
round's boundary (once final) an active node computes the definite hash or its VRF alpha over
the round's chained seed, signs or proves, submits; after the cutoff (once final) every agent
reads the round's submissions and the registry's events, decides the round, keeps the result
in sqlite and publishes it retained on MQTT `<prefix>/election/<round>`.

Restarts: decided rounds and the next round to decide are in the store; the agent's own
submission is deterministic (RFC 6979 signature, ECVRF proof) so it is recognised in the
transaction store by its call data and never sent twice. Reorgs: nothing is read before the
block it depends on has `confirmations` confirmations, and a decision is dropped and retried if
the cutoff block's hash changed while it was being read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from agent.attest import ecvrf
from agent.attest.keys import GatewayKey
from agent.attest.selection import selection_digest
from agent.attest.vrfkey import vrf_secret
from agent.chainclient.rpc import RpcClient, hex_int
from agent.chainclient.sender import TxSender
from agent.chainclient.subscribe import Feed, Head
from agent.component import Detail, Health
from agent.config import ElectionConfig
from agent.election.board import ElectionBoard, RegistryLogs
from agent.election.committee import CommitteePoster
from agent.election.decide import ChainMoved, RoundDecider
from agent.election.duty import Duty, duty, epoch_at
from agent.election.membership import OwnStanding
from agent.election.publish import ResultPublisher
from agent.election.schedule import RoundSchedule
from agent.election.store import ElectionStore
from agent.election.tally import RoundResult, chain_id_bytes
from agent.election.vrf_mode import vrf_alpha
from agent.errors import ElectionError, NodeUnreachable, RpcError, RpcTimeout, TransactionError
from agent.logs import event
from agent.metrics import Metrics

# A round whose reads keep failing is given up once its cutoff is this many blocks old.
STATE_HORIZON = 128
SUBMIT_GAS = 300_000  # generous: the round's first submission also fixes the definite hash


class ElectionRounds:
    """`await rounds.run()` until cancelled; `results` holds the rounds decided in this run.

    `ready` is set when run() starts (a node that is down does not hold up the agent);
    `registered` once the schedule is checked and the board's registry found (the node itself
    need not be a masternode: it then decides and publishes the rounds without standing)."""

    name = "election"

    def __init__(
        self,
        cfg: ElectionConfig,
        *,
        rpc: RpcClient,
        sender: TxSender,
        key: GatewayKey,
        chain_id: int,
        publisher: ResultPublisher,
        heads: Feed[Head] | None = None,
        poll_interval_s: float = 1.0,
        store_path: Path | None = None,
        metrics: Metrics | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.cfg = cfg
        self.rpc = rpc
        self.sender = sender
        self.key = key
        self.node = key.address
        self.chain_id = chain_id
        self.publisher = publisher
        self.heads = heads
        self.poll_interval = poll_interval_s
        self.board = ElectionBoard(rpc, cfg.board)
        self.store = ElectionStore(store_path or cfg.store or Path("election.sqlite"))
        self.metrics = metrics or Metrics()
        self.log = logger or logging.getLogger("agent.election")
        self.vrf_secret = vrf_secret(key)
        self.vrf_public = ecvrf.public_key_of(self.vrf_secret)
        self.schedule: RoundSchedule | None = None
        self.results: dict[int, RoundResult] = {}
        self.submitted: set[int] = set()
        self.ready = asyncio.Event()
        self.registered = asyncio.Event()  # schedule checked, registry found
        self.stepped = asyncio.Event()  # set after each head's step (the aggregator clears it)
        self.registry: RegistryLogs | None = None
        self.own: OwnStanding | None = None  # this node in the registry, once it is found
        self.poster: CommitteePoster | None = None  # with election.committee, once set up
        self.timeouts: tuple[int, int] | None = None  # (leader, fallback), from the board
        self.duty: Duty | None = None  # this node's duty in the current epoch
        self.head: int | None = None  # the latest head a step ran at
        self._node_down: str | None = None
        self.decider: RoundDecider | None = None  # once the registry is found
        self._followers: set[asyncio.Task[None]] = set()
        self._was_connected = False
        self._topic_prefix = f"{cfg.topic_prefix}/election"
        self.metrics.fact("election_role", lambda: self.role)

    @property
    def role(self) -> str | None:
        """This node's role: None until it is registered on the board; then "candidate", or,
        once a round is decided in this run, "elected" or "excluded" as that latest round says."""
        if not self.results:
            return "candidate" if self.ready.is_set() else None
        latest = self.results[max(self.results)]
        if self.node in latest.elected:
            return "elected"
        if any(node == self.node for node, _ in latest.excluded):
            return "excluded"
        return "candidate"

    # -- lifecycle -----------------------------------------------------------------------------
    async def run(self) -> None:
        await self.store.open(self.board.address, self.cfg.mode)
        self.ready.set()
        try:
            await self._setup()
            self.registered.set()
            while True:
                try:
                    await self.step(await self._next_head())
                    self._node_down = None
                except (NodeUnreachable, RpcTimeout) as exc:
                    self._node_down = str(exc)[:160]
                    event(self.log, "election_node_down", logging.WARNING, error=str(exc)[:160])
        finally:
            self.registered.clear()
            for task in list(self._followers):
                task.cancel()
            await asyncio.gather(*self._followers, return_exceptions=True)
            await self.store.close()
            if self.decider is not None:
                self.decider.close()

    async def stop(self, grace: float = 0.5) -> None:
        """Nothing to finish: a round under way is decided again from the chain after a
        restart (its task is cancelled after every component stopped)."""

    def health(self) -> Health:
        latest = max(self.results) if self.results else None
        detail: dict[str, Detail] = {
            "mode": self.cfg.mode,
            "registered": self.registered.is_set(),
            "rounds_decided": len(self.results),
            "latest_round": latest,
            "error": self._node_down,
        }
        if self._node_down:
            return Health("down", detail)
        return Health("up" if self.registered.is_set() else "starting", detail)

    async def _next_head(self) -> int:
        if self.heads is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.heads.get(), self.poll_interval)
            while self.heads.qsize():
                self.heads.get_nowait()
        else:
            await asyncio.sleep(self.poll_interval)
        return hex_int(await self.rpc.call("eth_blockNumber"))

    async def _setup(self) -> None:
        while True:
            try:
                mode, start, length, window = await self.board.schedule()
                break
            except (NodeUnreachable, RpcTimeout) as exc:
                event(self.log, "election_node_down", logging.WARNING, error=str(exc)[:160])
                await asyncio.sleep(self.poll_interval)
        c = self.cfg
        for key, have, want in (
            ("mode", mode, c.mode),
            ("round_length", length, c.round_length),
            ("cutoff", window, c.cutoff),
        ):
            if have != want:
                raise ElectionError(
                    f"election.{key} is {want!r} but the board at {self.board.address} was "
                    f"deployed with {have!r}: make them agree"
                )
        self.schedule = RoundSchedule(start, length, window, c.confirmations)
        self.timeouts = await self.board.timeouts()
        await self._register()
        if c.committee:
            assert self.own is not None
            self.poster = CommitteePoster(
                self.board,
                self.sender,
                self.node,
                self.schedule,
                self.timeouts[0],
                self.own.check,
                self.metrics,
                self.log,
            )
        event(
            self.log,
            "election_ready",
            board=self.board.address,
            mode=c.mode,
            node=self.node,
            start=start,
            round_length=length,
            cutoff=window,
            confirmations=c.confirmations,
            k=c.k,
        )

    async def _register(self) -> None:
        """Find the board's registry and say how this node stands in it (registering, with
        collateral, is the operator's `masternode register`; nothing is sent here)."""
        address = await self.board.registry()
        self.registry = RegistryLogs(self.rpc, address)
        await self.registry.heartbeat_window()
        self.own = OwnStanding(self.rpc, self.registry, self.node, self.vrf_public, self.log)
        await self.own.check()
        assert self.schedule is not None
        self.decider = RoundDecider(
            self.cfg,
            self.rpc,
            self.board,
            self.registry,
            self.schedule,
            self.chain_id,
            self._result_of,
            self.metrics,
            self.log,
        )

    # -- one head ------------------------------------------------------------------------------
    async def step(self, head: int) -> None:
        sched, decider = self.schedule, self.decider
        assert sched is not None and decider is not None
        self.head = head
        current = sched.round_at(head)
        last = sched.last_final_round(head)
        if last is not None:
            nxt = await self.store.next_round()
            if nxt is None:
                # First start on this board: decide from the current round on (vrf: from round
                # 0, every round's seed chains through the one before).
                nxt = current if current is not None and self.cfg.mode == "paper" else 0
                await self.store.set_next_round(nxt)
            if self.cfg.mode == "paper" and last - nxt >= self.cfg.catch_up_rounds:
                skip_to = last - self.cfg.catch_up_rounds + 1
                event(
                    self.log,
                    "election_rounds_skipped",
                    logging.WARNING,
                    first=nxt,
                    last=skip_to - 1,
                    why="more than election.catch_up_rounds behind",
                )
                nxt = skip_to
                await self.store.set_next_round(nxt)
            for q in range(nxt, last + 1):
                try:
                    result = await decider.decide(q)
                except ChainMoved:
                    break
                except RpcError as exc:
                    # The node refuses a read (e.g. logs that far back): retry while the round
                    # is recent, give it up once it is not.
                    self.metrics.inc("election_decide_failed")
                    # (vrf mode never skips: the next seed needs this round's leader)
                    gone = self.cfg.mode == "paper" and head - sched.cutoff(q) > STATE_HORIZON
                    event(
                        self.log,
                        "election_decide_failed",
                        logging.ERROR,
                        round=q,
                        error=str(exc)[:160],
                        action="skipped" if gone else "retry",
                    )
                    if not gone:
                        break
                    await self.store.set_next_round(q + 1)
                    continue
                await self.store.save(result)
                self.results[q] = result
                self._report(result)
        if (
            current is not None
            and current not in self.submitted
            and sched.may_submit(current, head)
        ):
            # After deciding: in vrf mode the round's seed is the previous round's result.
            await self._submit(current)
        await self._committee_duty(head)
        self.stepped.set()
        await self._publish_pending()

    async def _submit(self, round: int) -> None:
        assert self.schedule is not None and self.decider is not None
        chain32 = chain_id_bytes(self.chain_id)
        if self.cfg.mode == "paper":
            definite = await self.decider.definite_hash(round)
            signature = self.key.sign_digest(selection_digest(chain32, round, definite))[:64]
            data = self.board.selection_data(round, definite, signature)
        else:
            seed = await self.decider.seed_of(round)
            if seed is None:
                return  # the previous round is not decided yet: on a later head
            alpha = vrf_alpha(chain32, round, seed, bytes.fromhex(self.node[2:]))
            data = self.board.proof_data(round, ecvrf.prove(self.vrf_secret, alpha))
        await self.sender.open()
        known = await self.sender.store.find_by_data(self.board.address, data)
        if known:
            self.submitted.add(round)  # sent before a restart: follow it again
            self._follow(round, known[-1])
            return
        assert self.own is not None
        if not await self.own.check():
            # The board would refuse it (NotActive); the round is decided all the same.
            self.submitted.add(round)
            self.metrics.inc("election_not_standing")
            event(self.log, "election_not_standing", round=round, standing=self.own.standing)
            return
        if await self.board.submission_count(round, self.node) > 0:
            # Not in our store but on the chain: the same key submits elsewhere. A second
            # submission would disqualify this node, so never add one.
            self.submitted.add(round)
            event(self.log, "election_submission_exists", logging.WARNING, round=round)
            return
        try:
            tx_id = await self.sender.send(self.board.address, data, gas=SUBMIT_GAS)
        except TransactionError as exc:
            self.metrics.inc("election_submit_failed")
            event(self.log, "election_submit_failed", logging.ERROR, round=round, error=str(exc))
            self.submitted.add(round)
            return
        self.submitted.add(round)
        self.metrics.inc("election_submitted")
        event(self.log, "election_submitted", round=round, mode=self.cfg.mode, tx=tx_id)
        self._follow(round, tx_id)

    async def _result_of(self, round: int) -> RoundResult | None:
        res = self.results.get(round)
        if res is None:
            found = await self.store.result(round)
            res = found[0] if found else None
        return res

    async def _committee_duty(self, head: int) -> None:
        """This node's duty in the epoch at `head` (kept in the store for `election status`),
        and the committees this node posts: the current epoch's and, once its round is
        decided, the next one's (before that epoch starts)."""
        assert self.schedule is not None and self.timeouts is not None
        ep = epoch_at(self.schedule, head)
        latest = max(self.results) if self.results else None
        if self.poster is not None:
            for q in sorted(
                {q for q in (None if ep is None else ep.round, latest) if q is not None}
            ):
                res = await self._result_of(q)
                if res is not None:
                    await self.poster.post_due(head, q, res.elected)
        if ep is None:
            return
        res = await self._result_of(ep.round)
        if res is None:
            self.duty = None
            await self.store.set_meta(
                "duty", f"epoch {ep.round}: its committee (round {ep.round}) is not decided yet"
            )
            return
        lead, fallback = self.timeouts
        d = duty(ep, res.elected, self.node, leader_timeout=lead, fallback_timeout=fallback)
        if d != self.duty:
            self.duty = d
            await self.store.set_meta("duty", f"{d.describe()} (node {self.node})")
            event(
                self.log,
                "election_duty",
                epoch=ep.round,
                kind=d.kind,
                rank=d.rank,
                from_block=d.from_block,
                last_block=ep.last,
            )

    def _follow(self, round: int, tx_id: int) -> None:
        """Wait for the submission's confirmations in the background: waiting is what notices a
        reorg that dropped it, and has the sender send it again (same nonce, same data)."""
        task = asyncio.create_task(self._confirm(round, tx_id))
        self._followers.add(task)
        task.add_done_callback(self._followers.discard)

    async def _confirm(self, round: int, tx_id: int) -> None:
        assert self.schedule is not None
        try:
            receipt = await self.sender.wait(tx_id, confirmations=self.cfg.confirmations)
        except TransactionError as exc:
            self.metrics.inc("election_submit_failed")
            event(
                self.log, "election_submission_failed", logging.ERROR, round=round, error=str(exc)
            )
            return
        block = hex_int(receipt["blockNumber"])
        level = logging.INFO if block <= self.schedule.cutoff(round) else logging.WARNING
        event(self.log, "election_submission_confirmed", level, round=round, block=block)

    # -- results -------------------------------------------------------------------------------
    def topic(self, round: int) -> str:
        return f"{self._topic_prefix}/{round}"

    def _report(self, r: RoundResult) -> None:
        self.metrics.inc("election_rounds_decided")
        for _node, reason in r.excluded:
            self.metrics.inc("election_excluded", reason=reason)
        event(
            self.log,
            "election_decided",
            round=r.round,
            mode=r.mode,
            candidates=len(r.scores),
            excluded=len(r.excluded),
            elected=",".join(r.elected) or "none",
        )

    async def _publish_pending(self) -> None:
        connected = self.publisher.is_connected()
        if connected and not self._was_connected:
            # (Re)connected: publish again what is retained, in case the broker lost it.
            for res, _published in reversed(await self.store.latest(1)):
                self.publisher.publish(self.topic(res.round), res.to_json())
        self._was_connected = connected
        if not connected:
            return
        for res in await self.store.unpublished():
            if self.publisher.publish(self.topic(res.round), res.to_json()):
                await self.store.mark_published(res.round)
            else:
                self.metrics.inc("election_publish_failed")
                break
