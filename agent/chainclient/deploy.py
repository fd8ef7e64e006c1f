"""Deploying the Edgence contracts and administering oracle feeds: what `edgence-agent contracts
deploy | feed create | feed show | latest` do, as library functions over the chain client
(transactions signed by the given key through TxSender, calls through RpcClient)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.attest.feeds import default_feed, feed_id
from agent.chainclient.contractclient import revert_reason
from agent.chainclient.contracts import Artifact, load_artifact
from agent.chainclient.rpc import RpcClient, hex_int
from agent.chainclient.sender import TxSender
from agent.chainclient.tx import decode_result, encode_call, encode_constructor
from agent.errors import ChainError, RpcError, TransactionError
from agent.model import ASSURANCE_NAMES, bytes32_label


def assurance_name(level: int) -> str:
    return ASSURANCE_NAMES[level] if 0 <= level < len(ASSURANCE_NAMES) else "unknown level"


@dataclass(frozen=True)
class DeployDefaults:
    """What `contracts deploy` deploys with unless told otherwise. The election values equal
    the config's defaults ([election] mode, round_length, cutoff), so an agent needs only the
    addresses."""

    collateral_wei: int = 10**18  # MasternodeRegistry: the fixed collateral (1 native token)
    heartbeat_window_blocks: int = 240  # inactive after this many blocks without a heartbeat
    max_future_s: int = 60  # ObservationOracle: how far an observation may be ahead of a block
    election_mode: str = "paper"  # ElectionBoard: "paper" or "vrf"
    round_length_blocks: int = 20
    cutoff_blocks: int = 10
    leader_timeout_blocks: int = 4  # an epoch: the leader first, the next in rank after this
    fallback_timeout_blocks: int = 14  # and any active masternode after this


@dataclass(frozen=True)
class Deployed:
    chain_id: int
    registry: str
    oracle: str
    board: str
    block: int
    deployer: str

    def toml_lines(self, rpc_url: str) -> list[str]:
        """The lines to paste into each masternode's agent.toml."""
        return [
            "[gateway]",
            f"chain_id = {self.chain_id}",
            f'verifying_contract = "{self.oracle}"  # the ObservationOracle',
            "",
            "[chain]",
            "enabled = true",
            f'rpc_url = "{rpc_url}"',
            "",
            "[masternode]",
            f'registry = "{self.registry}"',
            "",
            "[election]",
            f'board = "{self.board}"',
        ]


async def _deploy_one(sender: TxSender, art: Artifact, *args: Any) -> str:
    data = art.bytecode + encode_constructor(art.abi, *args)
    try:
        tx_id = await sender.send(None, data)
    except TransactionError as exc:
        raise TransactionError(f"deploying {art.name}: {exc}") from exc
    rc = await sender.wait(tx_id)
    address = rc.get("contractAddress")
    if not isinstance(address, str):
        raise ChainError(f"deploying {art.name}: the receipt names no contract address")
    return address.lower()


async def deploy_contracts(sender: TxSender, d: DeployDefaults | None = None) -> Deployed:
    """Deploy MasternodeRegistry, ObservationOracle (over that registry) and ElectionBoard
    (its first round starting at the next block)."""
    d = d or DeployDefaults()
    if d.election_mode not in ("paper", "vrf"):
        raise ChainError(f"election mode {d.election_mode!r} must be paper or vrf")
    await sender.check_chain()
    registry = await _deploy_one(
        sender, load_artifact("MasternodeRegistry"), d.collateral_wei, d.heartbeat_window_blocks
    )
    oracle = await _deploy_one(sender, load_artifact("ObservationOracle"), registry, d.max_future_s)
    head = hex_int(await sender.rpc.call("eth_blockNumber"))
    board = await _deploy_one(
        sender,
        load_artifact("ElectionBoard"),
        0 if d.election_mode == "paper" else 1,
        registry,
        head + 1,
        d.round_length_blocks,
        d.cutoff_blocks,
        d.leader_timeout_blocks,
        d.fallback_timeout_blocks,
    )
    return Deployed(sender.chain_id, registry, oracle, board, head, sender.key.address)


# -- feeds --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeedPolicy:
    quorum: int = 3
    min_assurance: int = 2
    same_reading: bool = False
    window_s: int = 600
    max_age_s: int = 600
    allowed_gateways: tuple[str, ...] = ()

    def describe(self) -> str:
        allowed = ", ".join(self.allowed_gateways) if self.allowed_gateways else "any masternode"
        return (
            f"quorum {self.quorum}, minimum assurance {self.min_assurance} "
            f"({assurance_name(self.min_assurance)}), "
            f"{'same-reading witnesses' if self.same_reading else 'reports'} within "
            f"{self.window_s} s, max age {self.max_age_s} s, reporters: {allowed}"
        )


