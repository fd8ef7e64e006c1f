"""The agent's own transactions: EIP-1559, signed with the masternode key, nonces managed
locally and kept in sqlite so that they survive restarts.

- A transaction is written to the store (synchronous=FULL) before it is broadcast, so a crash
  never lets a nonce be used twice; after a restart the next nonce is the larger of the
  store's and the node's pending count, and unfinished transactions are watched again.
- "nonce too low" (the nonce was used elsewhere, e.g. by the same key on another machine):
  the nonce is taken again from the node and the transaction re-signed.
- A transaction the node no longer knows (dropped from its pool, or never received because
  the node was down) is sent again with fees raised by `fee_bump_percent` (a replacement,
  same nonce); so is one still pending after `stuck_after_s`.
- Receipts are awaited with a number of confirmations, and a receipt counts only while its
  block is still the canonical block at that height (a reorg puts the transaction back to
  pending).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from agent.attest.keys import GatewayKey
from agent.chainclient.rpc import RpcClient, hex_int
from agent.chainclient.tx import Eip1559Tx, SignedTx
from agent.chainclient.txstore import OwnTx, TxStore
from agent.component import Health
from agent.errors import ChainError, NodeUnreachable, RpcError, RpcTimeout, TransactionError
from agent.logs import event
from agent.metrics import Metrics

GWEI = 10**9


def _is(exc: RpcError, *needles: str) -> bool:
    text = exc.message.lower()
    return any(n in text for n in needles)


class TxSender:
    """`await sender.start()`, then `tx_id = await sender.send(to, data)` and
    `receipt = await sender.wait(tx_id)`; `run()` watches unfinished transactions."""

    name = "tx-sender"

    def __init__(
        self,
        rpc: RpcClient,
        key: GatewayKey,
        chain_id: int,
        store_path: Path,
        *,
        metrics: Metrics | None = None,
        confirmations: int = 1,
        poll_interval_s: float = 1.0,
        stuck_after_s: float = 60.0,
        fee_bump_percent: int = 13,
        gas_margin_percent: int = 20,
        logger: logging.Logger | None = None,
    ) -> None:
        self.rpc = rpc
        self.key = key
        self.chain_id = chain_id
        self.store = TxStore(store_path)
        self.metrics = metrics or Metrics()
        self.confirmations = confirmations
        self.poll_interval = poll_interval_s
        self.stuck_after = stuck_after_s
        self.fee_bump = fee_bump_percent
        self.gas_margin = gas_margin_percent
        self.log = logger or logging.getLogger("agent.chainclient.sender")
        self._lock = asyncio.Lock()
        self._next_nonce: int | None = None
        self.ready = asyncio.Event()  # run() started (a node that is down is retried)
        self._node_down: str | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    async def open(self) -> None:
        await self.store.open()

    async def close(self) -> None:
        await self.store.close()

    async def stop(self, grace: float = 0.5) -> None:
        """Close the store (its task is cancelled after every component stopped)."""
        await self.close()

    def health(self) -> Health:
        return Health(
            "down" if self._node_down else "up",
            {"next_nonce": self._next_nonce, "error": self._node_down},
        )

    async def sync_nonce(self) -> int:
        """next nonce = max(what this store has used + 1, the node's pending count)."""
        await self.open()
        node = hex_int(
            await self.rpc.call("eth_getTransactionCount", [self.key.address, "pending"])
        )
        mine = await self.store.max_nonce()
        self._next_nonce = max(node, -1 if mine is None else mine + 1)
        event(
            self.log,
            "nonce_synced",
            account=self.key.address,
            node=node,
            store=mine,
            next=self._next_nonce,
        )
        return self._next_nonce

    async def check_chain(self) -> None:
        got = hex_int(await self.rpc.call("eth_chainId"))
        if got != self.chain_id:
            raise ChainError(
                f"the full node is on chain {got}, but gateway.chain_id is {self.chain_id}",
                fix="point chain.rpc_url at the right node or fix gateway.chain_id",
            )

    # -- sending -------------------------------------------------------------------------------
    async def fees(self) -> tuple[int, int]:
        """(max priority fee, max fee): the node's suggested tip, and twice the base fee on top."""
        block, tip_hex = await self.rpc.batch(
            [("eth_getBlockByNumber", ["latest", False]), ("eth_maxPriorityFeePerGas", [])]
        )
        if isinstance(block, Exception) or not isinstance(block, dict):
            raise ChainError(f"cannot read the latest block for the base fee: {block}")
        base = hex_int(block.get("baseFeePerGas", "0x0"))
        tip = GWEI if isinstance(tip_hex, Exception) else hex_int(tip_hex)
        return tip, 2 * base + tip

    async def send(
        self, to: str | None, data: bytes = b"", value: int = 0, gas: int | None = None
    ) -> int:
        """Sign and broadcast; returns the id by which to wait for it. Raises TransactionError
        if the node refuses it for a reason no retry fixes (reverts in estimation, no funds)."""
        await self.open()
        async with self._lock:
            if self._next_nonce is None:
                await self.sync_nonce()
            if gas is None:
                call: dict[str, Any] = {
                    "from": self.key.address,
                    "data": "0x" + data.hex(),
                    "value": hex(value),
                }
                if to is not None:
                    call["to"] = to
                try:
                    est = hex_int(await self.rpc.call("eth_estimateGas", [call]))
                except RpcError as exc:
                    raise TransactionError(f"transaction would fail: {exc.message}") from exc
                gas = est * (100 + self.gas_margin) // 100
            tip, cap = await self.fees()
            assert self._next_nonce is not None
            tx = Eip1559Tx(self.chain_id, self._next_nonce, tip, cap, gas, to, value, data)
            signed = tx.sign(self.key)
            # Taken before the store's await: if this task is cancelled meanwhile, the insert
            # may still commit, and the nonce must not be handed out again (the watcher sends
            # a stored, unbroadcast transaction like one lost by a crash).
            self._next_nonce += 1
            try:
                tx_id = await self.store.insert(signed, time.time())  # persisted before it leaves
            except Exception:
                self._next_nonce = tx.nonce  # not stored: the nonce is free again
                raise
            try:
                await self._broadcast(tx_id, signed)
            except TransactionError:
                # Refused outright: the nonce was not consumed; give it back.
                await self.store.delete(tx_id)
                self._next_nonce = tx.nonce
                raise
            self.metrics.inc("own_tx_sent")
            event(
                self.log,
                "tx_sent",
                id=tx_id,
                nonce=tx.nonce,
                hash=signed.hash_hex,
                to=to,
                gas=gas,
                max_fee=cap,
                tip=tip,
            )
            return tx_id

    async def _broadcast(self, tx_id: int, signed: SignedTx, attempts: int = 4) -> None:
        for _ in range(attempts):
            try:
                await self.rpc.call("eth_sendRawTransaction", [signed.raw_hex])
                return
            except (NodeUnreachable, RpcTimeout) as exc:
                # Kept in the store; the watcher sends it again when the node is back.
                event(
                    self.log,
                    "tx_broadcast_deferred",
                    logging.WARNING,
                    id=tx_id,
                    error=str(exc)[:120],
                )
                return
            except RpcError as exc:
                if _is(exc, "already known", "known transaction", "already imported"):
                    return
                if _is(exc, "nonce too low", "nonce has already been used", "underpriced"):
                    # The nonce is taken by a transaction this store does not know.
                    signed = await self._renonce(tx_id, signed, reason=exc.message)
                    continue
                raise TransactionError(
                    f"the node refused transaction #{tx_id}: {exc.message}"
                ) from exc
        raise TransactionError(f"transaction #{tx_id} could not be sent after {attempts} attempts")

    async def _renonce(self, tx_id: int, signed: SignedTx, reason: str) -> SignedTx:
        node = hex_int(
            await self.rpc.call("eth_getTransactionCount", [self.key.address, "pending"])
        )
        nonce = max(node, self._next_nonce or 0)
        self._next_nonce = nonce + 1
        new = replace(signed.tx, nonce=nonce).sign(self.key)
        await self.store.resigned(tx_id, new, time.time())
        self.metrics.inc("own_tx_renonced")
        event(
            self.log,
            "tx_renonced",
            logging.WARNING,
            id=tx_id,
            old_nonce=signed.tx.nonce,
            nonce=nonce,
            hash=new.hash_hex,
            reason=reason[:80],
        )
        return new

    async def _replace(self, own: OwnTx, reason: str) -> None:
        tip, cap = await self.fees()
        bumped = own.tx.bumped(self.fee_bump)
        tx = replace(
            bumped,
            max_priority_fee_per_gas=max(bumped.max_priority_fee_per_gas, tip),
            max_fee_per_gas=max(bumped.max_fee_per_gas, cap, tip),
        )
        new = tx.sign(self.key)
        await self.store.resigned(own.id, new, time.time())
        self.metrics.inc("own_tx_replaced", reason=reason)
        event(
            self.log,
            "tx_replaced",
            logging.WARNING,
            id=own.id,
            nonce=tx.nonce,
            reason=reason,
            old_hash=own.hash,
            hash=new.hash_hex,
            max_fee=tx.max_fee_per_gas,
        )
        await self._broadcast(own.id, new)

    # -- watching ------------------------------------------------------------------------------
    async def check_unfinished(self) -> None:
        """One pass of the watcher over every unfinished transaction, sending again those the
        node lost or never got (an agent stopped between storing and broadcasting one). A
        command that sends without the watcher running calls it first, so that its transaction
        does not wait forever behind a nonce the node never saw."""
        await self.open()
        for own in await self.store.unfinished(self.chain_id):
            await self.check(own.id)

    async def check(self, tx_id: int) -> OwnTx:
        """Look at one transaction once: mined (on the canonical chain)? dropped? stuck?"""
        own = await self.store.get(tx_id, self.chain_id)
        receipts = await self.rpc.batch([("eth_getTransactionReceipt", [h]) for h in own.hashes])
        for h, rc in zip(own.hashes, receipts, strict=True):
            if isinstance(rc, dict) and rc.get("blockHash"):
                bn = hex_int(rc["blockNumber"])
                canon = await self.rpc.call("eth_getBlockByNumber", [hex(bn), False])
                if isinstance(canon, dict) and canon.get("hash") == rc["blockHash"]:
                    if own.status != "mined" or own.block_hash != rc["blockHash"]:
                        await self.store.set_mined(own.id, bn, rc["blockHash"], h)
                        event(
                            self.log,
                            "tx_mined",
                            id=own.id,
                            nonce=own.tx.nonce,
                            hash=h,
                            block=bn,
                            status=rc.get("status"),
                        )
                    return await self.store.get(tx_id, self.chain_id)
        if own.status == "mined":
            # Its block is no longer canonical: back to pending, watched again.
            await self.store.set_mined(own.id, None, None, None)
            self.metrics.inc("own_tx_reorged")
            event(
                self.log,
                "tx_reorged",
                logging.WARNING,
                id=own.id,
                hash=own.mined_hash,
                block=own.block_number,
            )
            own = await self.store.get(tx_id, self.chain_id)
        known = await self.rpc.call("eth_getTransactionByHash", [own.hash])
        if known is None:
            latest = hex_int(
                await self.rpc.call("eth_getTransactionCount", [self.key.address, "latest"])
            )
            async with self._lock:
                if latest > own.tx.nonce:
                    # None of our versions was mined, yet the nonce is used: re-sign anew.
                    signed = SignedTx(own.tx, own.raw, bytes.fromhex(own.hash[2:]))
                    new = await self._renonce(own.id, signed, reason="nonce used elsewhere")
                    await self._broadcast(own.id, new)
                else:
                    await self._replace(own, "dropped")
        elif time.time() - own.broadcast_at > self.stuck_after:
            async with self._lock:
                await self._replace(own, "stuck")
        return await self.store.get(tx_id, self.chain_id)

    async def wait(
        self, tx_id: int, confirmations: int | None = None, limit_s: float | None = None
    ) -> dict[str, Any]:
        """The receipt once the transaction has `confirmations` blocks on the canonical chain
        (its own included). Raises TransactionError if it reverted."""
        need = self.confirmations if confirmations is None else confirmations
        loop = asyncio.get_running_loop()
        deadline = None if limit_s is None else loop.time() + limit_s
        while True:
            try:
                own = await self.check(tx_id)
                if own.status == "mined" and own.block_number is not None:
                    head = hex_int(await self.rpc.call("eth_blockNumber"))
                    if head - own.block_number + 1 >= need:
                        rc = await self.rpc.call("eth_getTransactionReceipt", [own.mined_hash])
                        if isinstance(rc, dict) and rc.get("blockHash") == own.block_hash:
                            if rc.get("status") != "0x1":
                                raise TransactionError(
                                    f"transaction #{tx_id} ({own.mined_hash}) reverted in block "
                                    f"{own.block_number}"
                                )
                            return rc
            except (NodeUnreachable, RpcTimeout) as exc:
                event(
                    self.log, "tx_wait_node_down", logging.WARNING, id=tx_id, error=str(exc)[:120]
                )
            if deadline is not None and loop.time() > deadline:
                raise TransactionError(
                    f"transaction #{tx_id} has no receipt with {need} confirmation(s) "
                    f"after {limit_s}s"
                )
            await asyncio.sleep(self.poll_interval)

    async def run(self) -> None:
        """Watch every unfinished transaction (resumed after a restart) until cancelled. A node
        on another chain than gateway.chain_id is an error (the supervisor logs it)."""
        await self.open()
        self.ready.set()
        while True:
            try:
                await self.check_chain()
                break
            except (NodeUnreachable, RpcTimeout) as exc:
                event(self.log, "tx_watch_node_down", logging.WARNING, error=str(exc)[:120])
                await asyncio.sleep(self.poll_interval)
        while True:
            try:
                if self._next_nonce is None:
                    await self.sync_nonce()
                for own in await self.store.unfinished(self.chain_id):
                    await self.check(own.id)
                self._node_down = None
            except (NodeUnreachable, RpcTimeout) as exc:
                self._node_down = str(exc)[:120]
                event(self.log, "tx_watch_node_down", logging.WARNING, error=str(exc)[:120])
            except ChainError as exc:
                event(self.log, "tx_watch_failed", logging.ERROR, error=str(exc)[:200])
            await asyncio.sleep(self.poll_interval)
