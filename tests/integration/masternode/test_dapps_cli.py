"""`edgence-agent dapps`: list proposals with this node's stance, vote approve and revoke
(with the contract's reason when the node may not vote)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent.attest.keys import GatewayKey, write_key_file
from agent.chainclient.anvil import LocalAnvil
from agent.cli import main as cli_main
from agent.localbroker import LocalMosquitto
from tests.integration.conftest import agent_config_dict, to_toml
from tests.integration.masternode.conftest import Layer


def write_config(
    base: Path, key: GatewayKey, broker: LocalMosquitto, node: LocalAnvil, layer: Layer
) -> str:
    base.mkdir()
    write_key_file(base / "gateway.key", key)
    cfg = agent_config_dict(
        broker,
        broker,
        chain={"enabled": True, "rpc_url": node.url, "poll_interval": 0.05},
        masternode={"registry": layer.registry.address, "dapps": layer.dapps.address},
    )
    (base / "agent.toml").write_text(to_toml(cfg))
    return str(base / "agent.toml")


async def cli(*args: str) -> int:
    return await asyncio.to_thread(cli_main, list(args))


async def test_list_and_vote_until_approved_then_revoked(
    local_broker: LocalMosquitto,
    anvil: LocalAnvil,
    layer: Layer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    c = layer.chain
    nodes = [layer.masternode() for _ in range(3)]
    confs = [
        write_config(tmp_path / f"mn{i}", k, local_broker, anvil, layer)
        for i, k in enumerate(nodes)
    ]
    target = "0x" + "ab" * 20
    c.transact(c.dev, layer.dapps, "propose", "meter", [target])
    assert await cli("dapps", "--config", confs[0]) == 0
    out = capsys.readouterr().out
    assert "   0  not approved  'meter'  approve 0  revoke 0  this node: none" in out
    assert f"contract {target}" in out
    for conf in confs[:2]:
        assert await cli("dapps", "vote", "0", "approve", "--config", conf) == 0
    out = capsys.readouterr().out
    assert "APPROVED" in out and "this node: approve" in out
    outsider = GatewayKey.generate()
    c.fund(outsider)
    conf = write_config(tmp_path / "outsider", outsider, local_broker, anvil, layer)
    assert await cli("dapps", "vote", "0", "revoke", "--config", conf) == 2
    assert "vote: NotActive(" in capsys.readouterr().err
    for conf in confs[1:]:
        assert await cli("dapps", "vote", "0", "revoke", "--config", conf) == 0
    assert await cli("dapps", "list", "0", "--config", confs[2]) == 0
    assert "not approved  'meter'  approve 1  revoke 2  this node: revoke" in (
        capsys.readouterr().out
    )
