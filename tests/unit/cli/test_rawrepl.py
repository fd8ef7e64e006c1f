"""Writing files onto a MicroPython board over its raw REPL, through a real pty to a simulated
board (tests/support/raw_repl_board.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.cli.rawrepl import RawRepl, RawReplError, provision_over_serial
from tests.support.raw_repl_board import RawReplBoard


def test_bundle_is_written_to_the_board_and_the_board_restarts(tmp_path: Path) -> None:
    bundle = json.dumps({"device_id": "dev-1", "key": "ab" * 32, "pad": "x" * 700}).encode()
    with RawReplBoard(tmp_path / "flash") as board:
        provision_over_serial(board.port, bundle)
        assert (tmp_path / "flash" / "config.json").read_bytes() == bundle
        assert board.soft_resets == 1
        assert any("f.write(" in code for code in board.executed)


def test_an_error_on_the_board_is_reported(tmp_path: Path) -> None:
    with RawReplBoard(tmp_path / "flash") as board, RawRepl(board.port, timeout=5) as repl:
        repl.enter_raw()
        assert repl.exec("print(6*7)\n").strip() == b"42"
        with pytest.raises(RawReplError, match="ZeroDivisionError"):
            repl.exec("1/0\n")


def test_a_port_that_does_not_exist_is_a_clear_error() -> None:
    with pytest.raises(RawReplError, match="cannot open /dev/nonexistent-tty"):
        RawRepl("/dev/nonexistent-tty")


def test_a_silent_line_times_out_with_a_hint(tmp_path: Path) -> None:
    import os
    import tty

    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        with pytest.raises(RawReplError, match="is it running MicroPython"):
            RawRepl(os.ttyname(slave), timeout=0.5).enter_raw()
    finally:
        os.close(master)
        os.close(slave)
