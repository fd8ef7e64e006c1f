"""[gateway]: the masternode's key, the data directory, and the EIP-712 domain observations are
signed under."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import cast

from agent.config.reader import ZERO_ADDRESS, Section


@dataclass(frozen=True, kw_only=True)
class GatewayConfig:
    key_file: Path
    data_dir: Path = Path("data")  # relative: beside the config file
    chain_id: int = 31337
    verifying_contract: str = ZERO_ADDRESS
    passphrase_file: Path | None = None
    domain_name: str = "Edgence"
    domain_version: str = "1"


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
    )
    g.done()
    return cfg
