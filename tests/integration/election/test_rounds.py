"""Five agents (own keys, one anvil, one Mosquitto) run the election rounds and agree on the
elected set, round after round, in paper and in vrf mode; results are published retained on
`edgence/election/<round>`; an agent restarted in the middle of a round does not submit twice."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.attest.keys import GatewayKey
from agent.attest.vrfkey import VRF_SECRET_TAG
from agent.chainclient.anvil import LocalAnvil
from agent.election.board import ElectionBoard, committee_hash
from agent.election.rounds import ElectionRounds
from agent.election.schedule import RoundSchedule
from agent.election.tally import RoundResult
from agent.election.vrf_mode import next_seed
from agent.localbroker import LocalMosquitto
from tests.integration.conftest import Collector, RunningAgent, async_wait_until
from tests.integration.election.conftest import (
    Miner,
    deploy_board,
    election_config,
    fund,
    head,
    receipt,
    register_raw,
)

AGENTS = 5
LENGTH, WINDOW, CONFIRMATIONS, SEATS = 8, 5, 2, 2


def rounds_of(agent: RunningAgent) -> ElectionRounds:
    rounds = agent.agent.election
    assert rounds is not None
    return rounds


def full_rounds(agents: list[RunningAgent], n: int) -> list[int]:
    """Rounds every agent decided with all `n` agents as candidates."""
    common: set[int] | None = None
    for a in agents:
        mine = {q for q, r in rounds_of(a).results.items() if len(r.scores) == n}
        common = mine if common is None else common & mine
    return sorted(common or ())


async def start_election(
    node: LocalAnvil,
    miner: Miner,
    broker: LocalMosquitto,
    start_agent: Callable[..., Any],
    mode: str,
    count: int = AGENTS,
    before_start: Callable[[str, RoundSchedule], None] | None = None,
    registry: str | None = None,
    timeouts: tuple[int, int] = (2, 6),
    **sections: dict[str, Any],
) -> tuple[list[RunningAgent], list[GatewayKey], dict[str, Any], RoundSchedule, str]:
    start = head(node) + 40  # room for deployment and registrations before round 0
    board = await asyncio.to_thread(
        deploy_board, node, mode, start, LENGTH, WINDOW, registry, *timeouts
    )
    keys = [GatewayKey.generate() for _ in range(count)]
    for key in keys:
        fund(node, key)
    # Masternodes: collateral and VRF key in the board's registry (the operator's step).
    regs = [register_raw(node, board, k, k.derive_secret(VRF_SECRET_TAG)) for k in keys]
    for tx in regs:
        assert (await asyncio.to_thread(receipt, node, tx))["status"] == "0x1"
    cfg = election_config(
        broker,
        node,
        board,
        mode,
        k=SEATS,
        round_length=LENGTH,
        cutoff=WINDOW,
        confirmations=CONFIRMATIONS,
    )
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    sched = RoundSchedule(start, LENGTH, WINDOW, CONFIRMATIONS)
    if before_start is not None:
        await asyncio.to_thread(before_start, board, sched)

    def expect(h: int) -> int:
        # The agents submit once the boundary block has its confirmations.
        r = sched.round_at(h)
        return count if r is not None and h == sched.boundary(r) + CONFIRMATIONS - 1 else 0

    miner.expect = expect
    agents = [await start_agent(cfg, key, name=f"gw{i}") for i, key in enumerate(keys)]
    for a in agents:
        await asyncio.wait_for(rounds_of(a).registered.wait(), 60)
    return agents, keys, cfg, sched, board


def check_agreement(
    agents: list[RunningAgent], rounds: list[int], keys: list[GatewayKey], broker: LocalMosquitto
) -> None:
    addresses = {k.address for k in keys}
    retained = Collector(broker.port, "edgence/election/#")
    try:
        for q in rounds:
            results = [rounds_of(a).results[q] for a in agents]
            first = results[0]
            assert all(r.to_json() == first.to_json() for r in results), q
            assert len(first.elected) == min(SEATS, len(addresses))
            assert set(first.elected) <= addresses
            assert {n for n, _ in first.scores} == addresses
            assert first.excluded == ()
            # Elected = the SEATS highest scores.
            scores = {n: int(s, 16) for n, s in first.scores}
            assert min(scores[n] for n in first.elected) >= max(
                (s for n, s in scores.items() if n not in first.elected), default=-1
            )

        def has_all() -> bool:
            with retained.lock:
                topics = {t for t, _, r in retained.messages if r}
            return all(f"edgence/election/{q}" in topics for q in rounds)

        from tests.integration.conftest import wait_until

        wait_until(has_all, 10, "retained election results")
        with retained.lock:
            got = {t: p for t, p, r in retained.messages if r}
        for q in rounds:
            published = RoundResult.from_json(got[f"edgence/election/{q}"])
            assert published == rounds_of(agents[0]).results[q]
            assert json.loads(got[f"edgence/election/{q}"])["round"] == q
    finally:
        retained.close()


async def test_five_agents_agree_on_paper_rounds_and_a_restart_does_not_submit_twice(
    tmp_path: Path,
    upstream_broker: LocalMosquitto,
    contracts_built: Path,
    start_agent: Callable[..., Any],
    chain: tuple[LocalAnvil, Miner],
) -> None:
    node, miner = chain
    agents, keys, cfg, sched, board_addr = await start_election(
        node, miner, upstream_broker, start_agent, "paper"
    )
    await async_wait_until(lambda: len(full_rounds(agents, AGENTS)) >= 2, 180, "two full rounds")

    # Restart agent 0 in the middle of a round, after it submitted and before the cutoff.
    first = rounds_of(agents[0])
    r = max(first.submitted) + 1
    await async_wait_until(lambda: r in first.submitted, 60, f"agent 0 submits in round {r}")
    miner.hold()
    assert head(node) < sched.cutoff(r) - 1
    await agents[0].stop()
    agents[0] = await start_agent(cfg, keys[0], name="gw0")
    await asyncio.wait_for(rounds_of(agents[0]).registered.wait(), 30)
    miner.resume()
    await async_wait_until(
        lambda: all(r + 1 in rounds_of(a).results for a in agents), 180, f"round {r + 1} decided"
    )
    board = ElectionBoard(rounds_of(agents[1]).rpc, board_addr)
    assert await board.submission_count(r, keys[0].address) == 1
    # The new instance looked at round r while its window was open, found its own submission
    # (by its call data in the transaction store) and sent nothing: one submission on chain.
    assert r in rounds_of(agents[0]).submitted
    # The restarted agent decided round r too (from its store's next round).
    assert r in rounds_of(agents[0]).results
    rounds = [q for q in full_rounds(agents, AGENTS) if q >= r]
    assert r in rounds and len(rounds) >= 2
    await asyncio.to_thread(
        check_agreement, agents, full_rounds(agents, AGENTS), keys, upstream_broker
    )


async def test_five_agents_agree_on_vrf_rounds(
    tmp_path: Path,
    upstream_broker: LocalMosquitto,
    contracts_built: Path,
    start_agent: Callable[..., Any],
    chain: tuple[LocalAnvil, Miner],
) -> None:
    node, miner = chain
    agents, keys, _cfg, sched, board_addr = await start_election(
        node, miner, upstream_broker, start_agent, "vrf"
    )
    await async_wait_until(lambda: len(full_rounds(agents, AGENTS)) >= 3, 240, "three full rounds")
    rounds = full_rounds(agents, AGENTS)
    await asyncio.to_thread(check_agreement, agents, rounds, keys, upstream_broker)
    # Every round's seed chains through the one before: its seed and its leader's output.
    results = rounds_of(agents[0]).results
    chained = [q for q in rounds if q - 1 in results]
    assert chained
    for q in chained:
        prev = results[q - 1]
        assert results[q].seed == next_seed(prev.seed, prev.leader_output())
    # The committee has a job: its leader posted it on the board for its epoch, undisputed.
    board = ElectionBoard(rounds_of(agents[0]).rpc, board_addr)
    q = rounds[0]
    await async_wait_until(
        lambda: head(node) > sched.boundary(q + 1) + 3, 60, f"epoch {q} under way"
    )
    assert await board.committee_hash(q) == committee_hash(results[q].elected)
    assert not await board.disputed(q)
    leader_duty = [a for a in agents if rounds_of(a).node == results[q].elected[0]]
    assert leader_duty


async def test_without_a_bridge_results_go_out_on_the_elections_own_connection(
    tmp_path: Path,
    upstream_broker: LocalMosquitto,
    contracts_built: Path,
    start_agent: Callable[..., Any],
    chain: tuple[LocalAnvil, Miner],
) -> None:
    node, miner = chain
    agents, keys, _cfg, _sched, _board = await start_election(
        node,
        miner,
        upstream_broker,
        start_agent,
        "vrf",
        2,
        bridge={"enabled": False},
        election={"mqtt": {"url": upstream_broker.url}},
    )
    assert all(a.agent.bridge is None for a in agents)
    await async_wait_until(lambda: len(full_rounds(agents, 2)) >= 1, 120, "a full round")
    rounds = full_rounds(agents, 2)
    await asyncio.to_thread(check_agreement, agents, rounds, keys, upstream_broker)
