"""A short run of the chaos soak (bench/soak.py) as a test: real agent processes, brokers,
CoAP and serial devices under random faults, with journal.overflow = "drop-oldest" so that
dropped ranges are announced too; the accounting must find nothing unaccounted."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.soak import soak


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_short_chaos_soak_accounts_for_every_reading_and_sequence(tmp_path: Path) -> None:
    # Seed 29 starts with an upstream outage, which a 200 kB journal does not outlast.
    result, log = soak(
        1.0, seed=29, overflow="drop-oldest", workdir=tmp_path / "soak", journal_bytes=200_000
    )
    table = dict(result.rows)
    assert result.failures == [], "\n".join(f"{k}: {v}" for k, v in result.rows)
    assert int(table["gateway sequences 1..N (N = journal's last)"]) > 1000
    assert int(table["sequences announced dropped (verified Dropped statements)"]) > 0
    assert "event=ready" in log
