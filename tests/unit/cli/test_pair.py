"""`edgence-agent pair` as an operator sees it: the compact QR code and what reads it, and
the order of things (the command waits for the device's first frame)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .test_run import cli


@pytest.fixture
def config(tmp_path: Path) -> Path:
    d = tmp_path / "etc"
    assert cli("init", "--dir", str(d), cwd=tmp_path).returncode == 0
    return d / "agent.toml"


def qr_rows(stdout: str) -> list[str]:
    return [ln for ln in stdout.splitlines() if ln and set(ln) <= set("█▀▄ ") and "█" in ln]


def test_pair_prints_a_qr_code_of_at_most_24_rows_and_says_what_reads_it(
    config: Path, tmp_path: Path
) -> None:
    r = cli("pair", "d" * 32, "--config", str(config), "--qr", "--no-wait", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = qr_rows(r.stdout)
    assert 10 < len(rows) <= 24
    assert len({len(row) for row in rows}) == 1
    (hint,) = [ln for ln in r.stdout.splitlines() if ln.startswith("QR: ")]
    assert "phone's QR reader" in hint and "the full bundle is the file above" in hint
    bundle = json.loads((config.parent / "data" / "bundles" / f"{'d' * 32}.json").read_text())
    assert bundle["device_id"] == "d" * 32 and len(bundle["key"]) == 64


def test_pair_no_wait_says_how_to_finish_later(config: Path, tmp_path: Path) -> None:
    r = cli("pair", "dev-1", "--config", str(config), "--no-qr", "--no-wait", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    bundle = config.parent / "data" / "bundles" / "dev-1.json"
    assert f"firmware deploy --port PORT --bundle {bundle.resolve()}" in r.stdout
    assert "`edgence-agent pair dev-1 --reopen`" in r.stdout
    assert not qr_rows(r.stdout)


def test_pair_says_it_waits_and_to_use_a_second_terminal_or_no_wait_then_reopen(
    config: Path, tmp_path: Path
) -> None:
    r = cli("pair", "dev-2", "--config", str(config), "--no-qr", "--window", "1", cwd=tmp_path)
    assert r.returncode == 1  # nothing sent a frame within the 1 s window
    (waiting,) = [ln for ln in r.stdout.splitlines() if ln.startswith("waiting up to 1 s")]
    assert "from a second terminal (edgence-agent firmware deploy" in waiting
    assert "`edgence-agent pair dev-2 --reopen`" in waiting
    assert "stays pending" in r.stdout


def test_pair_help_explains_the_order(tmp_path: Path) -> None:
    r = cli("pair", "--help", cwd=tmp_path)
    assert "second terminal" in r.stdout and "--no-wait" in r.stdout and "--reopen" in r.stdout
