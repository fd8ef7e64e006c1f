"""The elected committee has a job: three agents in vrf mode on one anvil and one Mosquitto,
the oracle reserved for the board's committee (ObservationOracle.setAggregators). Gateways
publish signed observations on the upstream broker; in each epoch the leader elected in the
round before reports them in one submitBatch at the epoch's first blocks; when the leader is
gone, the next elected node reports after the leader's timeout; and the oracle refuses a
report by a node that is not on duty."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from agent.attest.feeds import default_feed
from agent.attest.keys import GatewayKey
from agent.attest.observation import ObservationSigner
from agent.chainclient.anvil import DEV_PRIVATE_KEY, LocalAnvil
from agent.chainclient.contracts import load_artifact
from agent.chainclient.rpc import hex_int
from agent.chainclient.tx import encode_call, event_topic
from agent.election.aggregator import CommitteeAggregator
from agent.election.duty import epoch_at
from agent.localbroker import LocalMosquitto
from agent.model import AuthMethod, Eip712Domain, Reading, Transport
from tests.integration.conftest import RunningAgent, async_wait_until
from tests.integration.election.conftest import (
    Miner,
    call,
    deploy,
    deploy_registry,
    fund,
    head,
    receipt,
    register_raw,
    send_raw,
)
from tests.integration.election.test_rounds import rounds_of, start_election

AGENTS = 3
DEVICES = ("dev-a", "dev-b")


def aggregator_of(agent: RunningAgent) -> CommitteeAggregator:
    agg = agent.agent.aggregator
    assert agg is not None
    return agg


async def test_the_leader_reports_each_epoch_and_the_next_takes_over_when_it_is_gone(
    tmp_path: Path,
    upstream_broker: LocalMosquitto,
    contracts_built: Path,
    start_agent: Callable[..., Any],
    chain: tuple[LocalAnvil, Miner],
) -> None:
    node, miner = chain
    miner.gap = 0.3  # the leader's 4 blocks (1.2 s) well above an agent's reaction time
    registry = await asyncio.to_thread(deploy_registry, node)
    oracle = await asyncio.to_thread(deploy, node, "ObservationOracle", registry, 60)
    art = load_artifact("ObservationOracle")
    dev = GatewayKey.from_bytes(DEV_PRIVATE_KEY)
    gateways = [GatewayKey.generate() for _ in range(2)]  # observers: masternodes, no agents

    def prepare(board: str, _sched: Any) -> None:
        gate = encode_call(art.function("setAggregators"), board)
        assert receipt(node, send_raw(node, dev, oracle, gate))["status"] == "0x1"
        for device in DEVICES:
            feed = default_feed(device, "temp")
            create = encode_call(art.function("createFeed"), feed, 1, 0, False, 600, 600, [])
            assert receipt(node, send_raw(node, dev, oracle, create))["status"] == "0x1"
        for i, g in enumerate(gateways):
            fund(node, g)
            secret = g.derive_secret(b"committee test vrf %d" % i)
            assert receipt(node, register_raw(node, board, g, secret))["status"] == "0x1"

    agents, _keys, _cfg, sched, _board = await start_election(
        node,
        miner,
        upstream_broker,
        start_agent,
        "vrf",
        AGENTS,
        prepare,
        registry,
        (4, 7),  # leader timeout, fallback timeout (blocks)
        gateway={"verifying_contract": oracle},
        election={"aggregate": True},
    )
    domain = Eip712Domain("Edgence", "2", node.chain_id, oracle)
    signers = [ObservationSigner(g, domain) for g in gateways]
    seq = [0, 0]
    pub = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    pub.connect("127.0.0.1", upstream_broker.port)
    pub.loop_start()

    def publish_round(value: int) -> list[tuple[bytes, str, int]]:
        """Every observer signs a reading of every device: (feed, gateway, sequence)."""
        out = []
        for i, (g, s) in enumerate(zip(gateways, signers, strict=True)):
            for device in DEVICES:
                seq[i] += 1
                r = Reading(
                    device,
                    "temp",
                    value,
                    -2,
                    "Cel",
                    int(time.time()),
                    seq[i],
                    Transport.MQTT,
                    AuthMethod.HMAC,
                )
                pub.publish(f"edgence/{g.address}/obs/{device}/temp", s.sign(r, seq[i]).envelope, 1)
                out.append((default_feed(device, "temp"), g.address, seq[i]))
        return out

    def accepted(items: list[tuple[bytes, str, int]]) -> bool:
        return all(
            call(node, oracle, "ObservationOracle", "lastSequence", f, g)[0] >= n
            for f, g, n in items
        )

    accepted_topic = "0x" + event_topic(art.event("ObservationAccepted")).removeprefix("0x")

    async def reported_in(items: list[tuple[bytes, str, int]]) -> tuple[int, str]:
        """(block, sender) of the batch that got `items` accepted."""
        await async_wait_until(lambda: accepted(items), 120, "observations reported")
        logs = node.rpc(
            "eth_getLogs",
            [
                {
                    "address": oracle,
                    "fromBlock": "0x0",
                    "toBlock": "latest",
                    "topics": [accepted_topic],
                }
            ],
        )
        assert isinstance(logs, list) and logs
        tx = str(logs[-1]["transactionHash"])
        rc = node.rpc("eth_getTransactionReceipt", [tx])
        assert isinstance(rc, dict)
        return hex_int(rc["blockNumber"]), str(rc["from"]).lower()

    async def past(block: int) -> None:
        await async_wait_until(lambda: head(node) > block, 60, f"past block {block}")

    try:
        # Epoch by epoch: whatever is published is reported by the epoch's leader.
        seen: set[int] = set()
        for value in range(3):
            await async_wait_until(lambda: epoch_at(sched, head(node)) is not None, 120, "epoch")
            items = publish_round(100 + value)
            block, sender = await reported_in(items)
            epoch = epoch_at(sched, block)
            assert epoch is not None
            committee = rounds_of(agents[0]).results[epoch.round].elected
            assert sender == committee[0], (epoch, committee, sender)
            seen.add(epoch.round)
            await past(epoch.last)
        assert len(seen) == 3

        # A node not on duty is refused before the fallback timeout.
        lead, fallback = rounds_of(agents[0]).timeouts or (0, 0)
        empty = encode_call(art.function("submitBatch"), [], [], [])
        await async_wait_until(
            lambda: (
                (e := epoch_at(sched, head(node))) is not None and head(node) < e.first + lead - 1
            ),
            60,
            "early in an epoch",
        )
        await asyncio.to_thread(miner.hold)  # the report goes into the very next block
        e = epoch_at(sched, head(node))
        assert e is not None and head(node) + 1 < e.first + fallback
        tx = send_raw(node, gateways[0], oracle, empty)
        node.rpc("evm_mine")
        rc = await asyncio.to_thread(receipt, node, tx)
        miner.resume()
        assert rc["status"] == "0x0"

        # The leader is gone: the next elected node reports after the leader's timeout what
        # the leader had (the observations of before the epoch).
        # First the current epoch's leader makes its one report (of a warm-up batch), so that
        # what is published next waits for the next epoch.
        ep = epoch_at(sched, head(node))
        assert ep is not None
        await reported_in(publish_round(400))
        n = ep.round + 1
        await async_wait_until(
            lambda: all(n in rounds_of(a).results for a in agents), 120, f"round {n} decided"
        )
        await asyncio.to_thread(miner.hold)  # epoch n does not begin before the test is ready
        first = sched.boundary(n + 1) + 1
        assert head(node) < first
        committee = rounds_of(agents[0]).results[n].elected
        leader = next(a for a in agents if rounds_of(a).node == committee[0])
        await leader.stop()
        alive = [a for a in agents if a is not leader]
        items = publish_round(500)
        await async_wait_until(
            lambda: all(len(aggregator_of(a).newest) >= len(items) for a in alive),
            30,
            "the observations seen",
        )
        miner.resume()
        block, sender = await reported_in(items)
        assert epoch_at(sched, block) == epoch_at(sched, first)
        assert sender == committee[1]
        assert block - first >= lead  # after the leader's turn
        await async_wait_until(
            lambda: any(aggregator_of(a).reported.get(n) for a in alive), 30, "its report noted"
        )
    finally:
        pub.loop_stop()
        pub.disconnect()
