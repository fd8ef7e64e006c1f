"""`edgence-agent election status` reads the agent's election store (a real subprocess)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from agent.election.duty import Epoch, duty
from agent.election.status import status_lines
from agent.election.store import ElectionStore
from agent.election.tally import RoundResult
from agent.errors import ElectionError
from tests.unit.cli.test_run import cli

BOARD = "0x" + "ab" * 20
A, B, C = ("0x" + c * 40 for c in "123")


def result(round: int) -> RoundResult:
    return RoundResult(
        round=round,
        mode="paper",
        chain_id=31337,
        board=BOARD,
        boundary=100 + 10 * round,
        cutoff=105 + 10 * round,
        cutoff_block_hash="0x" + "cd" * 32,
        input_hash="0x" + "ef" * 32,
        k=1,
        elected=(B,),
        scores=((A, "1" * 64), (B, "2" * 64)),
        excluded=((C, "double-submission"), (C, "double-submission")),
    )


def make_agent_dir(tmp_path: Path, rounds: list[int], duty: str | None = None) -> Path:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[gateway]\nkey_file = "gateway.key"\n[election]\nboard = "{BOARD}"\n')

    async def fill() -> None:
        store = ElectionStore(tmp_path / "data" / "election.sqlite")
        async with store:
            await store.open(BOARD, "paper")
            for r in rounds:
                await store.save(result(r))
            await store.mark_published(rounds[0])
            if duty:
                await store.set_meta("duty", duty)

    asyncio.run(fill())
    return cfg


def test_status_shows_the_latest_rounds_elected_and_excluded(tmp_path: Path) -> None:
    cfg = make_agent_dir(tmp_path, [3, 4])
    out = cli("election", "status", "--config", str(cfg), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"board {BOARD} mode paper next round to decide 5"
    assert lines[1] == "duty: none known yet (no epoch seen)"
    assert lines[2].startswith("round 4: blocks 141..145, 2 candidate(s), 2 excluded, k=1")
    assert lines[2].endswith("not yet published")
    assert f"  elected #1 {B}" in lines
    assert f"  excluded {C} (double-submission)" in lines
    assert any(line.startswith("round 3:") and line.endswith(", published") for line in lines)


def test_status_json_is_the_published_document(tmp_path: Path) -> None:
    cfg = make_agent_dir(tmp_path, [3, 4])
    out = cli("election", "status", "--config", str(cfg), "--round", "3", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    docs = json.loads(out.stdout)
    assert len(docs) == 1 and docs[0]["published"] is True
    doc = dict(docs[0])
    del doc["published"]
    assert json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() == result(3).to_json()


def test_status_without_a_store_says_why(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[gateway]\nkey_file = "gateway.key"\n')
    out = cli("election", "status", "--config", str(cfg), cwd=tmp_path)
    assert out.returncode == 2
    assert "no election store" in out.stderr


def test_status_of_an_undecided_round(tmp_path: Path) -> None:
    make_agent_dir(tmp_path, [1])

    async def lines() -> list[str]:
        async with ElectionStore(tmp_path / "data" / "election.sqlite") as store:
            return await status_lines(store, 9, 5)

    assert asyncio.run(lines())[2] == "no decided round 9 yet"


def test_status_shows_the_nodes_duty_in_the_current_epoch(tmp_path: Path) -> None:
    """What the running agent keeps in its store for the epoch at its latest head."""
    epoch = Epoch(4, 151, 160)
    leader = duty(epoch, (B, A), B, leader_timeout=2, fallback_timeout=6)
    cfg = make_agent_dir(tmp_path, [3, 4], duty=f"{leader.describe()} (node {B})")
    out = cli("election", "status", "--config", str(cfg), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1] == (
        f"duty: epoch 4 (blocks 151..160): LEADER, aggregates and reports from block 151 (node {B})"
    )


def test_a_store_of_another_board_is_refused(tmp_path: Path) -> None:
    make_agent_dir(tmp_path, [1])
    store = ElectionStore(tmp_path / "data" / "election.sqlite")

    async def open_for_another_board() -> None:
        try:
            await store.open("0x" + "00" * 20, "paper")
        finally:
            await store.close()

    with pytest.raises(ElectionError, match="another board"):
        asyncio.run(open_for_another_board())
    assert not store.is_open
