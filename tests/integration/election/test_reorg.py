"""A reorg shallower than the confirmation depth in the middle of a round: the block holding
every honest submission is replaced. The agents' submissions come back on the new branch (the
transaction sender re-sends what the node lost, same nonce and call data, so never twice), and
every agent decides the round alike with every honest node a candidate."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.chainclient.anvil import LocalAnvil
from agent.election.board import ElectionBoard
from agent.localbroker import LocalMosquitto
from tests.integration.conftest import async_wait_until
from tests.integration.election.conftest import Miner, head, pooled
from tests.integration.election.test_rounds import CONFIRMATIONS, rounds_of, start_election

HONEST = 3


async def test_a_shallow_reorg_that_drops_the_submissions_changes_nothing(
    tmp_path: Path,
    upstream_broker: LocalMosquitto,
    contracts_built: Path,
    start_agent: Callable[..., Any],
    chain: tuple[LocalAnvil, Miner],
) -> None:
    node, miner = chain
    agents, keys, _cfg, sched, board_addr = await start_election(
        node,
        miner,
        upstream_broker,
        start_agent,
        "paper",
        HONEST,
        election={"committee": False},  # only the submissions in the pool, none other
    )
    board = ElectionBoard(rounds_of(agents[0]).rpc, board_addr)
    r = (sched.round_at(head(node)) or 0) + 2
    b = sched.boundary(r)
    await async_wait_until(lambda: head(node) >= b - 3, 120, "close to the boundary")
    miner.hold()
    assert head(node) < b
    while head(node) < b + CONFIRMATIONS - 1:
        node.rpc("evm_mine")
    await async_wait_until(lambda: pooled(node) >= HONEST, 60, "the honest submissions")
    snapshot = node.rpc("evm_snapshot")
    node.rpc("evm_mine")  # block b+2 holds the submissions ...
    old_hash = node.rpc("eth_getBlockByNumber", [hex(b + CONFIRMATIONS), False])["hash"]  # type: ignore[index]
    for k in keys:
        assert await board.submission_count(r, k.address) == 1
    senders = [rounds_of(a).sender for a in agents]

    async def all_mined() -> bool:
        return all([not await s.store.unfinished(node.chain_id) for s in senders])

    await async_wait_until(
        all_mined,
        60,
        "every agent sees its submission mined",
    )
    assert node.rpc("evm_revert", [snapshot]) is True  # ... and is replaced
    node.rpc("anvil_dropAllTransactions")  # the node forgets them, as after a real reorg race
    node.rpc("evm_mine")
    new_hash = node.rpc("eth_getBlockByNumber", [hex(b + CONFIRMATIONS), False])["hash"]  # type: ignore[index]
    assert new_hash != old_hash
    assert head(node) == b + CONFIRMATIONS
    for k in keys:
        assert await board.submission_count(r, k.address) == 0

    # The senders notice (their receipts are gone) and send the same submissions again.
    await async_wait_until(lambda: pooled(node) >= HONEST, 60, "the submissions sent again")
    miner.resume()
    await async_wait_until(
        lambda: all(r in rounds_of(a).results for a in agents), 120, f"round {r} decided"
    )
    results = [rounds_of(a).results[r] for a in agents]
    assert all(x.to_json() == results[0].to_json() for x in results)
    assert {n for n, _ in results[0].scores} == {k.address for k in keys}
    assert results[0].excluded == ()
    for k in keys:
        assert await board.submission_count(r, k.address) == 1
    assert sum(a.agent.metrics.get("own_tx_reorged") for a in agents) == HONEST
