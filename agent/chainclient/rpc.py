"""Async Ethereum JSON-RPC over HTTP (aiohttp): one keep-alive connection pool, timeouts,
batches, and typed errors (NodeUnreachable, RpcTimeout, RpcError with the node's code).

A request that meets a connection the node has closed (a restarted node, an idle keep-alive
dropped) is sent once more on a fresh connection: every method the agent and the forwarder
use is idempotent (reads, and raw transactions, which a node recognises by hash).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from typing import Any

import aiohttp

from agent.errors import ChainError, NodeUnreachable, RpcError, RpcTimeout

JSON_HEADERS = {"Content-Type": "application/json"}


class ResponseTooLarge(ChainError):
    """The node's answer is larger than the caller allows."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"the node's response is larger than {limit} bytes")


def hex_int(v: Any) -> int:
    """A JSON-RPC quantity ("0x1a") as an int."""
    if not isinstance(v, str) or not v.startswith("0x"):
        raise ChainError(f"expected a hex quantity, got {v!r}")
    return int(v, 16)


class RpcClient:
    """`async with RpcClient(url) as rpc: await rpc.call("eth_blockNumber")`."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        connect_timeout: float = 2.0,
        max_response_bytes: int = 64 * 2**20,
        pool_size: int = 32,
        logger: logging.Logger | None = None,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_response_bytes = max_response_bytes
        self.pool_size = pool_size
        self.log = logger or logging.getLogger("agent.chainclient.rpc")
        self._ids = itertools.count(1)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> RpcClient:
        self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def open(self) -> None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.pool_size, keepalive_timeout=30),
                timeout=aiohttp.ClientTimeout(
                    total=self.timeout, sock_connect=self.connect_timeout
                ),
                # The node's answers are JSON passed on as they are; no cookies, no redirects.
                cookie_jar=aiohttp.DummyCookieJar(),
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(
        self, body: bytes, *, max_response_bytes: int | None = None, deadline: float | None = None
    ) -> bytes:
        """POST a JSON-RPC body as it is and return the node's body as it is."""
        limit = max_response_bytes or self.max_response_bytes
        for attempt in (1, 2):
            try:
                return await self._post_once(body, limit, deadline)
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                if attempt == 2 or isinstance(exc, aiohttp.ClientConnectorError):
                    raise NodeUnreachable(f"full node at {self.url}: {exc}") from None
        raise AssertionError("unreachable")

    async def _post_once(self, body: bytes, limit: int, deadline: float | None) -> bytes:
        self.open()
        assert self._session is not None
        kwargs: dict[str, Any] = {}
        if deadline is not None:  # seconds for this request instead of the client's timeout
            kwargs["timeout"] = aiohttp.ClientTimeout(
                total=deadline, sock_connect=min(deadline, self.connect_timeout)
            )
        try:
            async with self._session.post(
                self.url, data=body, headers=JSON_HEADERS, **kwargs
            ) as resp:
                if resp.content_length is not None and resp.content_length > limit:
                    raise ResponseTooLarge(limit)
                data = await resp.content.read(limit + 1)
                if len(data) > limit:
                    raise ResponseTooLarge(limit)
                if resp.status != 200 and not data.startswith((b"{", b"[")):
                    raise NodeUnreachable(
                        f"full node at {self.url} answered HTTP {resp.status}: {data[:200]!r}"
                    )
                return data
        except aiohttp.ClientConnectorError as exc:
            raise NodeUnreachable(
                f"full node at {self.url} refused the connection: {exc}"
            ) from None
        except TimeoutError:
            raise RpcTimeout(
                f"full node at {self.url} did not answer within {deadline or self.timeout}s"
            ) from None

    async def call(self, method: str, params: list[Any] | None = None) -> Any:
        """One request; the result, or RpcError carrying the node's code and message."""
        body = json.dumps(
            {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params or []}
        ).encode()
        out = self._decode(await self.post(body))
        if not isinstance(out, dict):
            raise ChainError(f"{method}: the node answered a {type(out).__name__}, not an object")
        return _result(out, method)

    async def batch(self, calls: list[tuple[str, list[Any]]]) -> list[Any]:
        """Several requests in one round trip; each item is a result or an RpcError instance."""
        if not calls:
            return []
        first = next(self._ids)
        ids = [first + i for i in range(len(calls))]
        self._ids = itertools.count(first + len(calls))
        body = json.dumps(
            [
                {"jsonrpc": "2.0", "id": i, "method": m, "params": p}
                for i, (m, p) in zip(ids, calls, strict=True)
            ]
        ).encode()
        out = self._decode(await self.post(body))
        if isinstance(out, dict):  # some nodes answer a whole-batch error with one object
            err = _result_or_error(out, "batch")
            return [err] * len(calls)
        if not isinstance(out, list):
            raise ChainError("batch: the node did not answer a list")
        by_id = {o.get("id"): o for o in out if isinstance(o, dict)}
        results: list[Any] = []
        for i, (m, _) in zip(ids, calls, strict=True):
            o = by_id.get(i)
            results.append(
                RpcError(-32603, "no answer for this request in the batch", method=m)
                if o is None
                else _result_or_error(o, m)
            )
        return results

    def _decode(self, data: bytes) -> Any:
        try:
            return json.loads(data)
        except ValueError:
            raise ChainError(f"full node at {self.url} answered non-JSON: {data[:200]!r}") from None

    async def wait_ready(self, limit: float) -> None:
        """Wait until the node answers eth_chainId (at most `limit` seconds)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while True:
            try:
                await self.call("eth_chainId")
                return
            except (NodeUnreachable, RpcTimeout):
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.1)


def _result(obj: dict[str, Any], method: str) -> Any:
    r = _result_or_error(obj, method)
    if isinstance(r, RpcError):
        raise r
    return r


def _result_or_error(obj: dict[str, Any], method: str) -> Any:
    err = obj.get("error")
    if err is not None:
        if not isinstance(err, dict):
            return RpcError(-32603, f"malformed error object {err!r}", method=method)
        code = err.get("code")
        return RpcError(
            code if isinstance(code, int) else -32603,
            str(err.get("message", "")),
            err.get("data"),
            method=method,
        )
    if "result" not in obj:
        return RpcError(-32603, "answer has neither result nor error", method=method)
    return obj["result"]
