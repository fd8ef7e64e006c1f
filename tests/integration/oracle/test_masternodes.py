"""Three masternodes (three agents, one anvil, one Mosquitto): each registers with
`edgence-agent masternode register`, observes the same simulated sensor through its own
topic, and submits on its own; the oracle accepts the median at quorum and the consumer
contract reads it. Then missed heartbeats and the agents' automatic heartbeats, and a
withdrawal after which that masternode's submissions are refused."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.attest import ecvrf
from agent.attest.feeds import default_feed
from agent.attest.keys import GatewayKey, write_key_file
from agent.chainclient.anvil import LocalAnvil
from agent.chainclient.tx import event_topic
from agent.cli import main as cli_main
from agent.devices.codecs.frame import encode_frame
from agent.localbroker import LocalMosquitto
from agent.model import label_bytes32
from tests.integration.conftest import Device, agent_config_dict, async_wait_until, to_toml
from tests.integration.oracle.conftest import (
    COLLATERAL,
    MAX_AGE_S,
    MAX_FUTURE_S,
    ROUND_WINDOW_S,
    WINDOW_BLOCKS,
    Chain,
    Reverted,
)

FEED = default_feed("dev-1", "temp")


def masternode_config(
    i: int, broker: LocalMosquitto, node: LocalAnvil, registry: str, oracle: str, vrf: bytes
) -> dict[str, Any]:
    return agent_config_dict(
        broker,
        broker,
        gateway={"verifying_contract": oracle},
        sources={
            "mqtt": {"url": broker.url, "allowed_devices": ["dev-1"], "topics": [f"site{i}/+/up"]}
        },
        bridge={"enabled": False},
        chain={"enabled": True, "rpc_url": node.url, "poll_interval": 0.05},
        masternode={
            "registry": registry,
            "vrf_public_key": "0x" + vrf.hex(),
            "check_interval": 0.1,
        },
        oracle={"submit": {"enabled": True, "sensors": ["dev-1/temp"], "interval": 0.1}},
    )


async def cli(*args: str) -> int:
    return await asyncio.to_thread(cli_main, list(args))


def frame(counter: int, value: int) -> bytes:
    return encode_frame(counter, [("temp", value, -2, "Cel")], timestamp=int(time.time()))


async def test_three_masternodes_reach_quorum_heartbeat_and_withdraw(
    local_broker: LocalMosquitto,
    device: Device,
    anvil: LocalAnvil,
    contracts_built: Path,
    start_agent: Callable[..., Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    chain = Chain(anvil)
    registry = chain.deploy("MasternodeRegistry", COLLATERAL, WINDOW_BLOCKS)
    oracle = chain.deploy("ObservationOracle", registry.address, MAX_FUTURE_S)
    # Allowlisted devices (assurance 0): this feed accepts them; see test_quorum for assurance 2.
    chain.transact(
        chain.dev, oracle, "createFeed", FEED, 3, 0, False, ROUND_WINDOW_S, MAX_AGE_S, []
    )
    consumer = chain.deploy(
        "ConsumerExample", oracle.address, FEED, label_bytes32("Cel", "unit"), MAX_AGE_S, 3, 0, 0
    )

    keys, configs, agents = [], [], []
    for i in range(3):
        key = GatewayKey.generate()
        chain.fund(key)
        vrf = ecvrf.public_key_of(os.urandom(32))
        cfg = masternode_config(i, local_broker, anvil, registry.address, oracle.address, vrf)
        base = tmp_path / f"mn{i}"
        base.mkdir()
        write_key_file(base / "gateway.key", key)
        (base / "agent.toml").write_text(to_toml(cfg))
        assert await cli("masternode", "register", "--config", str(base / "agent.toml")) == 0
        assert "state         active" in capsys.readouterr().out
        assert chain.call(registry, "vrfPublicKey", key.address) == (vrf,)
        keys.append(key)
        configs.append((cfg, base))
        agents.append(await start_agent(cfg, key, name=f"mn{i}"))
    assert chain.call(registry, "activeCount") == (3,)
    # A second registration is refused with the contract's reason, and nothing is sent.
    _, base0 = configs[0]
    assert await cli("masternode", "register", "--config", str(base0 / "agent.toml")) == 2
    assert "register: AlreadyRegistered(" in capsys.readouterr().err

    # The same sensor as three gateways see it (each has its own topic, its own reading).
    values = [2150, 2090, 2230]
    for i, v in enumerate(values):
        await asyncio.to_thread(device.publish, f"site{i}/dev-1/up", frame(1, v))

    def accepted() -> bool:
        try:
            chain.call(oracle, "latest", FEED)
            return True
        except Reverted:
            return False

    await async_wait_until(accepted, 30, "the oracle accepting a value")
    (value,) = chain.call(oracle, "latest", FEED)
    assert value[0] == sorted(values)[1] and value[1] == -2 and value[4] == 3
    chain.transact(chain.dev, consumer, "refresh")
    assert chain.call(consumer, "lastMilli") == (sorted(values)[1] * 10,)
    await async_wait_until(
        lambda: all(
            a.agent.metrics.get("oracle_submitted", result="accepted") == 1 for a in agents
        ),
        30,
        "each agent seeing its own submission's receipt",
    )

    # Missed heartbeats: past the window every masternode is inactive; the agents' heartbeat
    # tasks notice and bring them back.
    chain.mine(WINDOW_BLOCKS + 1)
    assert chain.call(registry, "activeCount") == (0,)
    await async_wait_until(
        lambda: chain.call(registry, "activeCount") == (3,), 30, "all three resumed"
    )
    resumed = event_topic(registry.art.event("Resumed"))
    logs = anvil.rpc(
        "eth_getLogs", [{"address": registry.address, "topics": [resumed], "fromBlock": "0x0"}]
    )
    assert isinstance(logs, list) and len(logs) == 3

    # Withdrawal: the first masternode stops, withdraws its collateral, starts again; what it
    # submits afterwards is refused by the oracle, and no value is accepted without it.
    await agents[0].stop()
    cfg0, base0 = configs[0]
    assert await cli("masternode", "withdraw", "--config", str(base0 / "agent.toml")) == 0
    assert "state         not registered" in capsys.readouterr().out
    assert chain.call(registry, "count") == (2,)
    again = await start_agent(cfg0, keys[0], name="mn0")
    for i, v in enumerate(values):
        await asyncio.to_thread(device.publish, f"site{i}/dev-1/up", frame(2, v + 10))
    await async_wait_until(
        lambda: again.agent.metrics.get("oracle_submitted", result="rejected") >= 1,
        30,
        "the withdrawn masternode's submission refused",
    )
    await async_wait_until(
        lambda: all(
            a.agent.metrics.get("oracle_submitted", result="accepted") == 2 for a in agents[1:]
        ),
        30,
        "the two others' submissions accepted",
    )
    (still,) = chain.call(oracle, "latest", FEED)
    assert still == value  # two of three is below the quorum
