"""[gateway]: the masternode's key, the data directory, the EIP-712 domain observations are
signed under, and [gateway.feeds] (which feed a device's sensor is signed into)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import cast

from agent.attest.feeds import feed_id, parse_assignment
from agent.config.reader import ZERO_ADDRESS, Section


@dataclass(frozen=True, kw_only=True)
class GatewayConfig:
    key_file: Path
    data_dir: Path = Path("data")  # relative: beside the config file
    chain_id: int = 31337
    verifying_contract: str = ZERO_ADDRESS
    passphrase_file: Path | None = None
    domain_name: str = "Edgence"
    domain_version: str = "2"
    # [gateway.feeds] "device/sensor" = feed name or 0x id; others get the default feed
    feeds: tuple[tuple[str, str], ...] = ()


def read_gateway(g: Section) -> GatewayConfig:
    G = GatewayConfig
    cfg = GatewayConfig(
        data_dir=cast(Path, g.path("data_dir", str(G.data_dir))),
        key_file=cast(Path, g.path("key_file", required=True)),
        passphrase_file=g.path("passphrase_file"),
        chain_id=g.int_range("chain_id", G.chain_id, 1, 2**64 - 1),
        verifying_contract=cast(str, g.address("verifying_contract", G.verifying_contract)),
        domain_name=g.get("domain_name", str, G.domain_name),
        domain_version=g.get("domain_version", str, G.domain_version),
        feeds=read_feeds(g.sub("feeds")),
    )
    g.done()
    return cfg


def read_feeds(f: Section) -> tuple[tuple[str, str], ...]:
    """[gateway.feeds]: "device/sensor" = "feed name" (or "0x" and 64 hex digits)."""
    out = []
    for key, spec in f.data.items():
        f.read.add(key)
        if not isinstance(spec, str):
            raise f.err(key, f"must be a feed name or 0x and 64 hex digits, got {spec!r}")
        try:
            parse_assignment(key)
            feed_id(spec)
        except ValueError as exc:
            raise f.err(key, str(exc)) from None
        out.append((key, spec))
    f.done()
    return tuple(out)
