"""[election] (agent/config/election.py): defaults, values, and refusals naming file and key.
That an enabled election needs [chain] and a broker is in test_checks.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.config.helpers import MINIMAL, load, refusal

BOARD = "0x" + "Ab" * 20
CHAIN_ON = "[chain]\nenabled = true\n"


def test_election_is_off_by_default(tmp_path: Path) -> None:
    cfg = load(tmp_path, MINIMAL)
    e = cfg.election
    assert not e.enabled and e.mode == "paper"
    assert (e.k, e.round_length, e.cutoff, e.confirmations) == (21, 20, 10, 3)
    assert e.store == tmp_path / "data" / "election.sqlite"
    assert e.mqtt is None


def test_election_values_are_read(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        MINIMAL + CHAIN_ON + f'[election]\nenabled = true\nmode = "vrf"\nboard = "{BOARD}"\nk = 5\n'
        "round_length = 30\ncutoff = 12\nconfirmations = 6\nworkers = 0\n"
        '[election.mqtt]\nurl = "mqtt://10.0.0.9:1883"\n',
    )
    e = cfg.election
    assert e.enabled and e.mode == "vrf" and e.board == BOARD.lower()
    assert (e.k, e.round_length, e.cutoff, e.confirmations, e.workers) == (5, 30, 12, 6, 0)
    assert e.mqtt is not None and e.mqtt.url == "mqtt://10.0.0.9:1883"


@pytest.mark.parametrize(
    ("body", "key", "words"),
    [
        ('mode = "fast"', "election.mode", "paper, vrf"),
        ("cutoff = 30", "election.cutoff", "round_length"),
        ("cutoff = 4\nconfirmations = 4", "election.confirmations", "below cutoff"),
        ("k = 0", "election.k", "between 1 and"),
        ("rounds = 3", "election.rounds", "not a known key"),
    ],
)
def test_bad_election_values_are_refused_with_their_key(
    tmp_path: Path, body: str, key: str, words: str
) -> None:
    _, msg = refusal(tmp_path, MINIMAL + CHAIN_ON + f'[election]\nboard = "{BOARD}"\n{body}\n')
    assert f"[{key}]" in msg and words in msg


def test_board_must_be_an_address(tmp_path: Path) -> None:
    _, msg = refusal(tmp_path, MINIMAL + '[election]\nboard = "0x12"\n')
    assert "[election.board]" in msg and "40 hex digits" in msg


def test_enabled_election_needs_a_board(tmp_path: Path) -> None:
    _, msg = refusal(tmp_path, MINIMAL + CHAIN_ON + "[election]\nenabled = true\n")
    assert "[election.board] is required" in msg
