"""Seven agents as masternodes on one anvil: a dApp approved by the agents' votes becomes
reachable through every agent's forwarding; a contract not approved is refused by all of them.
(Proof of service and rewards at fleet scale: test_fleet.py, agents as processes.)"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.attest.keys import GatewayKey
from agent.chainclient.anvil import LocalAnvil
from agent.chainclient.contractclient import ContractClient
from agent.chainclient.contracts import load_artifact
from agent.chainclient.tx import Eip1559Tx, encode_call, event_topic
from agent.localbroker import LocalMosquitto
from tests.integration.chainclient.test_forward import Dapp, rpc
from tests.integration.conftest import Device, agent_config_dict, async_wait_until
from tests.integration.masternode.conftest import Layer, deploy_layer
from tests.integration.oracle.conftest import COLLATERAL, Chain

AGENTS = 7


def fleet_config(
    i: int, local: LocalMosquitto, upstream: LocalMosquitto, node: LocalAnvil, layer: Layer
) -> dict[str, Any]:
    return agent_config_dict(
        local,
        upstream,
        sources={
            "mqtt": {"url": local.url, "allowed_devices": ["dev-1"], "topics": [f"site{i}/+/up"]}
        },
        bridge={"enabled": False},
        chain={"enabled": True, "rpc_url": node.url, "ws_url": node.ws_url, "poll_interval": 0.2},
        oracle={"enabled": True, "mqtt": {"url": upstream.url}},
        forward={"enabled": True, "mqtt": {"url": upstream.url}},
        masternode={
            "registry": layer.registry.address,
            "rewards": layer.rewards.address,
            "dapps": layer.dapps.address,
            "heartbeat_every_blocks": 15,
            "check_interval": 0.2,
        },
    )


async def test_a_dapp_approved_by_vote_is_reachable_through_every_agent_and_no_other(
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    device: Device,
    anvil: LocalAnvil,
    contracts_built: Path,
    start_agent: Callable[..., Any],
    tmp_path: Path,
) -> None:
    c = Chain(anvil)
    layer = deploy_layer(c)
    keys = [GatewayKey.generate() for _ in range(AGENTS)]
    agents = []
    for i, key in enumerate(keys):
        c.fund(key)
        vrf = bytes([2]) + key.public_key_uncompressed[1:33]
        c.transact(key, layer.registry, "register", vrf, value=COLLATERAL)
        agents.append(
            await start_agent(
                fleet_config(i, local_broker, upstream_broker, anvil, layer), key, name=f"mn{i}"
            )
        )
    # dApp approval: proposed, approved by four agents' votes (their own keys and
    # senders), reachable through every agent; another contract refused by all.
    target = c.deploy("Counter")
    other = c.deploy("Counter")
    c.transact(c.dev, layer.dapps, "propose", "meter", [target.address])
    for a in agents[:4]:
        assert a.agent.rpc is not None and a.agent.tx_sender is not None
        client = ContractClient(
            a.agent.rpc,
            a.agent.tx_sender,
            layer.dapps.address,
            load_artifact("DappRegistry"),
        )
        await client.transact("vote", 0, True)
    approvals = [a.agent.dapp_approvals for a in agents]
    await async_wait_until(
        lambda: all(ap is not None and target.address.lower() in ap.allowed for ap in approvals),
        30,
        "every agent following the approval",
    )
    user = GatewayKey.generate()
    c.fund(user)
    inc = encode_call(target.art.function("increment"))
    for i, key in enumerate(keys):
        d = Dapp(upstream_broker.port, v5=True, gateway=key.address)
        try:
            for to, ok in ((other.address, False), (target.address, True)):
                raw = Eip1559Tx(anvil.chain_id, i, 10**9, 50 * 10**9, 200_000, to, 0, inc).sign(
                    user
                )
                answer = await d.ask(rpc("eth_sendRawTransaction", [raw.raw_hex]))
                if ok:
                    assert answer.get("result") == raw.hash_hex, answer
                else:
                    assert answer["error"]["data"]["reason"] == "dapp_not_approved"

            def mined(n: int = i + 1) -> bool:
                return bool(c.call(target, "number")[0] == n)

            await async_wait_until(mined, 30, "the call mined")
        finally:
            d.close()
    assert c.call(other, "number") == (0,)
    approved = event_topic(layer.dapps.art.event("Approved"))
    logs = anvil.rpc(
        "eth_getLogs",
        [{"address": layer.dapps.address, "topics": [approved], "fromBlock": "0x0"}],
    )
    assert isinstance(logs, list) and len(logs) == 1
