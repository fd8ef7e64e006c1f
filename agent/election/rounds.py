"""The agent's election round loop: registers the node on the board once, then at every round's
boundary (once final) computes the definite hash or the VRF alpha, signs or proves, submits;
after the cutoff (once final) reads the round's submissions, decides it, keeps the result in
sqlite and publishes it retained on MQTT `<prefix>/election/<round>`.

Restarts: decided rounds and the next round to decide are in the store; the agent's own
submission is deterministic (RFC 6979 signature, ECVRF proof) so it is recognised in the
transaction store by its call data and never sent twice. Reorgs: nothing is read before the
block it depends on has `confirmations` confirmations, and a decision is dropped and retried if
the cutoff block's hash changed while it was being read.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import coincurve
import paho.mqtt.client as paho

from agent.attest import ecvrf
from agent.attest.keys import GatewayKey
from agent.attest.selection import selection_digest
from agent.attest.vrfkey import vrf_secret
from agent.chainclient.rpc import RpcClient, hex_int
from agent.chainclient.sender import TxSender
from agent.chainclient.subscribe import Feed, Head
from agent.component import Detail, Health
from agent.config import ElectionConfig
from agent.election.board import ElectionBoard, vrf_key_digest
from agent.election.definite import MAX_REHASH, keccak256
from agent.election.schedule import RoundSchedule
from agent.election.tally import (
    RoundContext,
    RoundResult,
    chain_id_bytes,
    tally_paper,
    tally_vrf,
)
from agent.election.vrf_mode import PARALLEL_THRESHOLD, vrf_alpha
from agent.errors import (
    ChainError,
    ElectionError,
    NodeUnreachable,
    RpcError,
    RpcTimeout,
    TransactionError,
)
from agent.logs import event
from agent.metrics import Metrics
from agent.mqtt import MqttConnection
from agent.sqlitestore import Sql, SqliteStore

# A round whose reads keep failing is given up once its cutoff is this many blocks old.
STATE_HORIZON = 128
SUBMIT_GAS = 300_000  # generous: the round's first submission also fixes the definite hash

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    round INTEGER PRIMARY KEY,
    body BLOB NOT NULL,
    published INTEGER NOT NULL DEFAULT 0,
    decided_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
"""


class ElectionStore(SqliteStore):
    """sqlite file of decided rounds and the next round to decide, for one board; committed in
    the store's own thread."""

    SCHEMA = _SCHEMA
    WHAT = "election store"
    ERROR = ElectionError

    async def open(self, board: str | None = None, mode: str | None = None) -> None:
        """Open (creating it); with `board`, refuse a store that belongs to another board."""
        await super().open()
        if board is None:
            return
        for k, want in (("board", board), ("mode", mode)):
            have = await self.meta(k)
            if have is None and want is not None:
                await self.set_meta(k, want)
            elif have != want:
                await self.close()
                raise ElectionError(
                    f"{self.path} holds the rounds of {k} {have}, but election.{k} is {want}: "
                    "point election.store at another file for another board"
                )

    async def save(self, result: RoundResult) -> None:
        """The result and the next round to decide, in one transaction."""
        await self._run(_save, result.round, result.to_json(), time.time())

    async def next_round(self) -> int | None:
        v = await self.meta("next_round")
        return None if v is None else int(v)

    async def set_next_round(self, round: int) -> None:
        await self.set_meta("next_round", str(round))

    async def mark_published(self, round: int) -> None:
        await self._run(_mark_published, round)

    async def unpublished(self) -> list[RoundResult]:
        return [RoundResult.from_json(b) for b in await self._run(_unpublished)]

    async def result(self, round: int) -> tuple[RoundResult, bool] | None:
        row = await self._run(_result, round)
        return None if row is None else (RoundResult.from_json(row[0]), row[1])

    async def latest(self, count: int) -> list[tuple[RoundResult, bool]]:
        return [(RoundResult.from_json(b), p) for b, p in await self._run(_latest, count)]


# -- the store's statements: run in its thread, on its connection --------------------------------


def _save(db: Sql, round: int, body: bytes, decided_at: float) -> None:
    with db:
        db.execute(
            "INSERT OR REPLACE INTO results(round, body, published, decided_at) "
            "VALUES (?, ?, 0, ?)",
            (round, body, decided_at),
        )
        db.execute("INSERT OR REPLACE INTO meta(k, v) VALUES ('next_round', ?)", (str(round + 1),))


def _mark_published(db: Sql, round: int) -> None:
    db.execute("UPDATE results SET published=1 WHERE round=?", (round,))


