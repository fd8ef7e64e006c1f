"""Which contracts dApps may send transactions to through this gateway: the DappRegistry's
approvals, followed from the chain (a snapshot at start, then the registry's logs), and the
check forwarding applies to `eth_sendRawTransaction` (the raw transaction's `to` decoded here).

Fail closed: until the first snapshot is read, and for a transaction that cannot be decoded,
creates a contract, or carries EIP-7702 authorizations (which change other accounts' code),
the answer is a refusal. Reads (eth_call, eth_getLogs, ...) are not this module's business.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import rlp

from agent.chainclient.contracts import Artifact, load_artifact
from agent.chainclient.forward import INVALID_PARAMS, Refusal
from agent.chainclient.rpc import RpcClient
from agent.chainclient.subscribe import ChainWatcher, Feed
from agent.chainclient.tx import decode_result, encode_call
from agent.component import Health
from agent.errors import ChainError
from agent.logs import event
from agent.metrics import Metrics

NOT_APPROVED = -32003  # EIP-1474 "transaction rejected"

# The index of `to` in each transaction type's RLP list (EIP-2718 typed transactions).
_TO_INDEX = {1: 4, 2: 5, 3: 5}
_LEGACY_TO = 3
_SET_CODE_TX = 4  # EIP-7702


class UndecodableTransaction(ValueError):
    """A raw transaction whose destination cannot be read."""


def transaction_destination(raw: bytes) -> str | None:
    """The `to` address (lower-case hex) of a signed raw transaction, None for a contract
    creation. Legacy and EIP-2930/1559/4844 transactions; raises UndecodableTransaction for
    anything else (including EIP-7702, refused as a whole)."""
    if not raw:
        raise UndecodableTransaction("empty transaction")
    if raw[0] >= 0xC0:
        body, index = raw, _LEGACY_TO
    elif raw[0] in _TO_INDEX:
        body, index = raw[1:], _TO_INDEX[raw[0]]
    elif raw[0] == _SET_CODE_TX:
        raise UndecodableTransaction("EIP-7702 transactions are not forwarded")
    else:
        raise UndecodableTransaction(f"unknown transaction type {raw[0]}")
    try:
        fields = rlp.decode(body, strict=True)
    except Exception as exc:  # rlp raises its own DecodingError family
        raise UndecodableTransaction(f"not RLP: {exc}") from None
    if not isinstance(fields, list) or len(fields) <= index:
        raise UndecodableTransaction("too few fields")
    to = fields[index]
    if not isinstance(to, bytes) or len(to) not in (0, 20):
        raise UndecodableTransaction("bad destination field")
    return "0x" + to.hex() if to else None


@dataclass(frozen=True)
class DappProposal:
    id: int
    proposer: str
    name: str
    contracts: tuple[str, ...]  # lower-case hex
    approvals: int
    revocations: int
    approved: bool


class DappRegistryView:
    """Reads a DappRegistry's proposals (eth_call at the latest block)."""

    def __init__(self, rpc: RpcClient, address: str) -> None:
        self.rpc = rpc
        self.address = address
        self.art: Artifact = load_artifact("DappRegistry")

    async def call(self, fn: str, *args: Any) -> tuple[Any, ...]:
        item = self.art.function(fn)
        data = "0x" + encode_call(item, *args).hex()
        out = await self.rpc.call("eth_call", [{"to": self.address, "data": data}, "latest"])
        raw = bytes.fromhex(str(out)[2:])
        if not raw:
            raise ChainError(
                f"no DappRegistry at {self.address}: check [masternode] dapps and chain.rpc_url"
            )
        return decode_result(item, raw)

    async def proposal(self, pid: int) -> DappProposal:
        proposer, name, contracts, yes, no, approved = await self.call("proposal", pid)
        return DappProposal(
            pid,
            str(proposer),
            str(name),
            tuple(str(c).lower() for c in contracts),
            int(yes),
            int(no),
            bool(approved),
        )

    async def proposals(self) -> list[DappProposal]:
        (n,) = await self.call("proposalCount")
        return [await self.proposal(i) for i in range(int(n))]


