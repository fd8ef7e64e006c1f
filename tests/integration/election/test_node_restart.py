"""The full node restarts in the middle of a round (anvil stopped and started again from its
state dump: the chain and its logs survive, the state at old blocks does not, as on a pruning
node). The agents reconnect and decide that round and the next alike, every node a candidate."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.chainclient.anvil import LocalAnvil
from agent.localbroker import LocalMosquitto
from tests.integration.conftest import async_wait_until
from tests.integration.election.conftest import Miner, head
from tests.integration.election.test_rounds import (
    CONFIRMATIONS,
    full_rounds,
    rounds_of,
    start_election,
)

HONEST = 3


@pytest.fixture
def persistent_chain(tmp_path: Path) -> Iterator[tuple[LocalAnvil, Miner]]:
    state = tmp_path / "anvil-state.json"
    with LocalAnvil(tmp_path / "anvil", mining=False, extra=("--state", str(state))) as node:
        miner = Miner(node)
        try:
            yield node, miner
        finally:
            miner.stop()


async def test_agents_decide_alike_across_a_full_node_restart_mid_round(
    tmp_path: Path,
    upstream_broker: LocalMosquitto,
    contracts_built: Path,
    start_agent: Callable[..., Any],
    persistent_chain: tuple[LocalAnvil, Miner],
) -> None:
    node, miner = persistent_chain
    agents, keys, _cfg, sched, _board = await start_election(
        node, miner, upstream_broker, start_agent, "paper", HONEST
    )
    await async_wait_until(lambda: len(full_rounds(agents, HONEST)) >= 1, 120, "a full round")
    r = (sched.round_at(head(node)) or 0) + 1
    b = sched.boundary(r)
    await async_wait_until(lambda: head(node) >= b + CONFIRMATIONS, 120, "submissions mined")
    miner.hold()
    assert head(node) < sched.cutoff(r)
    node.stop()  # SIGTERM: anvil writes its state dump
    watchers = [a.agent.chain_watcher for a in agents]
    await async_wait_until(
        lambda: all(w is not None and not w.connected.is_set() for w in watchers),
        30,
        "every agent sees the node gone",
    )
    node.start()
    assert head(node) >= b + CONFIRMATIONS  # the chain survived the restart
    with pytest.raises(Exception, match="BlockOutOfRange"):
        node.rpc("eth_getBalance", [keys[0].address, hex(b)])  # old state did not
    miner.resume()
    await async_wait_until(
        lambda: all({r, r + 1} <= set(rounds_of(a).results) for a in agents),
        180,
        f"rounds {r} and {r + 1} decided",
    )
    for q in (r, r + 1):
        results = [rounds_of(a).results[q] for a in agents]
        assert all(x.to_json() == results[0].to_json() for x in results)
        assert {n for n, _ in results[0].scores} == {k.address for k in keys}
        assert results[0].excluded == ()