def _unpublished(db: Sql) -> list[bytes]:
    rows = db.execute("SELECT body FROM results WHERE published=0 ORDER BY round")
    return [bytes(r[0]) for r in rows.fetchall()]


def _result(db: Sql, round: int) -> tuple[bytes, bool] | None:
    row = db.execute("SELECT body, published FROM results WHERE round=?", (round,)).fetchone()
    return None if row is None else (bytes(row[0]), bool(row[1]))


def _latest(db: Sql, count: int) -> list[tuple[bytes, bool]]:
    rows = db.execute("SELECT body, published FROM results ORDER BY round DESC LIMIT ?", (count,))
    return [(bytes(b), bool(p)) for b, p in rows.fetchall()]


class ResultPublisher(Protocol):
    def publish(self, topic: str, payload: bytes) -> bool: ...

    def is_connected(self) -> bool: ...


class ConnectionPublisher:
    """Retained QoS 1 publishes on an MqttConnection: the bridge's upstream link, or the
    election's own (then `run()` keeps it connected)."""

    name = "election-mqtt"

    def __init__(self, conn: MqttConnection, *, own: bool) -> None:
        self.conn = conn
        self.own = own
        self.ready = asyncio.Event()

    def is_connected(self) -> bool:
        return self.conn.connected.is_set()

    def publish(self, topic: str, payload: bytes) -> bool:
        if not self.conn.connected.is_set():
            return False
        info = self.conn.client.publish(topic, payload, qos=1, retain=True)
        return info.rc == paho.MQTT_ERR_SUCCESS

    async def run(self) -> None:
        self.ready.set()
        if self.own:
            await self.conn.run()

    async def stop(self, grace: float = 1.0) -> None:
        if self.own:
            await self.conn.stop(grace)

    def health(self) -> Health:
        up = self.conn.connected.is_set()
        return Health("up" if up else "down", {"url": self.conn.endpoint.url, "own": self.own})


class _Retry(Exception):
    """The chain moved under a read (the cutoff block changed): decide again on the next head."""


