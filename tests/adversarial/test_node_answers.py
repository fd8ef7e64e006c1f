"""What the node (or a proxy in front of it) answers is passed to a dApp only when it is a
JSON-RPC answer. A node that answers HTTP 200 with an HTML page, a truncated body or a bare
string is a fault anvil cannot be made to produce: a small real HTTP server plays that node."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from agent.chainclient.forward import Forwarder, ForwardPolicy
from agent.chainclient.rpc import RpcClient
from agent.metrics import Metrics


@pytest.fixture
async def broken_node() -> AsyncIterator[tuple[str, list[bytes]]]:
    """A node whose next answer is the first of `bodies` (HTTP 200, application/json)."""
    bodies: list[bytes] = []

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=bodies.pop(0), content_type="application/json")

    app = web.Application()
    app.router.add_post("/", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/", bodies
    await runner.cleanup()


@pytest.mark.parametrize(
    "body",
    [b"<html>502 Bad Gateway</html>", b'{"jsonrpc":"2.0","id":1,"res', b'"hello"', b"[]"],
    ids=["html", "truncated", "string", "empty-list"],
)
async def test_a_non_json_rpc_answer_from_the_node_becomes_a_json_rpc_error(
    broken_node: tuple[str, list[bytes]], body: bytes
) -> None:
    url, bodies = broken_node
    async with RpcClient(url) as rpc:
        fwd = Forwarder(rpc, ForwardPolicy(), Metrics())
        bodies.append(body)
        request = {"jsonrpc": "2.0", "id": 7, "method": "eth_chainId", "params": []}
        answer = await fwd.handle("mqtt:alice", json.dumps(request).encode(), "mqtt")
    assert answer is not None and body not in answer
    got = json.loads(answer)
    assert got["id"] == 7
    assert got["error"]["code"] == -32002
    assert got["error"]["data"]["reason"] == "node_error"
