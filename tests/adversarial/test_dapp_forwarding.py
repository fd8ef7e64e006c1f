"""A dApp user sending transactions through a whole agent's forwarding (real Mosquitto, real
anvil, the agent in-process) to contracts the masternodes did not approve: refused before the
node sees them; approved by vote, then admitted; revoked by vote, refused again without a
restart; and after a restart the agent catches up on what changed while it was down."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import rlp

from agent.attest.keys import GatewayKey
from agent.chainclient.anvil import LocalAnvil
from agent.chainclient.tx import Eip1559Tx, encode_call
from agent.localbroker import LocalMosquitto
from tests.integration.chainclient.test_forward import Dapp, rpc
from tests.integration.conftest import agent_config_dict, async_wait_until
from tests.integration.masternode.conftest import Layer, deploy_layer
from tests.integration.oracle.conftest import Chain, Contract


def forwarding_config(broker: LocalMosquitto, node: LocalAnvil, layer: Layer) -> dict[str, Any]:
    return agent_config_dict(
        broker,
        broker,
        bridge={"enabled": False},
        chain={"enabled": True, "rpc_url": node.url, "ws_url": node.ws_url, "poll_interval": 0.05},
        forward={"enabled": True},
        masternode={"dapps": layer.dapps.address, "heartbeat": False},
    )


class User:
    """A dApp user's key; raw transactions signed by our EIP-1559 code."""

    def __init__(self, chain: Chain) -> None:
        self.chain = chain
        self.key = GatewayKey.generate()
        chain.fund(self.key)
        self.nonce = 0

    def tx(self, to: str | None, data: bytes) -> str:
        signed = Eip1559Tx(
            self.chain.node.chain_id, self.nonce, 10**9, 50 * 10**9, 300_000, to, 0, data
        ).sign(self.key)
        return signed.raw_hex

    def sent(self) -> None:
        self.nonce += 1


def counter_value(chain: Chain, c: Contract) -> int:
    return int(chain.call(c, "number")[0])


async def test_transactions_only_to_approved_dapps_and_revocation_without_restart(
    local_broker: LocalMosquitto,
    anvil: LocalAnvil,
    start_agent: Callable[..., Any],
    contracts_built: Path,
) -> None:
    layer = deploy_layer(Chain(anvil))
    c = layer.chain
    nodes = [layer.masternode() for _ in range(3)]
    approved_target = c.deploy("Counter")
    other = c.deploy("Counter")
    inc = encode_call(approved_target.art.function("increment"))
    c.transact(c.dev, layer.dapps, "propose", "meter", [approved_target.address])
    key = GatewayKey.generate()
    cfg = forwarding_config(local_broker, anvil, layer)
    agent = await start_agent(cfg, key)
    approvals = agent.agent.dapp_approvals
    assert approvals is not None
    await async_wait_until(lambda: approvals.loaded, 30, "approvals read")
    user = User(c)
    d = Dapp(local_broker.port, v5=True, gateway=key.address)
    try:

        async def send(to: str | None, data: bytes = inc) -> dict[str, Any]:
            out: dict[str, Any] = await d.ask(rpc("eth_sendRawTransaction", [user.tx(to, data)]))
            return out

        # Proposed, not approved: refused, the node never sees it.
        refused = await send(approved_target.address)
        assert refused["error"]["data"]["reason"] == "dapp_not_approved"
        assert anvil.rpc("eth_getTransactionCount", [user.key.address, "latest"]) == "0x0"
        # A minority votes: still refused.
        c.transact(nodes[0], layer.dapps, "vote", 0, True)
        assert (await send(approved_target.address))["error"]["data"]["reason"] == (
            "dapp_not_approved"
        )
        # The majority: admitted (the agent follows the Approved log), mined.
        c.transact(nodes[1], layer.dapps, "vote", 0, True)
        await async_wait_until(
            lambda: approved_target.address.lower() in approvals.allowed, 30, "approval seen"
        )
        ok = await send(approved_target.address)
        assert "result" in ok, ok
        user.sent()
        await async_wait_until(
            lambda: counter_value(c, approved_target) == 1, 30, "the approved call mined"
        )
        # Another contract, a contract creation, a malformed transaction: refused; reads of
        # any contract are answered.
        assert (await send(other.address))["error"]["data"]["reason"] == "dapp_not_approved"
        assert (await send(None, b"\x60\x00"))["error"]["data"]["reason"] == "contract_creation"
        garbage = await d.ask(rpc("eth_sendRawTransaction", ["0x02" + rlp.encode([1, 2]).hex()]))
        assert garbage["error"]["data"]["reason"] == "undecodable_transaction"
        batch = await d.ask(
            [
                rpc("eth_sendRawTransaction", [user.tx(other.address, inc)], rid=1),
                rpc(
                    "eth_call",
                    [
                        {
                            "to": other.address,
                            "data": "0x" + encode_call(other.art.function("number")).hex(),
                        },
                        "latest",
                    ],
                    rid=2,
                ),
            ]
        )
        assert batch[0]["error"]["data"]["reason"] == "dapp_not_approved"
        assert int(batch[1]["result"], 16) == 0
        assert counter_value(c, other) == 0
        # Revoked by a majority: refused again, no restart.
        c.transact(nodes[0], layer.dapps, "vote", 0, False)
        c.transact(nodes[2], layer.dapps, "vote", 0, False)
        await async_wait_until(
            lambda: approved_target.address.lower() not in approvals.allowed, 30, "revocation"
        )
        assert (await send(approved_target.address))["error"]["data"]["reason"] == (
            "dapp_not_approved"
        )
        assert counter_value(c, approved_target) == 1
    finally:
        d.close()

    # Approved again while the agent is down: after a restart it is admitted at once.
    await agent.stop()
    c.transact(nodes[1], layer.dapps, "vote", 0, True)  # already approve: a no-op stance
    c.transact(nodes[2], layer.dapps, "vote", 0, True)
    assert c.call(layer.dapps, "proposal", 0)[5] is True
    again = await start_agent(cfg, key, name="again")
    approvals = again.agent.dapp_approvals
    assert approvals is not None
    await async_wait_until(lambda: approvals.loaded, 30, "approvals read after the restart")
    assert approved_target.address.lower() in approvals.allowed
    d = Dapp(local_broker.port, v5=True, gateway=key.address)
    try:
        ok = await d.ask(rpc("eth_sendRawTransaction", [user.tx(approved_target.address, inc)]))
        assert "result" in ok, ok
    finally:
        d.close()
    await async_wait_until(
        lambda: counter_value(c, approved_target) == 2, 30, "the call after the restart mined"
    )
