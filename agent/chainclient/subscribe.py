"""New heads and logs from the full node, in order, without gaps, with reorgs made visible.

WebSocket first (`eth_subscribe` newHeads and logs, aiohttp), reconnecting with backoff; after
every (re)connection the blocks and logs missed meanwhile are fetched over HTTP before live
notifications go on (gap fill). A node without WebSocket (no ws_url, or a handshake it refuses)
is polled over HTTP instead.

Reorg awareness: the watcher keeps the canonical block hash per height for the last
`keep_blocks` blocks. A head whose parent is not the hash it holds at the height below is a
reorg: it walks back to the common ancestor, reports a `Reorg`, and then delivers the new
branch's heads in order. Logs of dropped blocks come again with `removed: true` from nodes that
send them; consumers that need certainty wait for confirmations (see sender.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import aiohttp

from agent.backoff import Backoff
from agent.chainclient.rpc import RpcClient, hex_int
from agent.component import Detail, Health
from agent.errors import ChainError, NodeUnreachable, RpcTimeout
from agent.logs import event
from agent.metrics import Metrics

T = TypeVar("T")


@dataclass(frozen=True)
class Head:
    number: int
    hash: str
    parent_hash: str
    timestamp: int

    @classmethod
    def of(cls, block: dict[str, Any]) -> Head:
        return cls(
            hex_int(block["number"]),
            str(block["hash"]),
            str(block["parentHash"]),
            hex_int(block["timestamp"]),
        )


@dataclass(frozen=True)
class Reorg:
    ancestor: int  # highest height both branches share (-1: none within keep_blocks)
    depth: int  # blocks of the old branch that are no longer canonical
    old_head: str
    new_head: str


class Feed(Generic[T]):
    """A bounded queue for one consumer. If the consumer falls behind by `maxsize` items the
    oldest go first and `overflowed` counts them (the consumer can re-read from the node)."""

    def __init__(self, maxsize: int = 4096) -> None:
        self._q: asyncio.Queue[T] = asyncio.Queue()
        self.maxsize = maxsize
        self.overflowed = 0

    def put(self, item: T) -> None:
        if self._q.qsize() >= self.maxsize:
            self._q.get_nowait()
            self.overflowed += 1
        self._q.put_nowait(item)

    async def get(self) -> T:
        return await self._q.get()

    def get_nowait(self) -> T:
        return self._q.get_nowait()

    def qsize(self) -> int:
        return self._q.qsize()


@dataclass
class _LogSub:
    criteria: dict[str, Any]  # address / topics as eth_getLogs and eth_subscribe take them
    feed: Feed[dict[str, Any]]
    cursor: int | None = None  # logs up to this height were delivered


class ChainWatcher:
    """`feed = watcher.heads()`, `logs = watcher.logs(address=...)`, then `await watcher.run()`."""

    name = "chain-watch"

    def __init__(
        self,
        rpc: RpcClient,
        ws_url: str | None,
        *,
        poll_interval_s: float = 1.0,
        keep_blocks: int = 256,
        backoff: tuple[float, float] = (0.25, 10.0),
        metrics: Metrics | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.rpc = rpc
        self.ws_url = ws_url
        self.poll_interval = poll_interval_s
        self.keep = keep_blocks
        # (initial, maximum) s between reconnections, each delay d jittered into [d/2, d].
        self.backoff = Backoff(backoff[0], backoff[1], jitter=0.5, reset_after=math.inf)
        self.metrics = metrics or Metrics()
        self.log = logger or logging.getLogger("agent.chainclient.subscribe")
        self.hashes: OrderedDict[int, str] = OrderedDict()
        self.head: Head | None = None
        self.mode = "starting"
        self.connected = asyncio.Event()  # set while heads flow (WebSocket or polling)
        self.ready = asyncio.Event()  # run() started: a node that is down is retried
        self._head_feeds: list[Feed[Head]] = []
        self._reorg_feeds: list[Feed[Reorg]] = []
        self._log_subs: list[_LogSub] = []
        self._seen_logs: OrderedDict[tuple[str, str, bool], None] = OrderedDict()
        self._session: aiohttp.ClientSession | None = None
        self.metrics.gauge("chain_height", lambda: None if self.head is None else self.head.number)

    # -- consumers -----------------------------------------------------------------------------
    def heads(self, maxsize: int = 4096) -> Feed[Head]:
        f: Feed[Head] = Feed(maxsize)
        self._head_feeds.append(f)
        return f

    def reorgs(self) -> Feed[Reorg]:
        f: Feed[Reorg] = Feed(1024)
        self._reorg_feeds.append(f)
        return f

    def logs(
        self, address: str | list[str] | None = None, topics: list[Any] | None = None
    ) -> Feed[dict[str, Any]]:
        """Register before run(): a feed of log objects (as eth_getLogs returns them)."""
        criteria: dict[str, Any] = {}
        if address is not None:
            criteria["address"] = address
        if topics is not None:
            criteria["topics"] = topics
        f: Feed[dict[str, Any]] = Feed()
        self._log_subs.append(_LogSub(criteria, f))
        return f

    def block_hash(self, number: int) -> str | None:
        """The canonical hash this watcher holds for a height (within keep_blocks)."""
        return self.hashes.get(number)

    # -- heads: order, gaps, reorgs ------------------------------------------------------------
    async def _block(self, tag: str | int) -> dict[str, Any]:
        b = await self.rpc.call(
            "eth_getBlockByNumber", [hex(tag) if isinstance(tag, int) else tag, False]
        )
        if not isinstance(b, dict):
            raise ChainError(f"the node has no block {tag}")
        return b

    async def _on_head(self, h: Head) -> None:
        last = self.head
        if last is not None and h.number > last.number + 1:
            # Missed heads (a reconnect, or a node that skips notifications): fetch them.
            start = last.number + 1
            blocks = await self.rpc.batch(
                [("eth_getBlockByNumber", [hex(n), False]) for n in range(start, h.number)]
            )
            for b in blocks:
                if isinstance(b, dict):
                    await self._apply(Head.of(b))
        await self._apply(h)

    async def _apply(self, h: Head) -> None:
        if self.hashes.get(h.number) == h.hash:
            return  # already delivered
        last = self.head
        below = self.hashes.get(h.number - 1)
        new_branch = [h]
        if last is not None and (
            (below is not None and below != h.parent_hash) or h.number <= last.number
        ):
            # A reorg: walk back along the new branch to the height where hashes agree.
            parent, n = h.parent_hash, h.number - 1
            while n >= 0 and n in self.hashes and self.hashes[n] != parent:
                b = await self.rpc.call("eth_getBlockByHash", [parent, False])
                if not isinstance(b, dict):
                    raise ChainError(f"the node does not know block {parent}")
                blk = Head.of(b)
                new_branch.insert(0, blk)
                parent, n = blk.parent_hash, n - 1
            ancestor = n if n in self.hashes else -1
            depth = last.number - ancestor if ancestor >= 0 else len(self.hashes)
            for k in [k for k in self.hashes if k > ancestor]:
                del self.hashes[k]
            if ancestor < 0:
                self.hashes.clear()
            r = Reorg(ancestor, depth, last.hash, h.hash)
            self.metrics.inc("chain_reorgs")
            event(
                self.log,
                "chain_reorg",
                logging.WARNING,
                ancestor=ancestor,
                depth=depth,
                old_head=last.hash,
                new_head=h.hash,
            )
            for f in self._reorg_feeds:
                f.put(r)
            self.head = None
        for blk in new_branch:
            self.hashes[blk.number] = blk.hash
            while len(self.hashes) > self.keep:
                self.hashes.popitem(last=False)
            self.head = blk
            for feed in self._head_feeds:
                feed.put(blk)

    # -- logs ----------------------------------------------------------------------------------
    def _emit_log(self, sub: _LogSub, log: dict[str, Any]) -> None:
        key = (str(log.get("blockHash")), str(log.get("logIndex")), bool(log.get("removed")))
        if key in self._seen_logs:
            return
        self._seen_logs[key] = None
        if len(self._seen_logs) > 100_000:
            self._seen_logs.popitem(last=False)
        n = log.get("blockNumber")
        if isinstance(n, str) and not log.get("removed"):
            sub.cursor = max(sub.cursor or 0, hex_int(n))
        sub.feed.put(log)

    async def _fill_logs(self, upto: int) -> None:
        """Deliver what each log subscription missed, up to height `upto` (eth_getLogs)."""
        for sub in self._log_subs:
            if sub.cursor is None:
                sub.cursor = upto  # logs from the moment of subscribing on
                continue
            if upto <= sub.cursor:
                continue
            found = await self.rpc.call(
                "eth_getLogs",
                [{**sub.criteria, "fromBlock": hex(sub.cursor + 1), "toBlock": hex(upto)}],
            )
            for log in found if isinstance(found, list) else []:
                self._emit_log(sub, log)
            sub.cursor = upto

    async def _catch_up(self) -> int:
        latest = Head.of(await self._block("latest"))
        await self._on_head(latest)
        await self._fill_logs(latest.number)
        return latest.number

    # -- transports ----------------------------------------------------------------------------
    async def run(self) -> None:
        self.backoff.succeeded()  # a new run starts from the shortest delay
        self._session = aiohttp.ClientSession()
        self.ready.set()
        try:
            while True:
                try:
                    if self.ws_url and self.mode != "poll":
                        await self._run_ws(self.ws_url)
                    else:
                        await self._run_poll()
                    self.backoff.succeeded()
                except aiohttp.WSServerHandshakeError as exc:
                    self.mode = "poll"
                    event(
                        self.log,
                        "chain_ws_refused",
                        logging.WARNING,
                        url=self.ws_url,
                        status=exc.status,
                        fallback="polling",
                    )
                    continue
                except (
                    aiohttp.ClientError,
                    NodeUnreachable,
                    RpcTimeout,
                    ChainError,
                    ConnectionError,
                    TimeoutError,
                ) as exc:
                    if self.connected.is_set():
                        event(self.log, "chain_link_lost", logging.WARNING, error=str(exc)[:160])
                    self.connected.clear()
                    self.metrics.inc("chain_link_lost")
                await self.backoff.wait()
        finally:
            self.connected.clear()
            await self._session.close()

    async def _run_ws(self, url: str) -> None:
        assert self._session is not None
        async with self._session.ws_connect(url, heartbeat=15.0, max_msg_size=16 * 2**20) as ws:
            kinds: dict[str, _LogSub | None] = {}
            requests: list[tuple[str, _LogSub | None]] = [("newHeads", None)]
            requests += [("logs", s) for s in self._log_subs]
            for i, (kind, sub) in enumerate(requests):
                params: list[Any] = [kind] if sub is None else [kind, sub.criteria]
                await ws.send_str(
                    json.dumps(
                        {"jsonrpc": "2.0", "id": i, "method": "eth_subscribe", "params": params}
                    )
                )
            pending = dict(enumerate(requests))
            early: list[dict[str, Any]] = []
            while pending:
                msg = await ws.receive(timeout=10.0)
                data = self._ws_json(msg)
                if "id" in data and data["id"] in pending:
                    kind, sub = pending.pop(data["id"])
                    if "error" in data:
                        raise ChainError(f"eth_subscribe {kind}: {data['error']}")
                    kinds[str(data["result"])] = sub
                else:
                    early.append(data)
            # Subscribed: what happened while we were away comes first, over HTTP.
            await self._catch_up()
            self.mode = "ws"
            self.connected.set()
            event(self.log, "chain_subscribed", url=url, logs=len(self._log_subs))
            for data in early:
                await self._ws_notification(data, kinds)
            while True:
                msg = await ws.receive()
                await self._ws_notification(self._ws_json(msg), kinds)

    def _ws_json(self, msg: aiohttp.WSMessage) -> dict[str, Any]:
        if msg.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSED,
            aiohttp.WSMsgType.CLOSING,
        ):
            raise ConnectionError("the node closed the WebSocket")
        if msg.type == aiohttp.WSMsgType.ERROR:
            raise ConnectionError(f"WebSocket error: {msg.data}")
        if msg.type != aiohttp.WSMsgType.TEXT:
            return {}
        data = json.loads(msg.data)
        return data if isinstance(data, dict) else {}

    async def _ws_notification(
        self, data: dict[str, Any], kinds: dict[str, _LogSub | None]
    ) -> None:
        if data.get("method") != "eth_subscription":
            return
        params = data.get("params") or {}
        sid, result = str(params.get("subscription")), params.get("result")
        if sid not in kinds or not isinstance(result, dict):
            return
        sub = kinds[sid]
        if sub is None:
            await self._on_head(Head.of(result))
        else:
            self._emit_log(sub, result)

    async def _run_poll(self) -> None:
        self.mode = "poll"
        await self._catch_up()
        self.connected.set()
        event(self.log, "chain_polling", url=self.rpc.url, every_s=self.poll_interval)
        while True:
            await asyncio.sleep(self.poll_interval)
            latest = Head.of(await self._block("latest"))
            if self.head is None or latest.hash != self.head.hash:
                await self._on_head(latest)
                await self._fill_logs(latest.number)

    async def stop(self, grace: float = 0.5) -> None:
        with contextlib.suppress(Exception):
            if self._session is not None:
                await asyncio.wait_for(self._session.close(), grace)

    def health(self) -> Health:
        up = self.connected.is_set()
        detail: dict[str, Detail] = {
            "url": self.rpc.url,
            "mode": self.mode,
            "height": self.head.number if self.head is not None else None,
        }
        return Health("up" if up else "down", detail)
