"""The ElectionBoard contract on a real anvil: registration rules (own key, unique VRF key with
proof of possession, once only), the mode of the board, and the schedule it was deployed with."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import coincurve
import pytest

from agent.attest.keys import GatewayKey
from agent.chainclient.anvil import LocalAnvil
from agent.chainclient.contracts import load_artifact
from agent.chainclient.rpc import RpcClient
from agent.chainclient.tx import encode_constructor
from agent.election.board import ElectionBoard, compress, vrf_key_digest
from tests.integration.election.conftest import (
    deploy_board,
    fund,
    head,
    receipt,
    register_raw,
    send_raw,
)


def vrf_secret(i: int) -> bytes:
    return hashlib.sha256(b"board test vrf %d" % i).digest()


@pytest.fixture
async def board(anvil: LocalAnvil, contracts_built: Path) -> AsyncIterator[ElectionBoard]:
    address = deploy_board(anvil, "paper", head(anvil) + 5, 10, 4)
    async with RpcClient(anvil.url) as rpc:
        yield ElectionBoard(rpc, address)


def status(node: LocalAnvil, key: GatewayKey, board: ElectionBoard, data: bytes) -> str:
    return str(receipt(node, send_raw(node, key, board.address, data))["status"])


async def test_registration_records_both_keys_and_the_block(
    anvil: LocalAnvil, board: ElectionBoard
) -> None:
    key = GatewayKey.generate()
    fund(anvil, key)
    rc = receipt(anvil, register_raw(anvil, board, key, vrf_secret(0)))
    assert rc["status"] == "0x1"
    found = await board.nodes([bytes.fromhex(key.address[2:])], "latest")
    keys = found[bytes.fromhex(key.address[2:])]
    assert keys.registered_at == int(rc["blockNumber"], 16)
    assert keys.public_key == compress(key.public_key_uncompressed[1:])
    assert keys.vrf_key == coincurve.PrivateKey(vrf_secret(0)).public_key.format()
    # Once only.
    assert receipt(anvil, register_raw(anvil, board, key, vrf_secret(1)))["status"] == "0x0"


async def test_registration_refuses_foreign_keys_and_unproven_vrf_keys(
    anvil: LocalAnvil, board: ElectionBoard
) -> None:
    first, second, third = GatewayKey.generate(), GatewayKey.generate(), GatewayKey.generate()
    for k in (first, second, third):
        fund(anvil, k)
    assert receipt(anvil, register_raw(anvil, board, first, vrf_secret(2)))["status"] == "0x1"
    # Another node's VRF key (proof of possession cannot be forged, and the key is taken).
    assert receipt(anvil, register_raw(anvil, board, second, vrf_secret(2)))["status"] == "0x0"
    vrf = coincurve.PrivateKey(vrf_secret(3))
    vrf64 = vrf.public_key.format(compressed=False)[1:]
    # A proof of possession signed for another sender.
    rec = vrf.sign_recoverable(
        vrf_key_digest(anvil.chain_id, board.address, first.address), hasher=None
    )
    pop_for_first = rec[:64] + bytes((27 + rec[64],))
    data = board.register_data(second.public_key_uncompressed[1:], vrf64, pop_for_first)
    assert status(anvil, second, board, data) == "0x0"
    # Someone else's public key instead of the sender's own.
    rec = vrf.sign_recoverable(
        vrf_key_digest(anvil.chain_id, board.address, third.address), hasher=None
    )
    pop = rec[:64] + bytes((27 + rec[64],))
    data = board.register_data(first.public_key_uncompressed[1:], vrf64, pop)
    assert status(anvil, third, board, data) == "0x0"
    # The same, correctly: accepted.
    data = board.register_data(third.public_key_uncompressed[1:], vrf64, pop)
    assert status(anvil, third, board, data) == "0x1"


async def test_board_reports_its_schedule_and_refuses_the_other_modes_submissions(
    anvil: LocalAnvil, board: ElectionBoard
) -> None:
    mode, start, length, window = await board.schedule()
    assert (mode, length, window) == ("paper", 10, 4)
    key = GatewayKey.generate()
    fund(anvil, key)
    assert receipt(anvil, register_raw(anvil, board, key, vrf_secret(4)))["status"] == "0x1"
    while head(anvil) <= start:
        anvil.rpc("evm_mine")
    assert status(anvil, key, board, board.proof_data(0, b"\x00" * 81)) == "0x0"  # WrongMode
    assert status(anvil, key, board, board.selection_data(0, bytes(32), b"\x01" * 64)) == "0x1"
    assert await board.submission_count(0, key.address) == 1


@pytest.mark.parametrize(("length", "window"), [(10, 0), (10, 11), (300, 256), (0, 0)])
def test_impossible_schedules_are_refused_at_deployment(
    anvil: LocalAnvil, contracts_built: Path, length: int, window: int
) -> None:
    art = load_artifact("ElectionBoard")
    dev = GatewayKey.generate()
    fund(anvil, dev)
    args = encode_constructor(art.abi, 0, 0, length, window)
    tx = send_raw(anvil, dev, None, art.bytecode + args, gas=3_000_000)
    assert receipt(anvil, tx)["status"] == "0x0"
