"""The masternode layer's contracts on a real anvil: a MasternodeRegistry with a
ServiceStanding attached, a RewardPool and a DappRegistry, deployed with anvil's funded
development key; masternodes are fresh keys funded with anvil_setBalance."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.attest.keys import GatewayKey
from agent.chainclient.anvil import LocalAnvil
from tests.integration.oracle.conftest import COLLATERAL, Chain, Contract

WINDOW_BLOCKS = 1000  # heartbeats never lapse in these tests unless a test mines past it
EPOCH_BLOCKS = 10
FAIL_EPOCHS = 2  # K
REWARD = 7 * 10**15  # wei per epoch (divisible by 1..7 nodes)


@dataclass
class Layer:
    chain: Chain
    registry: Contract
    standing: Contract
    rewards: Contract
    dapps: Contract
    committee: list[GatewayKey]
    nodes: list[GatewayKey] = field(default_factory=list)

    def masternode(self) -> GatewayKey:
        key = GatewayKey.generate()
        self.chain.fund(key)
        vrf = bytes([2]) + key.public_key_uncompressed[1:33]
        self.chain.transact(key, self.registry, "register", vrf, value=COLLATERAL)
        self.nodes.append(key)
        return key

    def epoch(self) -> int:
        return int(self.chain.call(self.rewards, "currentEpoch")[0])

    def next_epoch(self) -> int:
        """Mine to the first block of the next epoch; returns its number."""
        e = self.epoch()
        while self.epoch() == e:
            self.chain.mine(1)
        return e + 1


def deploy_layer(chain: Chain, committee_size: int = 3, epoch_blocks: int = EPOCH_BLOCKS) -> Layer:
    committee = [GatewayKey.generate() for _ in range(committee_size)]
    for k in committee:
        chain.fund(k)
    registry = chain.deploy("MasternodeRegistry", COLLATERAL, WINDOW_BLOCKS)
    first = chain.block_number()
    standing = chain.deploy(
        "ServiceStanding", epoch_blocks, first, FAIL_EPOCHS, [k.address for k in committee]
    )
    chain.transact(chain.dev, registry, "attachServiceStanding", standing.address)
    rewards = chain.deploy("RewardPool", registry.address, REWARD, epoch_blocks, first)
    dapps = chain.deploy("DappRegistry", registry.address)
    return Layer(chain, registry, standing, rewards, dapps, committee)


@pytest.fixture
def layer(anvil: LocalAnvil, contracts_built: Path) -> Iterator[Layer]:
    yield deploy_layer(Chain(anvil))
