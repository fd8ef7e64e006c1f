"""The masternode's side of the contracts: registration in the MasternodeRegistry (collateral,
VRF public key), heartbeats, withdrawal, and periodic batched submission of the latest
observations of configured sensors to the ObservationOracle. All through the chain client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eth_abi.abi import decode as abi_decode

from agent.attest.eip712 import keccak256
from agent.attest.observation import VerifiedObservation, verify_envelope
from agent.chainclient.contracts import Artifact, load_artifact
from agent.chainclient.rpc import RpcClient, hex_int
from agent.chainclient.sender import TxSender
from agent.chainclient.tx import decode_result, encode_call, event_topic
from agent.component import Health
from agent.errors import ChainError, EnvelopeError, RpcError, TransactionError
from agent.journal import Journal, JournalEntry
from agent.logs import event
from agent.metrics import Metrics
from agent.oracle import submit_batch_calldata

_ERROR_STRING = keccak256(b"Error(string)")[:4]


def _abi_type(p: dict[str, Any]) -> str:
    t = str(p["type"])
    if t.startswith("tuple"):
        return "(" + ",".join(_abi_type(c) for c in p["components"]) + ")" + t[5:]
    return t


def _show(v: Any) -> str:
    if isinstance(v, bytes):
        return "0x" + v.hex()
    return str(v)


def revert_reason(abi: Sequence[dict[str, Any]], data: Any) -> str:
    """A contract's revert data as text: `Replayed(0xab.., 7, 9)` for a custom error of `abi`,
    the message of a require(), or the raw hex when it is neither."""
    if not isinstance(data, str) or not data.startswith("0x") or len(data) < 10:
        return "reverted without a reason"
    raw = bytes.fromhex(data[2:])
    sel, body = raw[:4], raw[4:]
    try:
        if sel == _ERROR_STRING:
            return str(abi_decode(["string"], body)[0])
        for item in abi:
            if item.get("type") != "error":
                continue
            types = [_abi_type(p) for p in item.get("inputs", [])]
            if keccak256(f"{item['name']}({','.join(types)})".encode())[:4] == sel:
                args = abi_decode(types, body)
                return f"{item['name']}({', '.join(_show(a) for a in args)})"
    except Exception:  # undecodable data from a foreign contract: show it as it is
        return data
    return data


def _reason_of_rpc(exc: RpcError, abi: Sequence[dict[str, Any]]) -> str:
    return revert_reason(abi, exc.data) if exc.data else exc.message


def _reason_of(exc: BaseException, abi: Sequence[dict[str, Any]]) -> str:
    cause = exc.__cause__
    if isinstance(cause, RpcError):
        return revert_reason(abi, cause.data) if cause.data else cause.message
    return str(exc)


@dataclass(frozen=True)
class MasternodeStatus:
    address: str
    registry: str
    registered: bool
    active: bool
    vrf_public_key: bytes
    locked: int  # wei
    registered_at: int  # block
    last_heartbeat: int  # block
    block: int
    heartbeat_window: int  # blocks
    required_collateral: int  # wei
    standing: ServiceStandingInfo | None = None  # None: no ServiceStanding attached

    @property
    def in_service(self) -> bool | None:
        return None if self.standing is None else not self.standing.out

    def describe(self) -> list[str]:
        state = "active" if self.active else "inactive" if self.registered else "not registered"
        lines = [
            f"masternode    {self.address}",
            f"registry      {self.registry}",
            f"state         {state}",
            f"collateral    {self.required_collateral} wei required, {self.locked} wei locked",
        ]
        if self.registered:
            due = self.last_heartbeat + self.heartbeat_window
            lines += [
                f"vrf key       0x{self.vrf_public_key.hex()}",
                f"registered    block {self.registered_at}",
                f"heartbeat     block {self.last_heartbeat} (head {self.block}; "
                f"inactive after block {due})",
            ]
        if self.standing is not None:
            lines.append(f"service       {self.standing.describe()}")
        return lines


@dataclass(frozen=True)
class ServiceStandingInfo:
    """A masternode's proof-of-service standing in the ServiceStanding contract."""

    contract: str
    out: bool  # out of service: failed `fail_epochs` epochs in a row, not passed since
    streak: int  # failed epochs in a row
    last_failed: int  # epoch
    fail_epochs: int  # K
    epoch: int  # the current epoch

    def describe(self) -> str:
        state = "OUT OF SERVICE" if self.out else "in service"
        row = f"{self.streak} failed epoch(s) in a row (out at {self.fail_epochs})"
        last = f", last failed epoch {self.last_failed}" if self.streak else ""
        return f"{state}: {row}{last}; epoch {self.epoch} (standing {self.contract})"


