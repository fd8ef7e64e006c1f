"""Heads and logs from a real anvil over WebSocket and by polling: order, gap fill after a cut
link, a reorg made by evm_revert, and anvil killed and restarted under a running watcher."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agent.chainclient.anvil import LocalAnvil
from agent.chainclient.rpc import RpcClient
from agent.chainclient.subscribe import ChainWatcher, Feed, Head
from agent.chainclient.tx import encode_call, event_topic
from tests.integration.chainclient.conftest import Deployed, TcpCut, dev_tx, receipt_of


async def take(feed: Feed[Any], n: int, limit: float = 10.0) -> list[Any]:
    return [await asyncio.wait_for(feed.get(), limit) for _ in range(n)]


async def heads_until(
    feed: Feed[Head], number: int, after: int = -1, limit: float = 10.0
) -> list[Head]:
    """Heads from the feed up to `number`, leaving out those at or below `after`."""
    out: list[Head] = []
    while not out or out[-1].number < number:
        h = await asyncio.wait_for(feed.get(), limit)
        if h.number > after:
            out.append(h)
    return out


class Running:
    def __init__(self, watcher: ChainWatcher, task: asyncio.Task[None], rpc: RpcClient) -> None:
        self.w, self.task, self.rpc = watcher, task, rpc


async def start_watcher(
    http_url: str, ws_url: str | None, counter: Deployed | None = None
) -> AsyncIterator[tuple[Running, Feed[Head], Feed[dict[str, Any]] | None]]:
    rpc = RpcClient(http_url, timeout=2.0)
    w = ChainWatcher(rpc, ws_url, poll_interval_s=0.05, backoff=(0.05, 0.2))
    heads = w.heads()
    logs = None
    if counter is not None:
        logs = w.logs(
            address=counter.address, topics=[event_topic(counter.artifact.event("Incremented"))]
        )
    task = asyncio.create_task(w.run())
    await asyncio.wait_for(w.connected.wait(), 10)
    try:
        yield Running(w, task, rpc), heads, logs
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await rpc.close()


def increment(node: LocalAnvil, c: Deployed) -> None:
    tx = dev_tx(node, c.address, encode_call(c.artifact.function("increment")), gas=100_000)
    node.rpc("eth_sendRawTransaction", [tx.raw_hex])
    receipt_of(node, tx.hash_hex)


@pytest.mark.parametrize("mode", ["ws", "poll"])
async def test_heads_and_logs_in_order(anvil: LocalAnvil, counter: Deployed, mode: str) -> None:
    ws = anvil.ws_url if mode == "ws" else None
    async for r, heads, logs in start_watcher(anvil.url, ws, counter):
        assert logs is not None
        assert r.w.mode == mode
        start = r.w.head
        assert start is not None
        await asyncio.to_thread(increment, anvil, counter)
        await asyncio.to_thread(increment, anvil, counter)
        got = await heads_until(heads, start.number + 2, after=start.number)
        assert [h.number for h in got] == [start.number + 1, start.number + 2]
        for a, b in itertools.pairwise(got):
            assert b.parent_hash == a.hash
        evs = await take(logs, 2)
        assert [int(e["data"], 16) for e in evs] == [1, 2]
        assert r.w.block_hash(start.number + 2) == got[-1].hash


async def test_gap_filled_after_the_link_is_cut(anvil: LocalAnvil, counter: Deployed) -> None:
    link = TcpCut(anvil.port)
    await link.restore()
    async for r, heads, logs in start_watcher(anvil.url, f"ws://127.0.0.1:{link.port}", counter):
        assert logs is not None and r.w.mode == "ws"
        start = r.w.head
        assert start is not None
        await link.cut()
        # While the WebSocket is down the node goes on: three blocks, one of them with a log.
        await asyncio.to_thread(increment, anvil, counter)
        anvil.rpc("evm_mine")
        anvil.rpc("evm_mine")
        await link.restore()
        got = await heads_until(heads, start.number + 3, after=start.number)
        assert [h.number for h in got] == [start.number + 1, start.number + 2, start.number + 3]
        (ev,) = await take(logs, 1)
        assert int(ev["data"], 16) == 1 and int(ev["blockNumber"], 16) == start.number + 1
        assert r.w.metrics.get("chain_link_lost") >= 1
    await link.cut()


async def test_reorg_is_reported_and_the_new_branch_delivered(anvil: LocalAnvil) -> None:
    async for r, heads, _ in start_watcher(anvil.url, anvil.ws_url):
        reorgs = r.w.reorgs()
        base = r.w.head
        assert base is not None
        snap = anvil.rpc("evm_snapshot")
        anvil.rpc("evm_mine")
        anvil.rpc("evm_mine")
        old = await heads_until(heads, base.number + 2, after=base.number)
        anvil.rpc("evm_revert", [snap])
        # The new branch: different timestamps give different hashes at the same heights.
        for i in range(3):
            anvil.rpc("evm_mine", [old[-1].timestamp + 100 + i])
        new = await heads_until(heads, base.number + 3, after=base.number)
        (reorg,) = await take(reorgs, 1)
        assert reorg.ancestor == base.number and reorg.depth == 2
        assert reorg.old_head == old[-1].hash
        assert [h.number for h in new] == [base.number + 1, base.number + 2, base.number + 3]
        assert new[0].parent_hash == base.hash and new[0].hash != old[-2].hash
        assert r.w.block_hash(base.number + 2) == new[1].hash


async def test_anvil_killed_and_restarted_under_the_watcher(anvil: LocalAnvil) -> None:
    async for r, heads, _ in start_watcher(anvil.url, anvil.ws_url):
        anvil.rpc("evm_mine")
        await heads_until(heads, 1)
        anvil.kill()
        for _ in range(200):
            if not r.w.connected.is_set():
                break
            await asyncio.sleep(0.02)
        assert not r.w.connected.is_set()
        anvil.start()  # a fresh chain on the same port
        await asyncio.wait_for(r.w.connected.wait(), 10)
        for _ in range(3):
            anvil.rpc("evm_mine")
        got = await heads_until(heads, 3)
        assert got[-1].hash == anvil.rpc("eth_getBlockByNumber", ["0x3", False])["hash"]  # type: ignore[index]
        assert r.w.mode == "ws"
