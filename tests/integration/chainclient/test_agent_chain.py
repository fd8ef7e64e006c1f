"""The whole agent with [chain] and [forward] enabled, against a real anvil and Mosquitto:
dApp requests answered over MQTT and CoAP, and the agent's own nonces continuing across a
restart while the node lost every pending transaction."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiocoap

from agent.attest.keys import GatewayKey
from agent.chainclient.anvil import LocalAnvil
from agent.chainclient.rpc import hex_int
from agent.chainclient.tx import encode_call
from agent.localbroker import LocalMosquitto, free_port
from tests.integration.chainclient.conftest import Deployed
from tests.integration.chainclient.test_forward import Dapp, rpc
from tests.integration.chainclient.test_sender import deploy_counter_mined
from tests.integration.conftest import agent_config_dict, async_wait_until


def chain_config(
    local: LocalMosquitto, upstream: LocalMosquitto, node: LocalAnvil, coap_port: int
) -> dict[str, Any]:
    return agent_config_dict(
        local,
        upstream,
        chain={"enabled": True, "rpc_url": node.url, "ws_url": node.ws_url, "poll_interval": 0.05},
        forward={"enabled": True, "coap": {"enabled": True, "bind": f"127.0.0.1:{coap_port}"}},
    )


async def test_agent_forwards_dapp_requests(
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    anvil: LocalAnvil,
    start_agent: Callable[..., Any],
) -> None:
    key = GatewayKey.generate()
    port = free_port()
    await start_agent(chain_config(local_broker, upstream_broker, anvil, port), key)
    d = Dapp(local_broker.port, v5=True, gateway=key.address)
    try:
        assert await d.ask(rpc("eth_chainId")) == {"jsonrpc": "2.0", "id": 1, "result": "0x7a69"}
        denied = await d.ask(rpc("anvil_setBalance", [key.address, "0x1"]))
        assert denied["error"]["code"] == -32601
        assert anvil.rpc("eth_getBalance", [key.address, "latest"]) == "0x0"
    finally:
        d.close()
    ctx = await aiocoap.Context.create_client_context()
    try:
        msg = aiocoap.Message(
            code=aiocoap.POST,
            uri=f"coap://127.0.0.1:{port}/rpc",
            payload=json.dumps(rpc("eth_blockNumber")).encode(),
        )
        resp = await ctx.request(msg).response
        assert json.loads(resp.payload) == {"jsonrpc": "2.0", "id": 1, "result": "0x0"}
    finally:
        await ctx.shutdown()


async def test_nonces_continue_across_an_agent_restart(
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    anvil_no_mining: LocalAnvil,
    contracts_built: Path,
    start_agent: Callable[..., Any],
) -> None:
    node = anvil_no_mining
    counter: Deployed = await asyncio.to_thread(deploy_counter_mined, node, contracts_built)
    key = GatewayKey.generate()
    node.rpc("anvil_setBalance", [key.address, hex(10**20)])
    inc = encode_call(counter.artifact.function("increment"))
    cfg = chain_config(local_broker, upstream_broker, node, free_port())

    first = await start_agent(cfg, key, name="gw")
    sender = first.agent.tx_sender
    ids = [await sender.send(counter.address, inc, gas=100_000) for _ in range(2)]
    assert [(await sender.store.get(i, 31337)).tx.nonce for i in ids] == [0, 1]
    await first.stop()

    # While the agent is down the node forgets both pending transactions.
    node.rpc("anvil_dropAllTransactions")
    assert hex_int(node.rpc("eth_getTransactionCount", [key.address, "pending"])) == 0

    second = await start_agent(cfg, key, name="gw")
    sender = second.agent.tx_sender
    third = await sender.send(counter.address, inc, gas=100_000)
    # Not 0 again (what the node alone would say): the store remembers 0 and 1.
    assert (await sender.store.get(third, 31337)).tx.nonce == 2

    # The restarted agent sends 0 and 1 again by itself (they were dropped): mine them all.
    def pooled() -> int:
        pool = node.rpc("txpool_content")
        assert isinstance(pool, dict)
        mine = {a.lower(): txs for a, txs in pool["pending"].items()}
        return len(mine.get(key.address, {}))

    for _ in range(200):
        if pooled() == 3:
            break
        await asyncio.sleep(0.05)
    assert pooled() == 3
    node.rpc("evm_mine")
    receipts = [await asyncio.wait_for(sender.wait(i), 10) for i in (*ids, third)]
    assert all(r["status"] == "0x1" for r in receipts)
    assert hex_int(node.rpc("eth_getTransactionCount", [key.address, "latest"])) == 3
    data = "0x" + encode_call(counter.artifact.function("number")).hex()
    assert hex_int(node.rpc("eth_call", [{"to": counter.address, "data": data}, "latest"])) == 3


async def test_anvil_killed_mid_traffic_then_everything_resumes_without_an_agent_restart(
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    anvil: LocalAnvil,
    start_agent: Callable[..., Any],
) -> None:
    key = GatewayKey.generate()
    running = await start_agent(
        chain_config(local_broker, upstream_broker, anvil, free_port()), key
    )
    watcher = running.agent.chain_watcher
    heads = watcher.heads()
    await asyncio.wait_for(watcher.connected.wait(), 10)
    d = Dapp(local_broker.port, v5=True, gateway=key.address)
    answers: list[dict[str, Any]] = []
    stop = asyncio.Event()

    async def traffic() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            answers.append(await d.ask(rpc("eth_blockNumber", rid=i)))  # waits 10 s at most

    try:
        task = asyncio.create_task(traffic())
        await async_wait_until(lambda: len(answers) >= 20, 30, "answers before the kill")
        anvil.kill()
        k = len(answers)
        await async_wait_until(
            lambda: len(answers) >= k + 20 and any("error" in a for a in answers[k:]),
            30,
            "answers while the node is down",
        )
        await asyncio.to_thread(anvil.start)
        r = len(answers)
        await async_wait_until(
            lambda: any("result" in a for a in answers[r:]), 30, "answers after the restart"
        )
        stop.set()
        await task
    finally:
        d.close()
    # Every request was answered (none hung); while the node was down, with -32002 at once.
    errors = [a for a in answers if "error" in a]
    assert errors and all(a["error"]["code"] == -32002 for a in errors)
    assert {a["error"]["data"]["reason"] for a in errors} == {"node_unreachable"}
    assert "result" in answers[-1]
    # Subscriptions resume too: the restarted (fresh) node's new blocks arrive as heads.
    anvil.rpc("evm_mine")
    anvil.rpc("evm_mine")
    while True:
        h = await asyncio.wait_for(heads.get(), 10)
        if h.number == 2 and h.hash == anvil.rpc("eth_getBlockByNumber", ["0x2", False])["hash"]:  # type: ignore[index]
            break
    assert running.agent.metrics.get("chain_link_lost") >= 1