class ContractClient:
    """Calls and transactions to one deployed contract with the gateway key (via TxSender)."""

    def __init__(self, rpc: RpcClient, sender: TxSender, address: str, artifact: Artifact) -> None:
        self.rpc = rpc
        self.sender = sender
        self.address = address
        self.art = artifact

    async def call(self, fn: str, *args: Any) -> tuple[Any, ...]:
        item = self.art.function(fn)
        data = "0x" + encode_call(item, *args).hex()
        try:
            out = await self.rpc.call("eth_call", [{"to": self.address, "data": data}, "latest"])
        except RpcError as exc:
            raise ChainError(f"{self.art.name}.{fn}: {_reason_of_rpc(exc, self.art.abi)}") from exc
        raw = bytes.fromhex(str(out)[2:])
        if not raw and item.get("outputs"):
            raise ChainError(
                f"no {self.art.name} at {self.address} (the call returned nothing): "
                "check the contract address in [masternode] and chain.rpc_url"
            )
        return decode_result(item, raw)

    async def transact(self, fn: str, *args: Any, value: int = 0) -> dict[str, Any]:
        """Send one call and wait for its receipt; a revert raises TransactionError with the
        contract's reason (e.g. `AlreadyRegistered(0x..)`)."""
        data = encode_call(self.art.function(fn), *args)
        try:
            tx_id = await self.sender.send(self.address, data, value=value)
        except TransactionError as exc:
            raise TransactionError(f"{fn}: {_reason_of(exc, self.art.abi)}") from exc
        return await self.sender.wait(tx_id)


class RegistryClient(ContractClient):
    """The MasternodeRegistry: status, register, heartbeat, withdraw."""

    def __init__(
        self, rpc: RpcClient, sender: TxSender, registry: str, artifact: Artifact | None = None
    ) -> None:
        super().__init__(rpc, sender, registry, artifact or load_artifact("MasternodeRegistry"))
        self.registry = registry

    async def status(self, address: str | None = None) -> MasternodeStatus:
        who = address or self.sender.key.address
        registered, active, vrf, locked, at, last = await self.call("info", who)
        (window,) = await self.call("heartbeatWindow")
        (required,) = await self.call("collateral")
        head = hex_int(await self.rpc.call("eth_blockNumber"))
        standing = await self.standing(who)
        return MasternodeStatus(
            who,
            self.registry,
            registered,
            active,
            bytes(vrf),
            locked,
            at,
            last,
            head,
            window,
            required,
            standing,
        )

    async def standing(self, address: str) -> ServiceStandingInfo | None:
        """The masternode's service standing, when the registry has a ServiceStanding."""
        (contract,) = await self.call("serviceStanding")
        if int(contract, 16) == 0:
            return None
        st = ContractClient(self.rpc, self.sender, contract, load_artifact("ServiceStanding"))
        out, streak, last_failed = await st.call("standing", address)
        (k,) = await st.call("failEpochs")
        (epoch,) = await st.call("currentEpoch")
        return ServiceStandingInfo(contract, out, streak, last_failed, k, epoch)

    async def register(self, vrf_public_key: bytes) -> dict[str, Any]:
        if len(vrf_public_key) != 33 or vrf_public_key[0] not in (2, 3):
            raise ChainError(
                "the VRF public key must be a 33-byte compressed secp256k1 point (0x02/0x03...)"
            )
        (required,) = await self.call("collateral")
        return await self.transact("register", vrf_public_key, value=required)

    async def heartbeat(self) -> dict[str, Any]:
        return await self.transact("heartbeat")

    async def withdraw(self) -> dict[str, Any]:
        return await self.transact("withdraw")


class HeartbeatTask:
    """Sends a heartbeat whenever `every_blocks` blocks passed since the last one (default: half
    the registry's window), checking every `check_interval_s` seconds."""

    name = "heartbeat"

    def __init__(
        self,
        client: RegistryClient,
        *,
        every_blocks: int = 0,
        check_interval_s: float = 15.0,
        metrics: Metrics | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.client = client
        self.every_blocks = every_blocks
        self.check_interval = check_interval_s
        self.metrics = metrics or Metrics()
        self.log = logger or logging.getLogger("agent.masternode")
        self._said_unregistered = False
        self.ready = asyncio.Event()
        self.registered: bool | None = None
        self.in_service: bool | None = None  # None: unknown or no ServiceStanding attached
        self.failing: str | None = None

    async def beat_if_due(self) -> bool:
        st = await self.client.status()
        self.registered = st.registered
        self.in_service = st.in_service
        if not st.registered:
            if not self._said_unregistered:
                self._said_unregistered = True
                event(
                    self.log,
                    "masternode_not_registered",
                    logging.WARNING,
                    address=st.address,
                    registry=st.registry,
                    hint="run `edgence-agent masternode register`",
                )
            return False
        self._said_unregistered = False
        every = self.every_blocks or max(1, st.heartbeat_window // 2)
        if st.block - st.last_heartbeat < every:
            return False
        rc = await self.client.heartbeat()
        self.metrics.inc("masternode_heartbeats")
        event(
            self.log,
            "masternode_heartbeat",
            block=hex_int(rc["blockNumber"]),
            was_active=st.active,
            last=st.last_heartbeat,
        )
        return True

    async def run(self) -> None:
        self.ready.set()
        while True:
            try:
                await self.beat_if_due()
                self.failing = None
            except ChainError as exc:
                self.failing = str(exc)[:200]
                self.metrics.inc("masternode_heartbeat_failed")
                event(
                    self.log, "masternode_heartbeat_failed", logging.WARNING, error=str(exc)[:200]
                )
            await asyncio.sleep(self.check_interval)

    async def stop(self, grace: float = 0.5) -> None:
        """Nothing to finish: the next heartbeat is sent when it is due after a restart."""

    def health(self) -> Health:
        return Health(
            "degraded"
            if self.failing or self.registered is False or self.in_service is False
            else "up",
            {"registered": self.registered, "in_service": self.in_service, "error": self.failing},
        )


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
