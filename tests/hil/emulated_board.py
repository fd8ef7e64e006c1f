"""The emulated board of the hil rig, started by hand for manual trials: a simulated MicroPython
raw REPL on a pseudo-terminal (the path is printed), whose flash is a directory; each soft
reset (after `pair --serial` or `firmware deploy` wrote to it) (re)starts the deployed firmware
on CPython with the host shims, its console on this terminal.

    python -m tests.hil.emulated_board [--flash DIR]

Ctrl-C stops the board and its firmware. The REPL is a fake (tests/support/raw_repl_board.py);
the pty, the agent's deploy code and the firmware are real.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.conftest import ROOT
from tests.support.raw_repl_board import RawReplBoard


def _start_firmware(flash: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-u", "-m", "tests.support.firmware_host", str(flash), "hard"],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdin=subprocess.DEVNULL,
    )


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.hil.emulated_board", description=__doc__)
    ap.add_argument("--flash", type=Path, help="the board's flash directory (default: a new one)")
    args = ap.parse_args(argv)
    flash: Path = args.flash or Path(tempfile.mkdtemp(prefix="edgence-board-"))
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    firmware: subprocess.Popen[bytes] | None = None
    with RawReplBoard(flash) as board:
        print(f"emulated board: REPL on {board.port} (flash {flash})", flush=True)
        print(
            f"  provision it: edgence-agent pair DEVICE --serial {board.port}\n"
            f"  or deploy:    edgence-agent firmware deploy --port {board.port} --bundle BUNDLE\n"
            f"  each soft reset starts the deployed firmware here; Ctrl-C stops",
            flush=True,
        )
        resets = board.soft_resets
        while not stop:
            time.sleep(0.1)
            if board.soft_resets != resets:
                resets = board.soft_resets
                _stop(firmware)
                print(f"soft reset: starting the firmware in {flash}", flush=True)
                firmware = _start_firmware(flash)
            elif firmware is not None and firmware.poll() is not None:
                print(f"firmware exited with status {firmware.returncode}", flush=True)
                firmware = None
        _stop(firmware)
    print("emulated board stopped", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