class ElectionRounds:
    """`await rounds.run()` until cancelled; `results` holds the rounds decided in this run.

    `ready` is set when run() starts (a node that is down does not hold up the agent);
    `registered` once the node's keys are on the board and the schedule is checked."""

    name = "election"

    def __init__(
        self,
        cfg: ElectionConfig,
        *,
        rpc: RpcClient,
        sender: TxSender,
        key: GatewayKey,
        chain_id: int,
        publisher: ResultPublisher,
        heads: Feed[Head] | None = None,
        poll_interval_s: float = 1.0,
        store_path: Path | None = None,
        metrics: Metrics | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.cfg = cfg
        self.rpc = rpc
        self.sender = sender
        self.key = key
        self.node = key.address
        self.chain_id = chain_id
        self.publisher = publisher
        self.heads = heads
        self.poll_interval = poll_interval_s
        self.board = ElectionBoard(rpc, cfg.board)
        self.store = ElectionStore(store_path or cfg.store or Path("election.sqlite"))
        self.metrics = metrics or Metrics()
        self.log = logger or logging.getLogger("agent.election")
        self.vrf_secret = vrf_secret(key)
        self.vrf_public = ecvrf.public_key_of(self.vrf_secret)
        self.schedule: RoundSchedule | None = None
        self.results: dict[int, RoundResult] = {}
        self.submitted: set[int] = set()
        self.ready = asyncio.Event()
        self.registered = asyncio.Event()  # registered, schedule checked
        self._node_down: str | None = None
        self._pool: ProcessPoolExecutor | None = None
        self._followers: set[asyncio.Task[None]] = set()
        self._was_connected = False
        self._topic_prefix = f"{cfg.topic_prefix}/election"
        self.metrics.fact("election_role", lambda: self.role)

    @property
    def role(self) -> str | None:
        """This node's role: None until it is registered on the board; then "candidate", or,
        once a round is decided in this run, "elected" or "excluded" as that latest round says."""
        if not self.results:
            return "candidate" if self.ready.is_set() else None
        latest = self.results[max(self.results)]
        if self.node in latest.elected:
            return "elected"
        if any(node == self.node for node, _ in latest.excluded):
            return "excluded"
        return "candidate"

    # -- lifecycle -----------------------------------------------------------------------------
    async def run(self) -> None:
        await self.store.open(self.board.address, self.cfg.mode)
        self.ready.set()
        try:
            await self._setup()
            self.registered.set()
            while True:
                try:
                    await self.step(await self._next_head())
                    self._node_down = None
                except (NodeUnreachable, RpcTimeout) as exc:
                    self._node_down = str(exc)[:160]
                    event(self.log, "election_node_down", logging.WARNING, error=str(exc)[:160])
        finally:
            self.registered.clear()
            for task in list(self._followers):
                task.cancel()
            await asyncio.gather(*self._followers, return_exceptions=True)
            await self.store.close()
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None

    async def stop(self, grace: float = 0.5) -> None:
        """Nothing to finish: a round under way is decided again from the chain after a
        restart (its task is cancelled after every component stopped)."""

    def health(self) -> Health:
        latest = max(self.results) if self.results else None
        detail: dict[str, Detail] = {
            "mode": self.cfg.mode,
            "registered": self.registered.is_set(),
            "rounds_decided": len(self.results),
            "latest_round": latest,
            "error": self._node_down,
        }
        if self._node_down:
            return Health("down", detail)
        return Health("up" if self.registered.is_set() else "starting", detail)

    async def _next_head(self) -> int:
        if self.heads is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.heads.get(), self.poll_interval)
            while self.heads.qsize():
                self.heads.get_nowait()
        else:
            await asyncio.sleep(self.poll_interval)
        return hex_int(await self.rpc.call("eth_blockNumber"))

    async def _setup(self) -> None:
        while True:
            try:
                mode, start, length, window = await self.board.schedule()
                break
            except (NodeUnreachable, RpcTimeout) as exc:
                event(self.log, "election_node_down", logging.WARNING, error=str(exc)[:160])
                await asyncio.sleep(self.poll_interval)
        c = self.cfg
        for key, have, want in (
            ("mode", mode, c.mode),
            ("round_length", length, c.round_length),
            ("cutoff", window, c.cutoff),
        ):
            if have != want:
                raise ElectionError(
                    f"election.{key} is {want!r} but the board at {self.board.address} was "
                    f"deployed with {have!r}: make them agree"
                )
        self.schedule = RoundSchedule(start, length, window, c.confirmations)
        await self._register()
        event(
            self.log,
            "election_ready",
            board=self.board.address,
            mode=c.mode,
            node=self.node,
            start=start,
            round_length=length,
            cutoff=window,
            confirmations=c.confirmations,
            k=c.k,
        )

    async def _register(self) -> None:
        found = await self.board.nodes([bytes.fromhex(self.node[2:])], "latest")
        mine = found.get(bytes.fromhex(self.node[2:]))
        if mine is not None:
            if mine.vrf_key != self.vrf_public:
                raise ElectionError(
                    f"node {self.node} is registered on {self.board.address} with another VRF "
                    "key than this gateway key derives: was the key file replaced?"
                )
            return
        vrf_private = coincurve.PrivateKey(self.vrf_secret)
        digest = vrf_key_digest(self.chain_id, self.board.address, self.node)
        rec = vrf_private.sign_recoverable(digest, hasher=None)
        proof = rec[:64] + bytes((27 + rec[64],))
        data = self.board.register_data(
            self.key.public_key_uncompressed[1:],
            vrf_private.public_key.format(compressed=False)[1:],
            proof,
        )
        await self.sender.open()
        known = await self.sender.store.find_by_data(self.board.address, data)
        tx_id = known[-1] if known else await self.sender.send(self.board.address, data)
        event(self.log, "election_registering", node=self.node, tx=tx_id)
        try:
            await self.sender.wait(tx_id, confirmations=1)
        except TransactionError as exc:
            raise ElectionError(
                f"registering {self.node} on the board {self.board.address} failed ({exc}): "
                "is election.board the ElectionBoard's address, and is this VRF key already "
                "registered by another node?"
            ) from exc
        self.metrics.inc("election_registered")
        event(self.log, "election_registered", node=self.node, board=self.board.address)

    # -- one head ------------------------------------------------------------------------------
    async def step(self, head: int) -> None:
        sched = self.schedule
        assert sched is not None
        current = sched.round_at(head)
        if (
            current is not None
            and current not in self.submitted
            and sched.may_submit(current, head)
        ):
            await self._submit(current)
        last = sched.last_final_round(head)
        if last is not None:
            nxt = await self.store.next_round()
            if nxt is None:
                # First start on this board: decide from the current round on.
                nxt = current if current is not None else 0
                await self.store.set_next_round(nxt)
            if last - nxt >= self.cfg.catch_up_rounds:
                skip_to = last - self.cfg.catch_up_rounds + 1
                event(
                    self.log,
                    "election_rounds_skipped",
                    logging.WARNING,
                    first=nxt,
                    last=skip_to - 1,
                    why="more than election.catch_up_rounds behind",
                )
                nxt = skip_to
                await self.store.set_next_round(nxt)
            for q in range(nxt, last + 1):
                try:
                    result = await self.decide(q)
                except _Retry:
                    break
                except RpcError as exc:
                    # The node refuses a read (e.g. logs that far back): retry while the round
                    # is recent, give it up once it is not.
                    self.metrics.inc("election_decide_failed")
                    gone = head - sched.cutoff(q) > STATE_HORIZON
                    event(
                        self.log,
                        "election_decide_failed",
                        logging.ERROR,
                        round=q,
                        error=str(exc)[:160],
                        action="skipped" if gone else "retry",
                    )
                    if not gone:
                        break
                    await self.store.set_next_round(q + 1)
                    continue
                await self.store.save(result)
                self.results[q] = result
                self._report(result)
        await self._publish_pending()

    async def _block_hash(self, number: int) -> bytes:
        block = await self.rpc.call("eth_getBlockByNumber", [hex(number), False])
        if not isinstance(block, dict):
            raise ChainError(f"the node has no block {number}")
        return bytes.fromhex(str(block["hash"])[2:])

    async def definite_hash(self, round: int) -> bytes:
        """The paper's definite hash of a round: the boundary block's hash, re-hashed while it
        is in the board's record of used definite hashes as of the boundary block (earlier
        rounds only: the round's own first submission comes after it)."""
        assert self.schedule is not None
        b = self.schedule.boundary(round)
        h = await self._block_hash(b)
        for _ in range(MAX_REHASH):
            if not await self.board.used_before(h, self.schedule.start, b):
                return h
            h = keccak256(h)
        raise ElectionError(f"no unused definite hash for round {round}")

    async def _submit(self, round: int) -> None:
        assert self.schedule is not None
        chain32 = chain_id_bytes(self.chain_id)
        if self.cfg.mode == "paper":
            definite = await self.definite_hash(round)
            signature = self.key.sign_digest(selection_digest(chain32, round, definite))[:64]
            data = self.board.selection_data(round, definite, signature)
        else:
            seed = await self._block_hash(self.schedule.boundary(round))
            data = self.board.proof_data(
                round, ecvrf.prove(self.vrf_secret, vrf_alpha(chain32, round, seed))
            )
        await self.sender.open()
        known = await self.sender.store.find_by_data(self.board.address, data)
        if known:
            self.submitted.add(round)  # sent before a restart: follow it again
            self._follow(round, known[-1])
            return
        if await self.board.submission_count(round, self.node) > 0:
            # Not in our store but on the chain: the same key submits elsewhere. A second
            # submission would disqualify this node, so never add one.
            self.submitted.add(round)
            event(self.log, "election_submission_exists", logging.WARNING, round=round)
            return
        try:
            tx_id = await self.sender.send(self.board.address, data, gas=SUBMIT_GAS)
        except TransactionError as exc:
            self.metrics.inc("election_submit_failed")
            event(self.log, "election_submit_failed", logging.ERROR, round=round, error=str(exc))
            self.submitted.add(round)
            return
        self.submitted.add(round)
        self.metrics.inc("election_submitted")
        event(self.log, "election_submitted", round=round, mode=self.cfg.mode, tx=tx_id)
        self._follow(round, tx_id)

    def _follow(self, round: int, tx_id: int) -> None:
        """Wait for the submission's confirmations in the background: waiting is what notices a
        reorg that dropped it, and has the sender send it again (same nonce, same data)."""
        task = asyncio.create_task(self._confirm(round, tx_id))
        self._followers.add(task)
        task.add_done_callback(self._followers.discard)

    async def _confirm(self, round: int, tx_id: int) -> None:
        assert self.schedule is not None
        try:
            receipt = await self.sender.wait(tx_id, confirmations=self.cfg.confirmations)
        except TransactionError as exc:
            self.metrics.inc("election_submit_failed")
            event(
                self.log, "election_submission_failed", logging.ERROR, round=round, error=str(exc)
            )
            return
        block = hex_int(receipt["blockNumber"])
        level = logging.INFO if block <= self.schedule.cutoff(round) else logging.WARNING
        event(self.log, "election_submission_confirmed", level, round=round, block=block)

    async def decide(self, round: int) -> RoundResult:
        """Read the round's submissions at its (final) cutoff and compute the result."""
        sched = self.schedule
        assert sched is not None
        b, c = sched.boundary(round), sched.cutoff(round)
        cutoff_hash = await self._block_hash(c)
        subs = await self.board.submissions(round, b + 1, c)
        # Registrations never change and every submitter was registered when it submitted
        # (the board refuses others), so the latest state gives the keys the cutoff had; no
        # call at an old block, which a pruning or restarted node may not answer.
        keys = await self.board.nodes(sorted({s.node for s in subs}), "latest")
        ctx = RoundContext(
            round, self.chain_id, self.board.address, b, c, "0x" + cutoff_hash.hex(), self.cfg.k
        )
        if self.cfg.mode == "paper":
            definite = await self.definite_hash(round)
            on_board = await self.board.definite_hash_of(round)
            if subs and on_board != definite:
                self.metrics.inc("election_board_disagrees")
                event(
                    self.log,
                    "election_board_disagrees",
                    logging.ERROR,
                    round=round,
                    board=on_board.hex(),
                    computed=definite.hex(),
                )
            result = tally_paper(ctx, definite, subs, keys)
        else:
            seed = await self._block_hash(b)
            alpha = vrf_alpha(chain_id_bytes(self.chain_id), round, seed)
            pool = self._vrf_pool(len(subs))
            result = await asyncio.get_running_loop().run_in_executor(
                None,
                functools.partial(tally_vrf, ctx, seed, alpha, subs, keys, executor=pool),
            )
        if await self._block_hash(c) != cutoff_hash:
            raise _Retry()
        return result

    def _vrf_pool(self, n: int) -> ProcessPoolExecutor | None:
        workers = self.cfg.workers or os.cpu_count() or 1
        if workers <= 1 or n < PARALLEL_THRESHOLD:
            return None
        if self._pool is None:
            # forkserver: the agent has threads, and forking a threaded process is unsafe.
            ctx = multiprocessing.get_context("forkserver")
            self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
        return self._pool

    # -- results -------------------------------------------------------------------------------
    def topic(self, round: int) -> str:
        return f"{self._topic_prefix}/{round}"

    def _report(self, r: RoundResult) -> None:
        self.metrics.inc("election_rounds_decided")
        for _node, reason in r.excluded:
            self.metrics.inc("election_excluded", reason=reason)
        event(
            self.log,
            "election_decided",
            round=r.round,
            mode=r.mode,
            candidates=len(r.scores),
            excluded=len(r.excluded),
            elected=",".join(r.elected) or "none",
        )

    async def _publish_pending(self) -> None:
        connected = self.publisher.is_connected()
        if connected and not self._was_connected:
            # (Re)connected: publish again what is retained, in case the broker lost it.
            for res, _published in reversed(await self.store.latest(1)):
                self.publisher.publish(self.topic(res.round), res.to_json())
        self._was_connected = connected
        if not connected:
            return
        for res in await self.store.unpublished():
            if self.publisher.publish(self.topic(res.round), res.to_json()):
                await self.store.mark_published(res.round)
            else:
                self.metrics.inc("election_publish_failed")
                break


