"""Dropped statements (agent/attest/dropped.py): signed, deterministic, checked from the
signed fields up, and told apart from observation envelopes by `verify`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.attest.dropped import (
    DROPPED_TYPES,
    is_dropped_statement,
    sign_dropped,
    verify_dropped,
)
from agent.attest.eip712 import hash_typed_data
from agent.attest.keys import GatewayKey
from agent.errors import EnvelopeError
from agent.model import Eip712Domain

DOMAIN = Eip712Domain("Edgence", "1", 31337, "0x" + "11" * 20)
ROOT = Path(__file__).resolve().parents[3]


def test_a_statement_verifies_and_is_byte_identical_when_signed_again() -> None:
    key = GatewayKey.generate()
    body = sign_dropped(key, DOMAIN, 4, 9, 1_700_000_000)
    assert sign_dropped(key, DOMAIN, 4, 9, 1_700_000_000) == body
    v = verify_dropped(body)
    assert (v.signer, v.first_sequence, v.last_sequence, v.dropped_at) == (
        key.address,
        4,
        9,
        1_700_000_000,
    )
    assert is_dropped_statement(body)
    # The digest is plain EIP-712, as any wallet library computes it.
    doc = json.loads(body)
    expected = hash_typed_data(DROPPED_TYPES, "Dropped", doc["domain"], doc["message"])
    assert doc["digest"] == "0x" + expected.hex()


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("lastSequence", 10, "digest mismatch"),
        ("firstSequence", 5, "digest mismatch"),
        ("droppedAt", 1, "digest mismatch"),
        ("lastSequence", 3, "out of range"),
    ],
)
def test_a_changed_field_is_refused(field: str, value: int, reason: str) -> None:
    doc = json.loads(sign_dropped(GatewayKey.generate(), DOMAIN, 4, 9, 1_700_000_000))
    doc["message"][field] = value
    with pytest.raises(EnvelopeError, match=reason):
        verify_dropped(json.dumps(doc))


def test_a_statement_claiming_another_gateway_is_refused() -> None:
    doc = json.loads(sign_dropped(GatewayKey.generate(), DOMAIN, 1, 1, 0))
    doc["gateway"] = GatewayKey.generate().address
    with pytest.raises(EnvelopeError, match="does not recover"):
        verify_dropped(json.dumps(doc))


def test_verify_cli_checks_dropped_statements_next_to_observations(tmp_path: Path) -> None:
    key = GatewayKey.generate()
    good = sign_dropped(key, DOMAIN, 1, 3, 5).decode()
    forged = json.loads(good)
    forged["message"]["lastSequence"] = 2
    lines = tmp_path / "lines.jsonl"
    lines.write_text(good + "\n" + json.dumps(forged) + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "agent.cli", "verify", str(lines)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    out = done.stdout.splitlines()
    assert out[0] == f"ok dropped signer={key.address} first=1 last=3 droppedAt=5 chainId=31337"
    assert out[1].startswith("INVALID #2: digest mismatch")