def resolve_feed(feed: str | None, device: str | None, sensor: str | None) -> bytes:
    """A feed id from --feed (a name or 0x id) or from --device and --sensor (the default)."""
    if feed is not None:
        if device is not None or sensor is not None:
            raise ChainError("give either --feed or --device and --sensor, not both")
        try:
            return feed_id(feed)
        except ValueError as exc:
            raise ChainError(f"--feed: {exc}") from None
    if device is None or sensor is None:
        raise ChainError("name the feed: --feed NAME, or --device ID --sensor NAME")
    try:
        return default_feed(device, sensor)
    except ValueError as exc:
        raise ChainError(str(exc)) from None


@dataclass(frozen=True)
class FeedValue:
    value: int
    exponent: int
    unit: str
    observed_at: int
    reporters: int
    min_assurance: int
    accepted_at: int
    round: int

    def describe(self) -> list[str]:
        from agent.model import decimal_string

        return [
            f"value        {decimal_string(self.value, self.exponent)} {self.unit}",
            f"observed at  {self.observed_at} (unix seconds; accepted at {self.accepted_at})",
            f"reporters    {self.reporters} masternodes (round {self.round})",
            f"assurance    {self.min_assurance} ({assurance_name(self.min_assurance)}) at least",
        ]


class OracleAdmin:
    """Calls and transactions to one ObservationOracle."""

    def __init__(self, rpc: RpcClient, oracle: str, sender: TxSender | None = None) -> None:
        self.rpc = rpc
        self.oracle = oracle
        self.sender = sender
        self.art = load_artifact("ObservationOracle")

    async def call(self, fn: str, *args: Any) -> tuple[Any, ...]:
        item = self.art.function(fn)
        data = "0x" + encode_call(item, *args).hex()
        try:
            out = await self.rpc.call("eth_call", [{"to": self.oracle, "data": data}, "latest"])
        except RpcError as exc:
            raise ChainError(f"{fn}: {revert_reason(self.art.abi, exc.data)}") from exc
        raw = bytes.fromhex(str(out)[2:])
        if not raw:
            raise ChainError(f"no ObservationOracle at {self.oracle} (the call returned nothing)")
        return decode_result(item, raw)

    async def create_feed(self, feed: bytes, p: FeedPolicy) -> dict[str, Any]:
        if self.sender is None:
            raise ChainError("creating a feed needs a key to sign with")
        if not 0 <= p.min_assurance < len(ASSURANCE_NAMES):
            raise ChainError(f"minimum assurance {p.min_assurance} must be 0, 1 or 2")
        args = (
            feed,
            p.quorum,
            p.min_assurance,
            p.same_reading,
            p.window_s,
            p.max_age_s,
            list(p.allowed_gateways),
        )
        # Checked with eth_call first: a refusal names the contract's reason.
        await self.call_as(self.sender.key.address, "createFeed", *args)
        tx_id = await self.sender.send(
            self.oracle, encode_call(self.art.function("createFeed"), *args)
        )
        return await self.sender.wait(tx_id)

    async def call_as(self, sender: str, fn: str, *args: Any) -> None:
        data = "0x" + encode_call(self.art.function(fn), *args).hex()
        call = {"from": sender, "to": self.oracle, "data": data}
        try:
            await self.rpc.call("eth_call", [call, "latest"])
        except RpcError as exc:
            raise ChainError(f"{fn}: {revert_reason(self.art.abi, exc.data)}") from exc

    async def policy(self, feed: bytes) -> tuple[FeedPolicy, str]:
        """The feed's policy and its creator."""
        ((quorum, min_assurance, same, _restricted, window, max_age, creator),) = await self.call(
            "policy", feed
        )
        return FeedPolicy(quorum, min_assurance, same, window, max_age), str(creator).lower()

    async def latest(self, feed: bytes) -> FeedValue:
        (
            (value, exponent, unit, observed, reporters, min_assurance, accepted, rnd),
        ) = await self.call("latest", feed)
        return FeedValue(
            value,
            exponent,
            bytes32_label(bytes(unit)),
            observed,
            reporters,
            min_assurance,
            accepted,
            rnd,
        )
