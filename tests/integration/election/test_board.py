"""The ElectionBoard contract on a real anvil: only active masternodes of its registry may
submit (not an unregistered key, not one that withdrew, not one whose heartbeats lapsed), the
mode of the board, the schedule it was deployed with; and the registry's events as the agents
read them (who may stand at a cutoff, with which VRF key)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.attest import ecvrf
from agent.attest.keys import GatewayKey
from agent.chainclient.anvil import DEV_PRIVATE_KEY, LocalAnvil
from agent.chainclient.contracts import load_artifact
from agent.chainclient.rpc import RpcClient, hex_int
from agent.chainclient.tx import encode_call, encode_constructor
from agent.election.board import ElectionBoard, RegistryLogs, committee_hash
from agent.election.standing import standings
from tests.integration.election.conftest import (
    deploy,
    deploy_board,
    deploy_registry,
    fund,
    head,
    receipt,
    register_raw,
    registry_of,
    registry_tx,
    send_raw,
)

WINDOW = 6  # the registry's heartbeat window in these tests, blocks


def vrf_secret(i: int) -> bytes:
    return hashlib.sha256(b"board test vrf %d" % i).digest()


@pytest.fixture
async def board(anvil: LocalAnvil, contracts_built: Path) -> AsyncIterator[ElectionBoard]:
    registry = deploy_registry(anvil, heartbeat_window=WINDOW)
    address = deploy_board(anvil, "paper", head(anvil) + 5, 10, 8, registry=registry)
    async with RpcClient(anvil.url) as rpc:
        yield ElectionBoard(rpc, address)


def status(node: LocalAnvil, key: GatewayKey, board: ElectionBoard, data: bytes) -> str:
    return str(receipt(node, send_raw(node, key, board.address, data))["status"])


def mine_to(node: LocalAnvil, height: int) -> None:
    while head(node) < height:
        node.rpc("evm_mine")


async def test_only_active_masternodes_may_submit(anvil: LocalAnvil, board: ElectionBoard) -> None:
    _mode, start, length, _window = await board.schedule()
    assert await board.registry() == registry_of(anvil, board.address)
    member, stranger, leaver, sleeper = (GatewayKey.generate() for _ in range(4))
    for i, k in enumerate((member, leaver, sleeper)):
        fund(anvil, k)
        assert receipt(anvil, register_raw(anvil, board, k, vrf_secret(i)))["status"] == "0x1"
    fund(anvil, stranger)
    registry = await board.registry()
    assert receipt(anvil, registry_tx(anvil, registry, leaver, "withdraw"))["status"] == "0x1"
    mine_to(anvil, start + 1)
    sel = board.selection_data(0, bytes(32), b"\x01" * 64)
    assert status(anvil, member, board, sel) == "0x1"
    assert status(anvil, stranger, board, sel) == "0x0"  # NotActive: never a masternode
    assert status(anvil, leaver, board, sel) == "0x0"  # NotActive: withdrew its collateral
    # The sleeper's heartbeats lapse: refused; a heartbeat puts it back in service.
    r1 = 1
    mine_to(anvil, start + r1 * length + 1)
    sel1 = board.selection_data(r1, bytes(32), b"\x01" * 64)
    assert status(anvil, sleeper, board, sel1) == "0x0"
    assert receipt(anvil, registry_tx(anvil, registry, sleeper, "heartbeat"))["status"] == "0x1"
    assert status(anvil, sleeper, board, sel1) == "0x1"
    assert await board.submission_count(0, member.address) == 1
    assert await board.submission_count(r1, sleeper.address) == 1


async def test_board_reports_its_schedule_and_refuses_the_other_modes_submissions(
    anvil: LocalAnvil, board: ElectionBoard
) -> None:
    mode, start, length, window = await board.schedule()
    assert (mode, length, window) == ("paper", 10, 8)
    key = GatewayKey.generate()
    fund(anvil, key)
    assert receipt(anvil, register_raw(anvil, board, key, vrf_secret(4)))["status"] == "0x1"
    mine_to(anvil, start + 1)
    assert status(anvil, key, board, board.proof_data(0, b"\x00" * 81)) == "0x0"  # WrongMode
    assert status(anvil, key, board, board.selection_data(0, bytes(32), b"\x01" * 64)) == "0x1"
    assert await board.submission_count(0, key.address) == 1


@pytest.mark.parametrize(
    ("length", "window", "with_registry"),
    [(10, 0, True), (10, 11, True), (300, 256, True), (0, 0, True), (10, 5, False)],
)
def test_impossible_schedules_and_a_missing_registry_are_refused_at_deployment(
    anvil: LocalAnvil, contracts_built: Path, length: int, window: int, with_registry: bool
) -> None:
    registry = deploy_registry(anvil) if with_registry else "0x" + "00" * 19 + "01"
    art = load_artifact("ElectionBoard")
    dev = GatewayKey.generate()
    fund(anvil, dev)
    args = encode_constructor(art.abi, 0, registry, 0, length, window, 1, 2)
    tx = send_raw(anvil, dev, None, art.bytecode + args, gas=3_000_000)
    assert receipt(anvil, tx)["status"] == "0x0"


async def test_registry_events_say_who_stands_at_each_cutoff_and_with_which_key(
    anvil: LocalAnvil, board: ElectionBoard
) -> None:
    registry = await board.registry()
    steady, changer, leaver, sleeper = (GatewayKey.generate() for _ in range(4))
    blocks: dict[str, int] = {}
    for i, k in enumerate((steady, changer, leaver, sleeper)):
        fund(anvil, k)
        rc = receipt(anvil, register_raw(anvil, board, k, vrf_secret(10 + i)))
        blocks[k.address] = hex_int(rc["blockNumber"])
    key_height = head(anvil) + 1  # every registration is below it
    new_key = ecvrf.public_key_of(vrf_secret(20))
    rc = receipt(anvil, registry_tx(anvil, registry, changer, "setVrfPublicKey", new_key))
    assert rc["status"] == "0x1"
    for _ in range(3):
        receipt(anvil, registry_tx(anvil, registry, steady, "heartbeat"))
        receipt(anvil, registry_tx(anvil, registry, changer, "heartbeat"))
        receipt(anvil, registry_tx(anvil, registry, leaver, "heartbeat"))
    before_leaving = head(anvil)
    receipt(anvil, registry_tx(anvil, registry, leaver, "withdraw"))
    late = GatewayKey.generate()
    fund(anvil, late)
    receipt(anvil, register_raw(anvil, board, late, vrf_secret(30)))
    cutoff = head(anvil)
    assert cutoff > blocks[sleeper.address] + WINDOW  # the sleeper never beat: inactive
    nodes = [bytes.fromhex(k.address[2:]) for k in (steady, changer, leaver, sleeper, late)]
    async with RpcClient(anvil.url) as rpc:
        logs = RegistryLogs(rpc, registry)
        assert await logs.heartbeat_window() == WINDOW
        now = standings(
            await logs.events(nodes, cutoff),
            nodes,
            cutoff=cutoff,
            key_height=key_height,
            heartbeat_window=WINDOW,
        )
        earlier = standings(
            await logs.events(nodes, before_leaving),
            nodes,
            cutoff=before_leaving,
            key_height=key_height,
            heartbeat_window=WINDOW,
        )
    s, c, lv, sl, lt = (now[n] for n in nodes)
    assert (s.reason, s.vrf_key) == (None, ecvrf.public_key_of(vrf_secret(10)))
    # The key set after the key height does not count for this round: the old one does.
    assert (c.reason, c.vrf_key) == (None, ecvrf.public_key_of(vrf_secret(11)))
    assert lv.reason == "not-a-masternode"
    assert sl.reason == "inactive"
    assert lt.reason == "registered-too-late"
    assert earlier[nodes[2]].reason is None  # the leaver stood before it withdrew


async def test_the_committee_is_posted_once_and_its_ranks_report_in_turn(
    anvil: LocalAnvil, board: ElectionBoard
) -> None:
    _mode, start, length, window = await board.schedule()
    lead, fallback = await board.timeouts()
    registry = await board.registry()
    a, b, c, liar = (GatewayKey.generate() for _ in range(4))
    for i, k in enumerate((a, b, c, liar)):
        fund(anvil, k)
        assert receipt(anvil, register_raw(anvil, board, k, vrf_secret(40 + i)))["status"] == "0x1"
    committee = (a.address, b.address)
    post = board.committee_data(0, committee)
    mine_to(anvil, start + window - 1)
    assert status(anvil, a, board, post) == "0x0"  # NotDecided: round 0's cutoff not passed
    mine_to(anvil, start + window)
    for k in (a, b, c, liar):  # (this registry's heartbeat window is short)
        assert receipt(anvil, registry_tx(anvil, registry, k, "heartbeat"))["status"] == "0x1"
    assert status(anvil, a, board, post) == "0x1"
    assert await board.committee_hash(0) == committee_hash(committee)
    # Epoch 0: blocks (boundary(1), boundary(2)]; rank i from offset i * lead; all at fallback.
    first = start + length + 1
    for offset in range(length):
        at = first + offset
        assert await board.may_report(a.address, at)
        assert await board.may_report(b.address, at) == (offset >= lead)
        assert await board.may_report(c.address, at) == (offset >= fallback)
    assert await board.may_report(c.address, first - 1)  # before the first epoch: anyone
    stranger = GatewayKey.generate()
    assert not await board.may_report(stranger.address, first + fallback)  # not a masternode
    # The same committee again changes nothing; another one opens the epoch to everyone.
    assert status(anvil, b, board, post) == "0x1"
    assert not await board.disputed(0)
    assert status(anvil, liar, board, board.committee_data(0, (liar.address,))) == "0x1"
    assert await board.disputed(0)
    assert await board.committee_hash(0) == committee_hash(committee)
    assert await board.may_report(c.address, first)


async def test_an_oracle_reserved_for_the_committee_refuses_others_until_the_fallback(
    anvil: LocalAnvil, contracts_built: Path
) -> None:
    """ObservationOracle.setAggregators(board): submitBatch (here empty: the gate comes first)
    from the epoch's leader, from the next in rank after the leader's timeout, from anyone
    active after the fallback timeout; never from a key that is not a masternode."""
    registry = deploy_registry(anvil, heartbeat_window=1_000)
    length, window, lead, fallback = 10, 4, 2, 6
    start = head(anvil) + 12
    address = deploy_board(anvil, "paper", start, length, window, registry, lead, fallback)
    dev = GatewayKey.from_bytes(DEV_PRIVATE_KEY)
    oracle = deploy(anvil, "ObservationOracle", registry, 60)
    art = load_artifact("ObservationOracle")
    other = GatewayKey.generate()
    fund(anvil, other)
    gate = encode_call(art.function("setAggregators"), address)
    assert receipt(anvil, send_raw(anvil, other, oracle, gate))["status"] == "0x0"  # deployer's
    assert receipt(anvil, send_raw(anvil, dev, oracle, gate))["status"] == "0x1"
    assert receipt(anvil, send_raw(anvil, dev, oracle, gate))["status"] == "0x0"  # once
    a, b, c = (GatewayKey.generate() for _ in range(3))
    for i, k in enumerate((a, b, c)):
        fund(anvil, k)
        assert (
            receipt(anvil, register_raw(anvil, address, k, vrf_secret(50 + i)))["status"] == "0x1"
        )
    async with RpcClient(anvil.url) as rpc:
        board = ElectionBoard(rpc, address)
        mine_to(anvil, start + window)
        assert status(anvil, a, board, board.committee_data(0, (a.address, b.address))) == "0x1"
    empty = encode_call(art.function("submitBatch"), [], [], [])

    def report(k: GatewayKey) -> tuple[int, bool]:
        rc = receipt(anvil, send_raw(anvil, k, oracle, empty))
        return hex_int(rc["blockNumber"]) - first, rc["status"] == "0x1"

    first = start + length + 1  # epoch 0's first block
    mine_to(anvil, first - 1)
    assert report(a) == (0, True)  # the leader, from the epoch's first block
    seen: dict[str, list[tuple[int, bool]]] = {b.address: [], c.address: []}
    while head(anvil) < first + length - 2:
        for k in (b, c):
            seen[k.address].append(report(k))
    assert {ok for _, ok in seen[b.address]} == {True, False}
    for offset, ok in seen[b.address]:
        assert ok == (offset >= lead)
    for offset, ok in seen[c.address]:
        assert ok == (offset >= fallback)
    stranger = GatewayKey.generate()
    fund(anvil, stranger)
    assert str(receipt(anvil, send_raw(anvil, stranger, oracle, empty))["status"]) == "0x0"
