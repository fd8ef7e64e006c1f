"""[election]: validator-election signature rounds on the ElectionBoard contract."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast, get_args

from agent.config.broker import TOPIC_PREFIX, BrokerEndpoint, read_broker, read_topic_prefix
from agent.config.reader import ZERO_ADDRESS, Section

Mode = Literal["paper", "vrf"]
STORE_NAME = "election.sqlite"  # in the data directory, unless `store` says otherwise


@dataclass(frozen=True, kw_only=True)
class ElectionConfig:
    """[election]: validator-election signature rounds on the election board contract."""

    enabled: bool = False
    mode: Mode = "paper"
    board: str = ZERO_ADDRESS  # the ElectionBoard contract's address
    k: int = 21
    round_length: int = 20  # blocks between round boundaries (must equal the board's)
    cutoff: int = 10  # blocks after the boundary that take submissions (the board's window)
    confirmations: int = 3
    workers: int = 1  # processes verifying VRF proofs (0: one per core)
    catch_up_rounds: int = 16
    committee: bool = True  # post the elected committee on the board when this node's turn comes
    aggregate: bool = False  # report the oracle's observations when this node's duty comes
    topic_prefix: str = TOPIC_PREFIX
    store: Path | None = None  # <data_dir>/election.sqlite
    mqtt: BrokerEndpoint | None = None  # own connection, when the bridge is disabled


def read_election(e: Section, data_dir: Path) -> ElectionConfig:
    E = ElectionConfig
    enabled = e.get("enabled", bool, E.enabled)
    m = e.sub("mqtt")
    broker = read_broker(m, None) if m.data else None
    m.done()
    board = e.address(
        "board",
        E.board,
        "the election board's address: 0x followed by 40 hex digits",
        required=enabled,
    )
    cfg = ElectionConfig(
        enabled=enabled,
        mode=cast(Mode, e.choice("mode", E.mode, get_args(Mode))),
        board=cast(str, board).lower(),
        k=e.int_range("k", E.k, 1, 100_000),
        round_length=e.int_range("round_length", E.round_length, 2, 1_000_000),
        cutoff=e.int_range("cutoff", E.cutoff, 2, 255),
        confirmations=e.int_range("confirmations", E.confirmations, 1, 254),
        workers=e.int_range("workers", E.workers, 0, 64),
        catch_up_rounds=e.int_range("catch_up_rounds", E.catch_up_rounds, 1, 10_000),
        committee=e.get("committee", bool, E.committee),
        aggregate=e.get("aggregate", bool, E.aggregate),
        topic_prefix=read_topic_prefix(e, E.topic_prefix),
        store=e.path("store", str(data_dir / STORE_NAME)),
        mqtt=broker,
    )
    if cfg.cutoff > cfg.round_length:
        raise e.err(
            "cutoff", f"must not exceed round_length ({cfg.round_length}); got {cfg.cutoff}"
        )
    if cfg.confirmations >= cfg.cutoff:
        raise e.err(
            "confirmations",
            f"must be below cutoff ({cfg.cutoff} blocks): agents submit only after the boundary "
            f"block has that many confirmations; got {cfg.confirmations}",
        )
    e.done()
    return cfg
