"""The masternode's own oracle reports: every interval, the newest observation of each configured
sensor that the ObservationOracle has not accepted from this gateway yet, in one submitBatch."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eth_abi.abi import decode as abi_decode

from agent.attest.observation import VerifiedObservation, verify_envelope
from agent.chainclient.contractclient import revert_reason
from agent.chainclient.contracts import load_artifact
from agent.chainclient.rpc import hex_int
from agent.chainclient.sender import TxSender
from agent.chainclient.tx import decode_result, encode_call, event_topic
from agent.component import Health
from agent.errors import ChainError, EnvelopeError
from agent.journal import Journal, JournalEntry
from agent.logs import event
from agent.metrics import Metrics
from agent.oracle import submit_batch_calldata


@dataclass(frozen=True)
class SubmitReport:
    tx_hash: str
    sent: int
    accepted: int
    rejected: dict[int, str]  # gateway sequence -> reason
    values_accepted: int


# Upper bounds for one submitBatch: an observation that completes a quorum of a feed's first
# value writes fresh slots (its report, the sequence, the value) and reads every reporter's
# standing: about 250,000 gas at quorum 3 (bench/oracle_gas.py measures the typical cases).
BATCH_GAS_BASE = 100_000
BATCH_GAS_PER_OBSERVATION = 400_000


class OracleSubmitter:
    """Every `interval_s`, submits the newest observation of each configured (device, sensor)
    that the oracle has not accepted from this gateway yet (its replay rule is per gateway and
    feed), all in one submitBatch transaction, grouped by feed."""

    name = "oracle-submit"

    def __init__(
        self,
        journal: Journal,
        sender: TxSender,
        *,
        contract: str,
        sensors: Sequence[tuple[str, str]],
        interval_s: float = 60.0,
        max_batch: int = 20,
        metrics: Metrics | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.journal = journal
        self.ready = asyncio.Event()
        self.failing: str | None = None
        self.sender = sender
        self.rpc = sender.rpc
        self.contract = contract
        self.sensors = tuple(sensors)
        self.interval = interval_s
        self.max_batch = max_batch
        self.metrics = metrics or Metrics()
        self.log = logger or logging.getLogger("agent.masternode.submit")
        self.art = load_artifact("ObservationOracle")
        self._sent_upto: dict[bytes, int] = {}  # feed -> highest sequence sent

    async def last_accepted_sequence(self, feed: bytes) -> int:
        """The last gateway sequence the oracle accepted from this gateway for `feed`."""
        item = self.art.function("lastSequence")
        data = "0x" + encode_call(item, feed, self.sender.key.address).hex()
        out = await self.rpc.call("eth_call", [{"to": self.contract, "data": data}, "latest"])
        raw = bytes.fromhex(str(out)[2:])
        if not raw:
            raise ChainError(
                f"no ObservationOracle at {self.contract} (gateway.verifying_contract)"
            )
        return int(decode_result(item, raw)[0])

    async def _latest_entries(self) -> list[JournalEntry]:
        return await self.journal.latest_each(self.sensors)

    async def pending(self) -> list[VerifiedObservation]:
        """The newest observation of each configured sensor not yet accepted or sent, grouped
        by feed (the contract checks each run of one feed against its policy once)."""
        items: list[VerifiedObservation] = []
        for e in await self._latest_entries():
            try:
                v = verify_envelope(e.envelope)
            except EnvelopeError as exc:
                event(self.log, "oracle_submit_skipped", logging.ERROR, seq=e.seq, error=str(exc))
                continue
            if v.domain.verifying_contract.lower() != self.contract.lower():
                event(
                    self.log,
                    "oracle_submit_skipped",
                    logging.WARNING,
                    seq=e.seq,
                    error="signed under another domain (verifying contract "
                    f"{v.domain.verifying_contract}); the oracle would refuse it",
                )
                continue
            floor = self._sent_upto.get(v.feed, 0)
            if v.gateway_sequence <= floor:
                continue
            if v.gateway_sequence <= await self.last_accepted_sequence(v.feed):
                continue
            items.append(v)
        items.sort(key=lambda v: (v.feed, v.gateway_sequence))
        return items[: self.max_batch]

    async def submit_once(self) -> SubmitReport | None:
        items = await self.pending()
        if not items:
            return None
        # An explicit limit, not the node's estimate: other masternodes' reports landing first
        # can make one of ours the report that completes a quorum (the median and the value
        # are written then), which costs more than the estimate saw. Only gas used is paid.
        gas = BATCH_GAS_BASE + BATCH_GAS_PER_OBSERVATION * len(items)
        tx_id = await self.sender.send(self.contract, submit_batch_calldata(items), gas=gas)
        rc = await self.sender.wait(tx_id)
        report = self._report(rc, items)
        for v in items:
            self._sent_upto[v.feed] = max(self._sent_upto.get(v.feed, 0), v.gateway_sequence)
        self.metrics.inc("oracle_submitted", report.accepted, result="accepted")
        for seq, reason in report.rejected.items():
            self.metrics.inc("oracle_submitted", result="rejected")
            event(self.log, "oracle_observation_rejected", logging.WARNING, seq=seq, reason=reason)
        event(
            self.log,
            "oracle_submitted",
            tx=report.tx_hash,
            sent=report.sent,
            accepted=report.accepted,
            rejected=len(report.rejected),
            values_accepted=report.values_accepted,
            gas=hex_int(rc["gasUsed"]),
        )
        return report

    def _report(self, rc: dict[str, Any], items: list[VerifiedObservation]) -> SubmitReport:
        accepted_t = event_topic(self.art.event("ObservationAccepted"))
        rejected_t = event_topic(self.art.event("ObservationRejected"))
        value_t = event_topic(self.art.event("ValueAccepted"))
        accepted = values = 0
        rejected: dict[int, str] = {}
        for lg in rc.get("logs", []):
            if str(lg.get("address", "")).lower() != self.contract.lower():
                continue
            topic = lg["topics"][0]
            if topic == accepted_t:
                accepted += 1
            elif topic == value_t:
                values += 1
            elif topic == rejected_t:
                seq, reason = abi_decode(["uint64", "bytes"], bytes.fromhex(lg["data"][2:]))
                rejected[int(seq)] = revert_reason(self.art.abi, "0x" + bytes(reason).hex())
        return SubmitReport(str(rc["transactionHash"]), len(items), accepted, rejected, values)

    async def run(self) -> None:
        self.ready.set()
        while True:
            try:
                await self.submit_once()
                self.failing = None
            except ChainError as exc:
                self.failing = str(exc)[:200]
                self.metrics.inc("oracle_submit_failed")
                event(self.log, "oracle_submit_failed", logging.WARNING, error=str(exc)[:200])
            await asyncio.sleep(self.interval)

    async def stop(self, grace: float = 0.5) -> None:
        """Nothing to finish: unsubmitted observations stay in the journal for the next run."""

    def health(self) -> Health:
        return Health("degraded" if self.failing else "up", {"error": self.failing})
