"""Helpers for the election tests: the ElectionBoard deployed on a real anvil that mines only
when the test's miner says so, agent configs pointing at it, and raw transactions from keys
the test holds (attackers)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import coincurve
import pytest

from agent.attest.keys import GatewayKey
from agent.chainclient.anvil import DEV_PRIVATE_KEY, LocalAnvil
from agent.chainclient.contracts import load_artifact
from agent.chainclient.rpc import hex_int
from agent.chainclient.tx import Eip1559Tx, SignedTx, contract_address, encode_constructor
from agent.election.board import ElectionBoard, vrf_key_digest
from agent.errors import ChainError
from agent.localbroker import LocalMosquitto
from tests.integration.conftest import agent_config_dict, wait_until


def head(node: LocalAnvil) -> int:
    return hex_int(node.rpc("eth_blockNumber"))


def pooled(node: LocalAnvil) -> int:
    content = node.rpc("txpool_content")
    assert isinstance(content, dict)
    return sum(len(txs) for txs in content["pending"].values())


class Miner:
    """Mines anvil's blocks from a thread (anvil runs with --no-mining). Every `gap` seconds a
    block; but at a head where `expect(head)` says n transactions are coming (the agents submit
    there), it first waits until n are in the pool (at most `patience` seconds), so that a slow
    agent on a busy machine does not miss its window. `hold()` stops it; `resume()` goes on."""

    def __init__(self, node: LocalAnvil, gap: float = 0.08, patience: float = 15.0) -> None:
        self.node = node
        self.gap = gap
        self.patience = patience
        self.expect: Callable[[int], int] = lambda h: 0
        self._stop = threading.Event()
        self._run = threading.Event()
        self._run.set()
        self._idle = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.gap):
            if not self._run.is_set():
                self._idle.set()
                self._run.wait(0.2)
                continue
            self._idle.clear()
            try:
                want = self.expect(head(self.node))
                if want:
                    deadline = time.monotonic() + self.patience
                    while pooled(self.node) < want and time.monotonic() < deadline:
                        if self._stop.wait(0.05):
                            return
                if self._run.is_set():
                    self.node.rpc("evm_mine")
            except (OSError, ChainError):
                continue  # the node is restarting: try again on the next tick

    def hold(self) -> None:
        self._idle.clear()
        self._run.clear()
        self._idle.wait(5)

    def resume(self) -> None:
        self._run.set()

    def stop(self) -> None:
        self._stop.set()
        self._run.set()
        self._thread.join(5)


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[tuple[LocalAnvil, Miner]]:
    with LocalAnvil(tmp_path / "anvil", mining=False) as node:
        miner = Miner(node)
        try:
            yield node, miner
        finally:
            miner.stop()


def send_raw(
    node: LocalAnvil,
    key: GatewayKey,
    to: str | None,
    data: bytes,
    gas: int = 400_000,
    nonce: int | None = None,
) -> SignedTx:
    if nonce is None:
        nonce = hex_int(node.rpc("eth_getTransactionCount", [key.address, "pending"]))
    tx = Eip1559Tx(
        chain_id=node.chain_id,
        nonce=nonce,
        max_priority_fee_per_gas=10**9,
        max_fee_per_gas=100 * 10**9,
        gas=gas,
        to=to,
        data=data,
    ).sign(key)
    node.rpc("eth_sendRawTransaction", [tx.raw_hex])
    return tx


def receipt(node: LocalAnvil, tx: SignedTx) -> dict[str, Any]:
    found: list[Any] = [None]

    def mined() -> bool:
        found[0] = node.rpc("eth_getTransactionReceipt", [tx.hash_hex])
        return found[0] is not None

    wait_until(mined, 30, f"receipt of {tx.hash_hex}")
    assert isinstance(found[0], dict)
    return found[0]


def deploy_board(node: LocalAnvil, mode: str, start: int, length: int, window: int) -> str:
    art = load_artifact("ElectionBoard")
    dev = GatewayKey.from_bytes(DEV_PRIVATE_KEY)
    args = encode_constructor(art.abi, 0 if mode == "paper" else 1, start, length, window)
    tx = send_raw(node, dev, None, art.bytecode + args, gas=3_000_000)
    assert receipt(node, tx)["status"] == "0x1"
    return contract_address(dev.address, tx.tx.nonce)


def fund(node: LocalAnvil, key: GatewayKey) -> None:
    node.rpc("anvil_setBalance", [key.address, hex(10**20)])


def register_raw(
    node: LocalAnvil, board: ElectionBoard, key: GatewayKey, vrf_secret: bytes
) -> SignedTx:
    """A node the test drives itself registers: its own key and a VRF key with its proof of
    possession, as the contract demands."""
    vrf = coincurve.PrivateKey(vrf_secret)
    rec = vrf.sign_recoverable(
        vrf_key_digest(node.chain_id, board.address, key.address), hasher=None
    )
    data = board.register_data(
        key.public_key_uncompressed[1:],
        vrf.public_key.format(compressed=False)[1:],
        rec[:64] + bytes((27 + rec[64],)),
    )
    return send_raw(node, key, board.address, data)


def election_config(
    broker: LocalMosquitto, node: LocalAnvil, board: str, mode: str, **election: Any
) -> dict[str, Any]:
    return agent_config_dict(
        broker,
        broker,  # one Mosquitto: the devices' broker and the upstream one
        chain={
            "enabled": True,
            "rpc_url": node.url,
            "ws_url": node.ws_url,
            "poll_interval": 0.2,
        },
        election={"enabled": True, "mode": mode, "board": board, **election},
    )
