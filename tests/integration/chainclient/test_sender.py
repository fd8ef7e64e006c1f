"""The agent's own transactions against a real anvil: receipts with confirmations, a
transaction dropped from the pool replaced with higher fees, "nonce too low" recovered, and
nonces continuing across a restart even when the node lost what was pending."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from agent.attest.keys import GatewayKey
from agent.chainclient.anvil import LocalAnvil
from agent.chainclient.rpc import RpcClient, hex_int
from agent.chainclient.sender import TxSender
from agent.chainclient.tx import Eip1559Tx, encode_call
from agent.errors import TransactionError
from tests.integration.chainclient.conftest import Deployed, deploy_counter


def fund(node: LocalAnvil, key: GatewayKey) -> None:
    node.rpc("anvil_setBalance", [key.address, hex(10**20)])


@pytest.fixture
async def rpc_of() -> AsyncIterator[Callable[[LocalAnvil], RpcClient]]:
    made: list[RpcClient] = []

    def make(node: LocalAnvil) -> RpcClient:
        c = RpcClient(node.url, timeout=3.0)
        made.append(c)
        return c

    yield make
    for c in made:
        await c.close()


def sender(rpc: RpcClient, key: GatewayKey, store: Path, **kw: float) -> TxSender:
    return TxSender(rpc, key, 31337, store, poll_interval_s=0.05, **kw)  # type: ignore[arg-type]


async def number(rpc: RpcClient, c: Deployed) -> int:
    data = "0x" + encode_call(c.artifact.function("number")).hex()
    return hex_int(await rpc.call("eth_call", [{"to": c.address, "data": data}, "latest"]))


async def test_send_and_wait_with_confirmations(
    anvil: LocalAnvil, counter: Deployed, tmp_path: Path, rpc_of: Callable[[LocalAnvil], RpcClient]
) -> None:
    key = GatewayKey.generate()
    fund(anvil, key)
    rpc = rpc_of(anvil)
    s = sender(rpc, key, tmp_path / "chain.sqlite")
    await s.check_chain()
    tx_id = await s.send(counter.address, encode_call(counter.artifact.function("increment")))
    waiter = asyncio.create_task(s.wait(tx_id, confirmations=3))
    await asyncio.sleep(0.3)
    assert not waiter.done()  # one block so far; three are wanted
    anvil.rpc("evm_mine")
    anvil.rpc("evm_mine")
    receipt = await asyncio.wait_for(waiter, 10)
    assert receipt["status"] == "0x1"
    assert hex_int(await rpc.call("eth_blockNumber")) - hex_int(receipt["blockNumber"]) + 1 >= 3
    assert await number(rpc, counter) == 1
    # A call that would revert is refused before it takes a nonce.
    with pytest.raises(TransactionError, match="would fail"):
        await s.send(counter.address, b"\xde\xad\xbe\xef")
    tx2 = await s.send(counter.address, encode_call(counter.artifact.function("increment")))
    await s.wait(tx2)
    assert (await s.store.get(tx2, 31337)).tx.nonce == 1
    await s.close()


async def test_dropped_transaction_is_replaced_with_higher_fees(
    anvil_no_mining: LocalAnvil,
    contracts_built: Path,
    tmp_path: Path,
    rpc_of: Callable[[LocalAnvil], RpcClient],
) -> None:
    node = anvil_no_mining
    counter = await asyncio.to_thread(deploy_counter_mined, node, contracts_built)
    key = GatewayKey.generate()
    fund(node, key)
    rpc = rpc_of(node)
    s = sender(rpc, key, tmp_path / "chain.sqlite")
    tx_id = await s.send(counter.address, encode_call(counter.artifact.function("increment")))
    first = await s.store.get(tx_id, 31337)
    assert await rpc.call("eth_getTransactionByHash", [first.hash]) is not None
    node.rpc("anvil_dropTransaction", [first.hash])
    assert await rpc.call("eth_getTransactionByHash", [first.hash]) is None
    # The next look notices it gone and sends a replacement: same nonce, higher fees.
    after = await s.check(tx_id)
    assert after.hash != first.hash and after.tx.nonce == first.tx.nonce
    assert after.tx.max_fee_per_gas > first.tx.max_fee_per_gas
    assert after.tx.max_priority_fee_per_gas > first.tx.max_priority_fee_per_gas
    pooled = await rpc.call("eth_getTransactionByHash", [after.hash])
    assert pooled is not None and pooled["blockNumber"] is None
    node.rpc("evm_mine")
    receipt = await asyncio.wait_for(s.wait(tx_id), 10)
    assert receipt["transactionHash"] == after.hash
    assert s.metrics.get("own_tx_replaced", reason="dropped") == 1
    assert await number(rpc, counter) == 1
    await s.close()


def deploy_counter_mined(node: LocalAnvil, artifacts: Path) -> Deployed:
    """deploy_counter on a node that mines only when told to."""
    stop = threading.Event()

    def miner() -> None:
        while not stop.wait(0.05):
            node.rpc("evm_mine")

    t = threading.Thread(target=miner)
    t.start()
    try:
        return deploy_counter(node, artifacts)
    finally:
        stop.set()
        t.join()


async def test_nonce_too_low_is_recovered(
    anvil: LocalAnvil, counter: Deployed, tmp_path: Path, rpc_of: Callable[[LocalAnvil], RpcClient]
) -> None:
    key = GatewayKey.generate()
    fund(anvil, key)
    rpc = rpc_of(anvil)
    s = sender(rpc, key, tmp_path / "chain.sqlite")
    assert await s.sync_nonce() == 0
    # The same key used elsewhere takes nonce 0 behind the sender's back.
    other = Eip1559Tx(31337, 0, 10**9, 10 * 10**9, 21_000, key.address, 1).sign(key)
    await rpc.call("eth_sendRawTransaction", [other.raw_hex])
    for _ in range(100):
        if await rpc.call("eth_getTransactionReceipt", [other.hash_hex]):
            break
        await asyncio.sleep(0.02)
    tx_id = await s.send(counter.address, encode_call(counter.artifact.function("increment")))
    receipt = await asyncio.wait_for(s.wait(tx_id), 10)
    assert (await s.store.get(tx_id, 31337)).tx.nonce == 1
    assert receipt["status"] == "0x1" and await number(rpc, counter) == 1
    assert s.metrics.get("own_tx_renonced") == 1
    await s.close()


async def test_a_stored_transaction_never_broadcast_is_sent_before_the_next_one(
    anvil: LocalAnvil, counter: Deployed, tmp_path: Path, rpc_of: Callable[[LocalAnvil], RpcClient]
) -> None:
    """An agent stopped between storing a transaction and broadcasting it leaves that state
    behind (here produced by storing one and not sending it); a command sending the next one
    without the watcher running would wait forever behind the unseen nonce."""
    key = GatewayKey.generate()
    fund(anvil, key)
    rpc = rpc_of(anvil)
    inc = encode_call(counter.artifact.function("increment"))
    stopped = sender(rpc, key, tmp_path / "chain.sqlite")
    tip, cap = await stopped.fees()
    lost = Eip1559Tx(31337, 0, tip, cap, 100_000, counter.address, 0, inc).sign(key)
    await stopped.open()
    await stopped.store.insert(lost, 0.0)
    await stopped.close()
    cli = sender(rpc, key, tmp_path / "chain.sqlite")
    await cli.check_unfinished()
    tx_id = await cli.send(counter.address, inc)
    assert (await cli.store.get(tx_id, 31337)).tx.nonce == 1
    await asyncio.wait_for(cli.wait(tx_id), 10)
    assert await number(rpc, counter) == 2
    await cli.close()