class DappApprovals:
    """Follows one DappRegistry; `check_raw_transaction` is forwarding's hook."""

    name = "dapp-approvals"

    def __init__(
        self,
        rpc: RpcClient,
        registry: str,
        watcher: ChainWatcher,
        *,
        metrics: Metrics | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.rpc = rpc
        self.registry = registry
        self.watcher = watcher
        self.metrics = metrics or Metrics()
        self.log = logger or logging.getLogger("agent.chainclient.approvals")
        self.view = DappRegistryView(rpc, registry)
        self._logs: Feed[dict[str, Any]] = watcher.logs(address=registry)
        self._approved: dict[int, tuple[str, ...]] = {}
        self._allowed: frozenset[str] = frozenset()
        self.loaded = False
        self.failing: str | None = None
        self.ready = asyncio.Event()

    # -- the set -------------------------------------------------------------------------------
    @property
    def allowed(self) -> frozenset[str]:
        """The contracts of every approved dApp (lower-case hex)."""
        return self._allowed

    def _apply(self, p: DappProposal) -> None:
        was = p.id in self._approved
        if p.approved:
            self._approved[p.id] = p.contracts
        else:
            self._approved.pop(p.id, None)
        self._allowed = frozenset(a for cs in self._approved.values() for a in cs)
        if was != p.approved:
            event(
                self.log,
                "dapp_approved" if p.approved else "dapp_revoked",
                id=p.id,
                dapp=p.name[:64],
                contracts=",".join(p.contracts),
            )

    def check_raw_transaction(self, params: Any) -> None:
        """Raise a Refusal unless `params` is one raw transaction to an approved contract."""
        if not isinstance(params, list) or len(params) != 1 or not isinstance(params[0], str):
            raise Refusal(
                INVALID_PARAMS, "invalid_params", "eth_sendRawTransaction takes one hex string"
            )
        if not self.loaded:
            raise Refusal(
                NOT_APPROVED,
                "dapp_approvals_unknown",
                "this gateway has not read the dApp approvals yet; try again shortly",
            )
        try:
            to = transaction_destination(bytes.fromhex(params[0].removeprefix("0x")))
        except (ValueError, UndecodableTransaction) as exc:
            raise Refusal(
                INVALID_PARAMS, "undecodable_transaction", f"transaction not accepted: {exc}"
            ) from None
        if to is None:
            raise Refusal(NOT_APPROVED, "contract_creation", "contract creation is not forwarded")
        if to not in self._allowed:
            raise Refusal(
                NOT_APPROVED,
                "dapp_not_approved",
                f"{to} is not a contract of a dApp the masternodes approved",
                to=to,
            )

    # -- the chain -----------------------------------------------------------------------------
    async def proposals(self) -> list[DappProposal]:
        return await self.view.proposals()

    async def refresh(self) -> None:
        """Read every proposal again (at start and after a restart: what happened meanwhile)."""
        for p in await self.proposals():
            self._apply(p)
        self.loaded = True

    async def run(self) -> None:
        # The watcher delivers logs from its first catch-up on: the snapshot is read after
        # that, so no change falls between the two (one seen twice is harmless: each log
        # makes us read that proposal's current state).
        await self.watcher.connected.wait()
        await self.refresh()
        self.failing = None
        self.ready.set()
        event(
            self.log, "dapp_approvals_loaded", registry=self.registry, approved=len(self._approved)
        )
        while True:
            log = await self._logs.get()
            topics = log.get("topics") or []
            try:
                if self._logs.overflowed or len(topics) < 2:
                    self._logs.overflowed = 0
                    await self.refresh()
                else:
                    self._apply(await self.view.proposal(int(str(topics[1]), 16)))
                self.failing = None
            except ChainError as exc:
                self.failing = str(exc)[:200]
                event(self.log, "dapp_approvals_failed", logging.WARNING, error=self.failing)
                raise  # the supervisor restarts run(), which reads the whole set again

    async def stop(self, grace: float = 0.5) -> None:
        """Nothing to finish: the set is read again from the chain at the next start."""

    def health(self) -> Health:
        if not self.loaded:
            return Health("starting" if self.failing is None else "down", {"error": self.failing})
        return Health(
            "degraded" if self.failing else "up",
            {
                "approved_dapps": len(self._approved),
                "contracts": len(self._allowed),
                "error": self.failing,
            },
        )