async def status_lines(store: ElectionStore, round: int | None, count: int) -> list[str]:
    """Human-readable lines for `edgence-agent election status`."""
    rows: list[tuple[RoundResult, bool]]
    if round is not None:
        one = await store.result(round)
        rows = [] if one is None else [one]
    else:
        rows = await store.latest(count)
    lines: list[str] = []
    nxt = await store.next_round()
    board, mode = await store.meta("board"), await store.meta("mode")
    lines.append(f"board {board} mode {mode} next round to decide {nxt}")
    if not rows:
        lines.append("no decided round" + (f" {round}" if round is not None else "") + " yet")
    for res, published in rows:
        lines.append(
            f"round {res.round}: blocks {res.boundary + 1}..{res.cutoff}, "
            f"{len(res.scores)} candidate(s), {len(res.excluded)} excluded, "
            f"k={res.k}, {'published' if published else 'not yet published'}"
        )
        for i, node in enumerate(res.elected, 1):
            lines.append(f"  elected #{i} {node}")
        for node, reason in res.excluded:
            lines.append(f"  excluded {node} ({reason})")
    return lines


async def result_docs(store: ElectionStore, round: int | None, count: int) -> list[dict[str, Any]]:
    import json

    rows = [await store.result(round)] if round is not None else list(await store.latest(count))
    return [
        {**json.loads(res.to_json()), "published": published}
        for item in rows
        if item is not None
        for res, published in [item]
    ]
