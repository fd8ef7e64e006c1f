"""Single forwarded requests coalesced into batches at a real anvil, through a counting proxy
that proves how many posts reach the node."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from agent.chainclient.anvil import LocalAnvil
from agent.chainclient.forward import Forwarder, ForwardPolicy
from agent.chainclient.rpc import RpcClient
from agent.metrics import Metrics
from tests.integration.chainclient.conftest import CountingProxy
from tests.integration.conftest import async_wait_until


def rpc(method: str, params: list[Any] | None = None, rid: int = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "method": method, "params": params or []}


async def direct(anvil: LocalAnvil, body: Any) -> Any:
    async with RpcClient(anvil.url) as c:
        return json.loads(await c.post(json.dumps(body).encode()))


async def test_concurrent_single_requests_share_one_round_trip_and_keep_their_ids(
    counting_proxy: CountingProxy, anvil: LocalAnvil
) -> None:
    async with RpcClient(counting_proxy.url) as c:
        fwd = Forwarder(c, ForwardPolicy(), Metrics())
        who = "0x" + "00" * 20
        reqs = [
            rpc("eth_chainId", rid=1),
            rpc("eth_blockNumber", rid=1),  # the same id from another client
            {**rpc("eth_getBalance", [who, "latest"]), "id": "a"},
            rpc("eth_getBalance", ["not-an-address", "latest"], rid=4),  # the node's error
            rpc("eth_gasPrice", rid=5),
        ]
        answers = await asyncio.gather(
            *(fwd.handle(f"c{i}", json.dumps(r).encode(), "test") for i, r in enumerate(reqs))
        )
        # All five went to the node as one batch, in one HTTP request.
        assert counting_proxy.posts == 1 and fwd.coalescer.batches == 1
        for req, raw in zip(reqs, answers, strict=True):
            assert raw is not None
            got = json.loads(raw)
            want = await direct(anvil, req)
            assert got["id"] == req["id"]
            assert ("error" in got) == ("error" in want)
            if "result" in want:
                assert got == want


async def test_a_slow_call_does_not_hold_the_requests_behind_it(
    counting_proxy: CountingProxy,
) -> None:
    """One post is under way while the node answers quickly; when it is slow, the requests
    waiting behind it go in a post of their own."""
    release = asyncio.Event()
    counting_proxy.hold["eth_blockNumber"] = release
    async with RpcClient(counting_proxy.url) as c:
        fwd = Forwarder(c, ForwardPolicy(), Metrics())
        slow = asyncio.create_task(
            fwd.handle("c0", json.dumps(rpc("eth_blockNumber")).encode(), "t")
        )
        await async_wait_until(lambda: counting_proxy.posts == 1, 10, "the slow call at the node")
        fast = [rpc("eth_chainId", rid=i) for i in range(3)]
        # Answered while the slow call is still held at the node (a hang here is the failure).
        answers = await asyncio.wait_for(
            asyncio.gather(
                *(fwd.handle(f"c{i}", json.dumps(r).encode(), "t") for i, r in enumerate(fast))
            ),
            10,
        )
        assert not slow.done()
        assert [json.loads(a or b"")["result"] for a in answers] == ["0x7a69"] * 3
        assert fwd.coalescer.lanes_opened == 1 and counting_proxy.posts == 2
        release.set()
        assert json.loads(await slow or b"")["result"] == "0x0"
