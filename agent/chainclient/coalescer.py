"""Forwarded single requests coalesced into JSON-RPC batches: one round trip to the node for the
requests that arrive while a post is under way, and a lane of its own behind a slow call.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from agent.chainclient.rpc import ResponseTooLarge, RpcClient
from agent.errors import ChainError

if TYPE_CHECKING:
    from agent.chainclient.forward import ForwardPolicy


class Coalescer:
    """Single requests that arrive while a post to the node is under way wait and then go
    together, as one JSON-RPC batch: one HTTP round trip, and one pair of system calls, for
    many. A request alone goes alone, and its answer passes through as the node wrote it.

    One post is under way at a time while the node answers quickly. When a post has been out
    for `lane_after` seconds (a slow call: within one batch it delays the others' answers),
    the requests waiting behind it go in a post of their own, up to `parallel` at once.
    """

    def __init__(
        self, rpc: RpcClient, policy: ForwardPolicy, parallel: int = 2, lane_after: float = 0.002
    ) -> None:
        self.rpc = rpc
        self.policy = policy
        self.parallel = parallel
        self.lane_after = lane_after
        self.max_batch = 32
        self._queue: list[tuple[dict[str, Any], asyncio.Future[bytes]]] = []
        self._running = 0
        self._lane_timer: asyncio.TimerHandle | None = None
        self._last_post = 0.0  # loop time at which the newest post under way started
        self.batches = 0
        self.lanes_opened = 0  # posts started because the one under way was slow

    async def call(self, item: dict[str, Any]) -> bytes:
        """The node's answer to one request (raw JSON), or ChainError."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bytes] = loop.create_future()
        self._queue.append((item, fut))
        if self._running == 0:
            self._start(loop)
        elif self._running < self.parallel and self._lane_timer is None:
            self._lane_timer = loop.call_later(self.lane_after, self._open_lane, loop)
        return await fut

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._running += 1
        loop.create_task(self._drain())

    def _open_lane(self, loop: asyncio.AbstractEventLoop) -> None:
        self._lane_timer = None
        if not self._queue or self._running >= self.parallel:
            return
        due = self._last_post + self.lane_after
        if loop.time() < due:
            # The post under way is a fresh one (the previous answered in time): wait on it.
            self._lane_timer = loop.call_at(due, self._open_lane, loop)
            return
        self.lanes_opened += 1
        self._start(loop)

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = self._queue[: self.max_batch]
                del self._queue[: self.max_batch]
                self._last_post = asyncio.get_running_loop().time()
                try:
                    await self._send([x for x in batch if not x[1].done()])
                except ChainError as exc:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
        finally:
            self._running -= 1

    async def _send(self, batch: list[tuple[dict[str, Any], asyncio.Future[bytes]]]) -> None:
        if not batch:
            return
        limit = self.policy.max_response_bytes
        if len(batch) == 1:
            item, fut = batch[0]
            body = json.dumps(item, separators=(",", ":")).encode()
            raw = await self.rpc.post(
                body, max_response_bytes=limit, deadline=self.policy.timeout_s
            )
            if not fut.done():
                # Passed on byte for byte, but only a JSON-RPC answer: a proxy's HTML page or a
                # truncated body becomes the gateway's own error, never the dApp's "answer".
                try:
                    ok = isinstance(json.loads(raw), dict)
                except (ValueError, UnicodeDecodeError):
                    ok = False
                if ok:
                    fut.set_result(raw)
                else:
                    fut.set_exception(ChainError("the node's answer is not a JSON-RPC object"))
            return
        self.batches += 1
        sent = [{**item, "id": k} for k, (item, _) in enumerate(batch)]
        raw = await self.rpc.post(
            json.dumps(sent, separators=(",", ":")).encode(),
            max_response_bytes=limit * len(batch),
            deadline=self.policy.timeout_s,
        )
        try:
            got = json.loads(raw)
        except ValueError:
            raise ChainError("the node's batch answer is not JSON") from None
        by_id = {}
        if isinstance(got, list):
            by_id = {
                a.get("id"): a for a in got if isinstance(a, dict) and type(a.get("id")) is int
            }
        for k, (item, fut) in enumerate(batch):
            if fut.done():
                continue
            a = by_id.get(k)
            if a is None:
                fut.set_exception(ChainError("the node's batch answer lacks a request"))
                continue
            out = json.dumps({**a, "id": item.get("id")}, separators=(",", ":")).encode()
            if len(out) > limit:
                fut.set_exception(ResponseTooLarge(limit))
            else:
                fut.set_result(out)
