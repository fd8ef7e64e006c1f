"""Helpers for the chain client tests: a deployed Counter on a real anvil, signed with anvil's
funded development key, and a counting JSON-RPC proxy (a real HTTP server in front of anvil)
that records every method that reaches the node."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from agent.attest.keys import GatewayKey
from agent.chainclient.anvil import DEV_PRIVATE_KEY, LocalAnvil
from agent.chainclient.contracts import Artifact, load_artifact
from agent.chainclient.tx import Eip1559Tx, SignedTx, contract_address
from agent.localbroker import free_port
from tests.integration.conftest import wait_until


def receipt_of(node: LocalAnvil, tx_hash: str) -> dict[str, Any]:
    """anvil mines right after accepting a transaction, but not within the same call."""
    found: list[Any] = []

    def mined() -> bool:
        found.append(node.rpc("eth_getTransactionReceipt", [tx_hash]))
        return found[-1] is not None

    wait_until(mined, 10, f"receipt of {tx_hash}")
    assert isinstance(found[-1], dict)
    return found[-1]


def dev_tx(node: LocalAnvil, to: str | None, data: bytes, gas: int = 1_000_000) -> SignedTx:
    """A transaction from anvil's funded development account, signed by our EIP-1559 code."""
    key = GatewayKey.from_bytes(DEV_PRIVATE_KEY)
    nonce = int(str(node.rpc("eth_getTransactionCount", [key.address, "pending"])), 16)
    return Eip1559Tx(
        chain_id=node.chain_id,
        nonce=nonce,
        max_priority_fee_per_gas=10**9,
        max_fee_per_gas=10 * 10**9,
        gas=gas,
        to=to,
        data=data,
    ).sign(key)


@dataclass
class Deployed:
    address: str
    artifact: Artifact


def deploy_counter(node: LocalAnvil, artifacts: Path) -> Deployed:
    art = load_artifact("Counter", artifacts)
    tx = dev_tx(node, None, art.bytecode)
    node.rpc("eth_sendRawTransaction", [tx.raw_hex])
    assert receipt_of(node, tx.hash_hex)["status"] == "0x1"
    return Deployed(
        contract_address(GatewayKey.from_bytes(DEV_PRIVATE_KEY).address, tx.tx.nonce), art
    )


@pytest.fixture
def counter(anvil: LocalAnvil, contracts_built: Path) -> Deployed:
    return deploy_counter(anvil, contracts_built)


class CountingProxy:
    """An HTTP JSON-RPC proxy that counts the methods it passes to the node behind it. A post
    holding a method in `hold` waits until that event is set (a slow call, on cue)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.methods: collections.Counter[str] = collections.Counter()
        self.posts = 0
        self.hold: dict[str, asyncio.Event] = {}
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.posts += 1
        parsed = json.loads(body)
        for item in parsed if isinstance(parsed, list) else [parsed]:
            self.methods[str(item.get("method"))] += 1
            if (held := self.hold.get(str(item.get("method")))) is not None:
                await held.wait()
        assert self._session is not None
        async with self._session.post(
            self.target, data=body, headers={"Content-Type": "application/json"}
        ) as resp:
            return web.Response(body=await resp.read(), content_type="application/json")

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_post("/", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()


@pytest.fixture
async def counting_proxy(anvil: LocalAnvil) -> AsyncIterator[CountingProxy]:
    p = CountingProxy(anvil.url)
    await p.start()
    yield p
    await p.stop()


class TcpCut:
    """A loopback TCP relay in front of a node whose link a test can cut and restore (the
    node keeps running: blocks mined meanwhile are what the client must catch up on)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            w.close()

    async def _client(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            w.close()
            return
        self._writers |= {w, uw}
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(self._pipe(r, uw), self._pipe(ur, w))

    async def restore(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port)

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in self._writers:
            w.transport.abort()
        self._writers.clear()
