"""What `edgence-agent election status` and `election results` print, read from the store: the
node's duty in the current epoch and the decided rounds."""

from __future__ import annotations

import json
from typing import Any

from agent.election.store import ElectionStore
from agent.election.tally import RoundResult


async def status_lines(store: ElectionStore, round: int | None, count: int) -> list[str]:
    """Human-readable lines for `edgence-agent election status`."""
    rows: list[tuple[RoundResult, bool]]
    if round is not None:
        one = await store.result(round)
        rows = [] if one is None else [one]
    else:
        rows = await store.latest(count)
    lines: list[str] = []
    nxt = await store.next_round()
    board, mode = await store.meta("board"), await store.meta("mode")
    lines.append(f"board {board} mode {mode} next round to decide {nxt}")
    duty_line = await store.meta("duty")
    lines.append(f"duty: {duty_line}" if duty_line else "duty: none known yet (no epoch seen)")
    if not rows:
        lines.append("no decided round" + (f" {round}" if round is not None else "") + " yet")
    for res, published in rows:
        lines.append(
            f"round {res.round}: blocks {res.boundary + 1}..{res.cutoff}, "
            f"{len(res.scores)} candidate(s), {len(res.excluded)} excluded, "
            f"k={res.k}, {'published' if published else 'not yet published'}"
        )
        for i, node in enumerate(res.elected, 1):
            lines.append(f"  elected #{i} {node}")
        for node, reason in res.excluded:
            lines.append(f"  excluded {node} ({reason})")
    return lines


async def result_docs(store: ElectionStore, round: int | None, count: int) -> list[dict[str, Any]]:
    rows = [await store.result(round)] if round is not None else list(await store.latest(count))
    return [
        {**json.loads(res.to_json()), "published": published}
        for item in rows
        if item is not None
        for res, published in [item]
    ]
