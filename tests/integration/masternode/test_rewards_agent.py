"""Three agents as masternodes with a RewardPool: each checks in by itself every epoch it is in
service; one put out of service by the committee's verdicts stops earning until it passes
again; `edgence-agent masternode rewards` shows the claimable amount and claims it, and the
amounts match the per-epoch counts on the chain."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.attest.keys import GatewayKey, write_key_file
from agent.chainclient.anvil import LocalAnvil
from agent.cli import main as cli_main
from agent.cli.status import render
from agent.localbroker import LocalMosquitto
from tests.integration.conftest import agent_config_dict, async_wait_until, to_toml
from tests.integration.masternode.conftest import FAIL_EPOCHS, REWARD, Layer
from tests.integration.oracle.conftest import COLLATERAL


def node_config(
    broker: LocalMosquitto, node: LocalAnvil, layer: Layer, **masternode: Any
) -> dict[str, Any]:
    return agent_config_dict(
        broker,
        broker,
        bridge={"enabled": False},
        chain={"enabled": True, "rpc_url": node.url, "poll_interval": 0.05},
        masternode={
            "registry": layer.registry.address,
            "rewards": layer.rewards.address,
            "check_interval": 0.05,
            **masternode,
        },
    )


def register(layer: Layer, key: GatewayKey) -> None:
    layer.chain.fund(key)
    vrf = bytes([2]) + key.public_key_uncompressed[1:33]
    layer.chain.transact(key, layer.registry, "register", vrf, value=COLLATERAL)


async def cli(*args: str) -> int:
    return await asyncio.to_thread(cli_main, list(args))


async def test_agents_check_in_each_epoch_and_claim_equal_shares_while_in_service(
    local_broker: LocalMosquitto,
    anvil: LocalAnvil,
    layer: Layer,
    start_agent: Callable[..., Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    c = layer.chain
    c.transact(c.dev, layer.rewards, "fund", value=100 * REWARD)
    keys = [GatewayKey.generate() for _ in range(3)]
    agents = []
    for i, key in enumerate(keys):
        register(layer, key)
        cfg = node_config(local_broker, anvil, layer)
        agents.append(await start_agent(cfg, key, name=f"mn{i}"))
        (tmp_path / f"mn{i}").mkdir(exist_ok=True)
        write_key_file(tmp_path / f"mn{i}" / "gateway.key", key)
        (tmp_path / f"mn{i}" / "agent.toml").write_text(to_toml(cfg))

    def all_checked_in(epoch: int, who: list[GatewayKey]) -> Callable[[], bool]:
        return lambda: all(c.call(layer.rewards, "checkedIn", epoch, k.address)[0] for k in who)

    first = layer.next_epoch()
    await async_wait_until(all_checked_in(first, keys), 30, "three check-ins")
    # The committee fails the third masternode for K epochs in a row: out of service.
    bad = keys[2]
    epoch = first
    for _ in range(FAIL_EPOCHS):
        for m in layer.committee:
            c.transact(m, layer.standing, "submitVerdicts", epoch, [bad.address], [False])
        epoch = layer.next_epoch()
        await async_wait_until(all_checked_in(epoch, keys[:2]), 30, "two check-ins")
    assert c.call(layer.standing, "inService", bad.address) == (False,)
    out_epoch = epoch
    heartbeat = agents[2].agent.heartbeat
    assert heartbeat is not None
    await async_wait_until(
        lambda: heartbeat.health().detail["in_service"] is False,
        30,
        "the agent's own view of its standing",
    )
    telemetry = agents[2].agent.telemetry
    assert telemetry is not None
    shown = render(await telemetry.health_document())
    assert "masternode registered  service OUT OF SERVICE" in shown
    assert "rewards    epoch" in shown
    conf2 = str(tmp_path / "mn2" / "agent.toml")
    assert await cli("masternode", "status", "--config", conf2) == 0
    assert f"service       OUT OF SERVICE: {FAIL_EPOCHS} failed epoch(s) in a row" in (
        capsys.readouterr().out
    )
    # Its own RewardCheckIn does not try while it is inactive; the epoch passes without it.
    epoch = layer.next_epoch()
    await async_wait_until(all_checked_in(epoch, keys[:2]), 30, "two check-ins")
    assert c.call(layer.rewards, "checkedIn", out_epoch, bad.address) == (False,)
    assert c.call(layer.rewards, "checkedIn", epoch, bad.address) == (False,)
    # It passes again: back in service, it checks in again.
    for m in layer.committee:
        c.transact(m, layer.standing, "submitVerdicts", epoch, [bad.address], [True])
    back = layer.next_epoch()
    await async_wait_until(all_checked_in(back, keys), 30, "three check-ins again")
    layer.next_epoch()

    counts = {e: c.call(layer.rewards, "inServiceCount", e)[0] for e in range(back + 1)}
    for i, key in enumerate(keys):
        expected = sum(
            REWARD // counts[e]
            for e in counts
            if c.call(layer.rewards, "checkedIn", e, key.address)[0]
        )
        conf = str(tmp_path / f"mn{i}" / "agent.toml")
        assert await cli("masternode", "rewards", "--show-only", "--config", conf) == 0
        assert f"claimable     {expected} wei" in capsys.readouterr().out
        assert await cli("masternode", "rewards", "--config", conf) == 0
        assert f"claimed {expected} wei" in capsys.readouterr().out
    assert counts[first] == 3 and counts[out_epoch] == 2 and counts[back] == 3
    # In the epochs it was out the others shared the whole reward, it got nothing.
    assert c.call(layer.rewards, "share", out_epoch) == (REWARD // 2,)
