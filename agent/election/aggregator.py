"""The elected committee's job: in each epoch the nodes elected in the round before aggregate
the oracle's reports. Every gateway publishes its signed observations on the upstream broker
(`<prefix>/<gateway>/obs/<device>/<sensor>`); this component listens there and keeps the newest
verified observation of each (feed, gateway) with the head it arrived at, and the newest one that
arrived in an epoch before that (what a standby covers for). When this node's duty
comes (agent/election/duty.py; enforced on-chain by ElectionBoard.mayReport through
ObservationOracle.setAggregators) it submits, in one submitBatch, what the oracle has not
accepted yet: the epoch's leader from the epoch's first block, once, all it has; the node of
rank i from offset i * leader timeout, and anyone from the fallback timeout, only what arrived
before the epoch (what the nodes before it failed to report), and only if no other node's report
was accepted in the epoch yet: a node whose turn comes after a working leader sends nothing;
what arrives during an epoch after its leader reported is the next epoch leader's. One report
per node per epoch; an observation the oracle refused is not sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho

from agent.attest.observation import VerifiedObservation, verify_envelope
from agent.chainclient.contracts import load_artifact
from agent.chainclient.sender import TxSender
from agent.chainclient.tx import decode_result, encode_call, event_topic
from agent.component import Health
from agent.config.broker import BrokerEndpoint
from agent.election.duty import Epoch, epoch_at
from agent.election.rounds import ElectionRounds
from agent.errors import ChainError, EnvelopeError, RpcError
from agent.logs import event
from agent.metrics import Metrics
from agent.mqtt import MqttConnection
from agent.oracle import submit_batch_calldata

BATCH_GAS_BASE = 100_000
BATCH_GAS_PER_OBSERVATION = 400_000  # as masternode.OracleSubmitter: a quorum write is dear


class CommitteeAggregator:
    """`await run()` until cancelled; `reported` holds the epochs this node reported in."""

    name = "election-aggregate"

    def __init__(
        self,
        rounds: ElectionRounds,
        endpoint: BrokerEndpoint,
        *,
        sender: TxSender,
        oracle: str,
        topic_prefix: str,
        client_id: str,
        check_interval_s: float = 0.5,
        max_batch: int = 50,
        metrics: Metrics | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.rounds = rounds
        self.sender = sender
        self.rpc = sender.rpc
        self.oracle = oracle.lower()
        self.topic = f"{topic_prefix}/+/obs/#"
        self.interval = check_interval_s
        self.max_batch = max_batch
        self.metrics = metrics or Metrics()
        self.log = logger or logging.getLogger("agent.election.aggregate")
        self.art = load_artifact("ObservationOracle")
        self.conn = MqttConnection(endpoint, client_id=client_id, clean_start=True, name=self.name)
        self.conn.client.on_message = self._on_message
        self.conn.on_connected = self._subscribe
        # (feed, gateway) -> the newest observation, and the head it arrived at
        self.newest: dict[tuple[bytes, str], tuple[VerifiedObservation, int]] = {}
        # (feed, gateway) -> the newest one that arrived in an epoch before the newest's
        self.settled: dict[tuple[bytes, str], tuple[VerifiedObservation, int]] = {}
        self.reported: dict[int, str] = {}  # epoch -> transaction hash
        self.covered: set[int] = set()  # epochs where a node before this one had reported
        self.ready = asyncio.Event()
        self.failing: str | None = None

    # -- collecting --------------------------------------------------------------------------
    def _subscribe(self, session_present: bool) -> None:
        self.conn.client.subscribe(self.topic, 1)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        try:
            v = verify_envelope(bytes(msg.payload))
        except EnvelopeError:
            self.metrics.inc("election_aggregate_dropped", reason="bad-envelope")
            return
        if v.domain.verifying_contract.lower() != self.oracle:
            self.metrics.inc("election_aggregate_dropped", reason="other-oracle")
            return
        key = (v.feed, v.signer)
        at = self.rounds.head or 0
        have = self.newest.get(key)
        if have is not None and v.gateway_sequence <= have[0].gateway_sequence:
            return
        if have is not None and self._epoch_first(have[1]) < self._epoch_first(at):
            # The newest one from an earlier epoch: what a standby covers for if its leader
            # fails (a stream of fresh readings in the epoch must not hide it).
            self.settled[key] = have
        self.newest[key] = (v, at)

    def _epoch_first(self, head: int) -> int:
        """The first block of the epoch holding `head` (0 before the first epoch)."""
        sched = self.rounds.schedule
        ep = None if sched is None else epoch_at(sched, head)
        return 0 if ep is None else ep.first

    async def pending(self, ready: Callable[[int], bool]) -> list[VerifiedObservation]:
        """The newest observation of each (feed, gateway) whose arrival head `ready` admits and
        which is above what the oracle accepted from that gateway for that feed, by feed."""
        items = []
        for key, (v, at) in list(self.newest.items()):
            if not ready(at):
                v, at = self.settled.get(key, (v, at))
            if ready(at):
                items.append(v)
        if not items:
            return []
        fn = self.art.function("lastSequence")
        outs = await self.rpc.batch(
            [
                (
                    "eth_call",
                    [
                        {
                            "to": self.oracle,
                            "data": "0x" + encode_call(fn, v.feed, v.signer).hex(),
                        },
                        "latest",
                    ],
                )
                for v in items
            ]
        )
        fresh: list[VerifiedObservation] = []
        for v, out in zip(items, outs, strict=True):
            if isinstance(out, RpcError):
                raise out
            raw = bytes.fromhex(str(out)[2:])
            if not raw:
                raise ChainError(f"no ObservationOracle at {self.oracle}")
            if v.gateway_sequence > int(decode_result(fn, raw)[0]):
                fresh.append(v)
                continue
            self.settled.pop((v.feed, v.signer), None)  # reported, or something newer was
            self._forget(v)
        fresh.sort(key=lambda v: (v.feed, v.signer, v.gateway_sequence))
        return fresh[: self.max_batch]

    # -- reporting ---------------------------------------------------------------------------
    async def report_if_due(self) -> str | None:
        """Submit this epoch's batch if this node's turn has come; the transaction hash."""
        d, head = self.rounds.duty, self.rounds.head
        if d is None or head is None:
            return None
        e = d.epoch
        if e.round in self.reported or e.round in self.covered:
            return None
        if not d.from_block <= head < e.last:
            return None
        if d.rank == 0:
            ready: Callable[[int], bool] = lambda at: True  # noqa: E731
        else:
            # Covering for the nodes before it: what they had from the epoch's start on.
            ready = lambda at: at < e.first  # noqa: E731
        if d.rank is not None and await self.rounds.board.committee_hash(e.round) == bytes(32):
            return None  # the committee is not on the board yet: the oracle would refuse
        if d.rank != 0 and await self.reported_by_others(e):
            # A node before it did its job: nothing to cover in this epoch.
            self.covered.add(e.round)
            event(self.log, "election_aggregate_covered", epoch=e.round, duty=d.kind, rank=d.rank)
            return None
        items = await self.pending(ready)
        if not items:
            return None
        gas = BATCH_GAS_BASE + BATCH_GAS_PER_OBSERVATION * len(items)
        tx_id = await self.sender.send(self.oracle, submit_batch_calldata(items), gas=gas)
        self.reported[e.round] = ""
        rc = await self.sender.wait(tx_id)
        accepted_t = event_topic(self.art.event("ObservationAccepted"))
        taken = {
            (bytes.fromhex(lg["topics"][2][2:]), "0x" + lg["topics"][1][-40:])
            for lg in rc.get("logs", [])
            if str(lg.get("address", "")).lower() == self.oracle and lg["topics"][0] == accepted_t
        }
        accepted = len(taken)
        for v in items:
            if (v.feed, v.signer.lower()) not in taken:
                self._forget(v)  # refused (e.g. its gateway is no active masternode): not again
        tx_hash = str(rc["transactionHash"])
        self.reported[e.round] = tx_hash
        ok = rc.get("status") == "0x1"
        self.metrics.inc("election_aggregated", result="ok" if ok else "refused")
        event(
            self.log,
            "election_aggregated",
            logging.INFO if ok else logging.WARNING,
            epoch=e.round,
            duty=d.kind,
            rank=d.rank,
            block=int(str(rc["blockNumber"]), 16),
            sent=len(items),
            accepted=accepted,
            status="ok" if ok else "reverted",
            tx=tx_hash,
        )
        return tx_hash

    async def reported_by_others(self, e: Epoch) -> bool:
        """Has another node's report been accepted in epoch `e` so far?"""
        topic = event_topic(self.art.event("ObservationAccepted"))
        found = await self.rpc.call(
            "eth_getLogs",
            [{"address": self.oracle, "fromBlock": hex(e.first), "topics": [topic]}],
        )
        me = self.sender.key.address.lower()
        for txh in sorted({str(lg["transactionHash"]) for lg in found}):
            tx = await self.rpc.call("eth_getTransactionByHash", [txh])
            if isinstance(tx, dict) and str(tx.get("from", "")).lower() != me:
                return True
        return False

    def _forget(self, v: VerifiedObservation) -> None:
        key = (v.feed, v.signer)
        for held in (self.newest, self.settled):
            if held.get(key, (None,))[0] is v:
                del held[key]

    async def run(self) -> None:
        conn = asyncio.create_task(self.conn.run())
        self.ready.set()
        try:
            while True:
                try:
                    await self.report_if_due()
                    self.failing = None
                except ChainError as exc:
                    self.failing = str(exc)[:200]
                    self.metrics.inc("election_aggregate_failed")
                    event(
                        self.log, "election_aggregate_failed", logging.WARNING, error=self.failing
                    )
                # Wake on the election's next head (a turn starts at a block), or after
                # `interval` at the latest.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.rounds.stepped.wait(), self.interval)
                self.rounds.stepped.clear()
        finally:
            conn.cancel()
            await asyncio.gather(conn, return_exceptions=True)

    async def stop(self, grace: float = 0.5) -> None:
        await self.conn.stop(grace)

    def health(self) -> Health:
        up = self.conn.connected.is_set()
        return Health(
            "degraded" if self.failing or not up else "up",
            {
                "connected": up,
                "feeds_seen": len({f for f, _ in self.newest}),
                "epochs_reported": len(self.reported),
                "error": self.failing,
            },
        )
