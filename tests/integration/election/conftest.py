"""Helpers for the election tests: the ElectionBoard and its MasternodeRegistry deployed on a
real anvil that mines only when the test's miner says so, agent configs pointing at it, and raw
transactions from keys the test holds (masternode registrations, attackers)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_abi.abi import decode as abi_decode

from agent.attest import ecvrf
from agent.attest.keys import GatewayKey
from agent.chainclient.anvil import DEV_PRIVATE_KEY, LocalAnvil
from agent.chainclient.contracts import load_artifact
from agent.chainclient.rpc import hex_int
from agent.chainclient.tx import (
    Eip1559Tx,
    SignedTx,
    contract_address,
    encode_call,
    encode_constructor,
)
from agent.election.board import ElectionBoard
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
    agent on a busy machine does not miss its window; likewise at a head where `waits_for(head)`
    is false, until it is true (at most `patience` seconds). `hold_at`: it stops by itself once
    the head reaches that block. `hold()` stops it; `resume()` goes on."""

    def __init__(self, node: LocalAnvil, gap: float = 0.08, patience: float = 15.0) -> None:
        self.node = node
        self.gap = gap
        self.patience = patience
        self.expect: Callable[[int], int] = lambda h: 0
        self.waits_for: Callable[[int], bool] = lambda h: True
        self.hold_at: int | None = None
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
                h = head(self.node)
                if self.hold_at is not None and h >= self.hold_at:
                    self._run.clear()
                    continue
                want = self.expect(h)
                deadline = time.monotonic() + self.patience
                while (want and pooled(self.node) < want) or not self.waits_for(h):
                    if self._stop.wait(0.05):
                        return
                    if time.monotonic() > deadline:
                        break
                if self._run.is_set():
                    self.node.rpc("evm_mine")
            except (OSError, ChainError):
                continue  # the node is restarting: try again on the next tick

    def hold(self) -> None:
        self._idle.clear()
        self._run.clear()
        self._idle.wait(5)

    def held(self) -> bool:
        return self._idle.is_set()

    def resume(self) -> None:
        self.hold_at = None
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
    value: int = 0,
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
        value=value,
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


COLLATERAL = 10**18
HEARTBEAT_WINDOW = 100_000  # blocks: the tests' masternodes stay active without heartbeats


def deploy(node: LocalAnvil, name: str, *args: Any) -> str:
    art = load_artifact(name)
    dev = GatewayKey.from_bytes(DEV_PRIVATE_KEY)
    tx = send_raw(node, dev, None, art.bytecode + encode_constructor(art.abi, *args), 12_000_000)
    assert receipt(node, tx)["status"] == "0x1"
    return contract_address(dev.address, tx.tx.nonce)


def deploy_registry(node: LocalAnvil, heartbeat_window: int = HEARTBEAT_WINDOW) -> str:
    return deploy(node, "MasternodeRegistry", COLLATERAL, heartbeat_window)


def deploy_board(
    node: LocalAnvil,
    mode: str,
    start: int,
    length: int,
    window: int,
    registry: str | None = None,
    leader_timeout: int = 2,
    fallback_timeout: int | None = None,
) -> str:
    """An ElectionBoard on `registry` (a new MasternodeRegistry when None); by default the
    leader has 2 blocks of an epoch, the next 2 more, and anyone reports from 3/4 of it."""
    registry = registry or deploy_registry(node)
    code = 0 if mode == "paper" else 1
    fallback = fallback_timeout if fallback_timeout is not None else max(2, length * 3 // 4)
    args = (code, registry, start, length, window, leader_timeout, fallback)
    return deploy(node, "ElectionBoard", *args)


def call(node: LocalAnvil, contract: str, artifact: str, fn: str, *args: Any) -> tuple[Any, ...]:
    item = load_artifact(artifact).function(fn)
    out = node.rpc(
        "eth_call", [{"to": contract, "data": "0x" + encode_call(item, *args).hex()}, "latest"]
    )
    types = [o["type"] for o in item["outputs"]]
    return tuple(abi_decode(types, bytes.fromhex(str(out)[2:])))


def registry_of(node: LocalAnvil, board: str) -> str:
    return str(call(node, board, "ElectionBoard", "registry")[0]).lower()


def fund(node: LocalAnvil, key: GatewayKey) -> None:
    node.rpc("anvil_setBalance", [key.address, hex(10**20)])


def registry_tx(node: LocalAnvil, registry: str, key: GatewayKey, fn: str, *args: Any) -> SignedTx:
    item = load_artifact("MasternodeRegistry").function(fn)
    value = COLLATERAL if fn == "register" else 0
    return send_raw(node, key, registry, encode_call(item, *args), value=value)


def register_raw(
    node: LocalAnvil, board: ElectionBoard | str, key: GatewayKey, vrf_secret: bytes
) -> SignedTx:
    """A masternode registers in the board's registry: collateral and its VRF key (the one
    registration there is)."""
    address = board if isinstance(board, str) else board.address
    registry = registry_of(node, address)
    return registry_tx(node, registry, key, "register", ecvrf.public_key_of(vrf_secret))


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
