"""The masternode layer's contracts on a real anvil: a MasternodeRegistry with a
ServiceStanding attached, a RewardPool and a DappRegistry, deployed with anvil's funded
development key; masternodes are fresh keys funded with anvil_setBalance.

The ServiceStanding's committee is an ElectionBoard's, posted for each epoch by `next_epoch`
as the agents would after a round. So that the poster does not change the masternode counts
the tests assert (votes, shares), the board stands on a registry of its own holding only the
poster: ServiceStanding reads nothing of the board's registry."""

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
    board: Contract
    poster: GatewayKey
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

    def next_epoch(self, committee: list[GatewayKey] | None = None) -> int:
        """Mine to the first block of the next epoch and post its committee (`committee`, by
        default the layer's); returns its number."""
        e = self.epoch()
        while self.epoch() == e:
            self.chain.mine(1)
        members = [k.address for k in (self.committee if committee is None else committee)]
        self.chain.transact(self.poster, self.board, "postCommittee", e + 1, members)
        return e + 1


def deploy_layer(chain: Chain, committee_size: int = 3, epoch_blocks: int = EPOCH_BLOCKS) -> Layer:
    committee = [GatewayKey.generate() for _ in range(committee_size)]
    poster = GatewayKey.generate()
    for k in (*committee, poster):
        chain.fund(k)
    registry = chain.deploy("MasternodeRegistry", COLLATERAL, WINDOW_BLOCKS)
    posters = chain.deploy("MasternodeRegistry", COLLATERAL, 10**9)
    vrf = bytes([2]) + poster.public_key_uncompressed[1:33]
    chain.transact(poster, posters, "register", vrf, value=COLLATERAL)
    while chain.block_number() < epoch_blocks + 2:
        chain.mine(1)
    # Epoch e is blocks (start + (e+1)L, start + (e+2)L]: epoch 0 begins at the next block.
    start = chain.block_number() - epoch_blocks
    board = chain.deploy("ElectionBoard", 1, posters.address, start, epoch_blocks, 2, 1, 1)
    standing = chain.deploy("ServiceStanding", board.address, FAIL_EPOCHS)
    chain.transact(chain.dev, registry, "attachServiceStanding", standing.address)
    first = start + epoch_blocks + 1  # the board's first epoch block: the pool's epochs equal its
    rewards = chain.deploy("RewardPool", registry.address, REWARD, epoch_blocks, first)
    dapps = chain.deploy("DappRegistry", registry.address)
    layer = Layer(chain, registry, standing, rewards, dapps, committee, board, poster)
    return layer


@pytest.fixture
def layer(anvil: LocalAnvil, contracts_built: Path) -> Iterator[Layer]:
    yield deploy_layer(Chain(anvil))
