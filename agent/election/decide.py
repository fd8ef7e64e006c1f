"""Deciding a round from the chain: its submissions on the ElectionBoard and the registry's
events up to its (final) cutoff, tallied in paper mode (definite hash, hash merge) or vrf mode
(the chained seed, VRF outputs); the chain read again at the end so a reorg under the read is
noticed (ChainMoved: decide again on a later head)."""

from __future__ import annotations

import asyncio
import functools
import logging
import multiprocessing
import os
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor

from agent.chainclient.rpc import RpcClient
from agent.config import ElectionConfig
from agent.election.board import ElectionBoard, RegistryLogs
from agent.election.definite import MAX_REHASH, keccak256
from agent.election.schedule import RoundSchedule
from agent.election.standing import key_height, standings
from agent.election.tally import (
    RoundContext,
    RoundResult,
    chain_id_bytes,
    tally_paper,
    tally_vrf,
)
from agent.election.vrf_mode import PARALLEL_THRESHOLD, first_seed, next_seed
from agent.errors import ChainError, ElectionError
from agent.logs import event
from agent.metrics import Metrics


class ChainMoved(Exception):
    """The chain moved under a read (the cutoff block changed): decide again on the next head."""


class RoundDecider:
    """`await decide(round)` once the round is final; `close()` ends its VRF worker pool."""

    def __init__(
        self,
        cfg: ElectionConfig,
        rpc: RpcClient,
        board: ElectionBoard,
        registry: RegistryLogs,
        schedule: RoundSchedule,
        chain_id: int,
        result_of: Callable[[int], Awaitable[RoundResult | None]],
        metrics: Metrics,
        log: logging.Logger,
    ) -> None:
        self.cfg = cfg
        self.rpc = rpc
        self.board = board
        self.registry = registry
        self.schedule = schedule
        self.chain_id = chain_id
        self.result_of = result_of
        self.metrics = metrics
        self.log = log
        self._pool: ProcessPoolExecutor | None = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    async def block_hash(self, number: int) -> bytes:
        block = await self.rpc.call("eth_getBlockByNumber", [hex(number), False])
        if not isinstance(block, dict):
            raise ChainError(f"the node has no block {number}")
        return bytes.fromhex(str(block["hash"])[2:])

    async def definite_hash(self, round: int) -> bytes:
        """The paper's definite hash of a round: the boundary block's hash, re-hashed while it
        is in the board's record of used definite hashes as of the boundary block (earlier
        rounds only: the round's own first submission comes after it)."""
        b = self.schedule.boundary(round)
        h = await self.block_hash(b)
        for _ in range(MAX_REHASH):
            if not await self.board.used_before(h, self.schedule.start, b):
                return h
            h = keccak256(h)
        raise ElectionError(f"no unused definite hash for round {round}")

    async def decide(self, round: int) -> RoundResult:
        """Read the round's submissions at its (final) cutoff and compute the result."""
        sched = self.schedule
        b, c = sched.boundary(round), sched.cutoff(round)
        cutoff_hash = await self.block_hash(c)
        subs = await self.board.submissions(round, b + 1, c)
        # Who may stand, from the registry's events up to the cutoff: a node that withdrew or
        # fell out of service before it is out; its VRF key is the one of the round's key
        # height. Logs only: no call at an old block, which a pruning node may not answer.
        nodes = sorted({s.node for s in subs})
        height = c + 1 if self.cfg.mode == "paper" else key_height(sched.start, sched.length, round)
        standing = standings(
            await self.registry.events(nodes, c),
            nodes,
            cutoff=c,
            key_height=height,
            heartbeat_window=await self.registry.heartbeat_window(),
        )
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
            result = tally_paper(ctx, definite, subs, standing)
        else:
            seed = await self.seed_of(round)
            if seed is None:
                raise ElectionError(f"round {round - 1} is not decided: cannot seed round {round}")
            pool = self._vrf_pool(len(subs))
            result = await asyncio.get_running_loop().run_in_executor(
                None,
                functools.partial(tally_vrf, ctx, seed, subs, standing, executor=pool),
            )
        if await self.block_hash(c) != cutoff_hash:
            raise ChainMoved()
        return result

    async def seed_of(self, round: int) -> bytes | None:
        """Vrf mode: round 0's seed from the board's start block; round r's from round r-1's
        seed and leader output (None while round r-1 is not decided)."""
        if round == 0:
            start = await self.block_hash(self.schedule.start)
            board = bytes.fromhex(self.board.address[2:])
            return first_seed(chain_id_bytes(self.chain_id), board, start)
        prev = await self.result_of(round - 1)
        if prev is None:
            return None
        return next_seed(prev.seed, prev.leader_output())

    def _vrf_pool(self, n: int) -> ProcessPoolExecutor | None:
        workers = self.cfg.workers or os.cpu_count() or 1
        if workers <= 1 or n < PARALLEL_THRESHOLD:
            return None
        if self._pool is None:
            # forkserver: the agent has threads, and forking a threaded process is unsafe.
            ctx = multiprocessing.get_context("forkserver")
            self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
        return self._pool
