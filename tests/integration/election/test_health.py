"""A running agent with [chain] and [election] (real anvil and Mosquitto) reports the chain's
height and its election role in /metrics and in the health document, as docs/operations.md
says: the chain watcher and the election rounds register them themselves."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.chainclient.anvil import LocalAnvil
from agent.localbroker import LocalMosquitto
from tests.integration.conftest import async_wait_until
from tests.integration.election.conftest import Miner, head
from tests.integration.election.test_rounds import rounds_of, start_election
from tests.integration.test_telemetry import scrape


def _health(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
        doc = json.loads(resp.read())
    assert isinstance(doc, dict)
    return doc


async def test_chain_height_and_election_role_show_in_metrics_and_health(
    tmp_path: Path,
    upstream_broker: LocalMosquitto,
    contracts_built: Path,
    start_agent: Callable[..., Any],
    chain: tuple[LocalAnvil, Miner],
) -> None:
    node, miner = chain
    agents, _keys, _cfg, _sched, _board = await start_election(
        node, miner, upstream_broker, start_agent, "paper", 1
    )
    telemetry = agents[0].agent.telemetry
    assert telemetry is not None
    await async_wait_until(lambda: telemetry.port is not None, 10, "metrics endpoint")
    port = telemetry.port
    assert port is not None

    # Registered on the board: a candidate, and the watcher has seen the node's head.
    doc = await asyncio.to_thread(_health, port)
    assert doc["election"] == {"role": "candidate"}
    assert 0 < doc["chain"]["height"] <= head(node)
    samples = await scrape(port)
    assert samples[("edgence_election_role", (("role", "candidate"),))] == 1
    assert 0 < samples[("edgence_chain_height", ())] <= head(node)

    # Alone with k=2 seats, the node is elected once its first round is decided.
    rounds = rounds_of(agents[0])
    await async_wait_until(lambda: bool(rounds.results), 120, "a decided round")
    doc = await asyncio.to_thread(_health, port)
    assert doc["election"] == {"role": "elected"}
    samples = await scrape(port)
    assert samples[("edgence_election_role", (("role", "elected"),))] == 1
    assert ("edgence_election_role", (("role", "candidate"),)) not in samples
    last = max(rounds.results.values(), key=lambda r: r.round)
    assert samples[("edgence_chain_height", ())] >= last.cutoff
