"""Loaded first by pytest however it is started: the suite's command-line options (so that
`pytest -m hil --rig FILE` works with no test path), and the firmware's library on sys.path
(as `edgence`, after the host shims for `utime`, `machine` and `network` in
tests/support/mpshims) so that tests import the firmware as it runs on a board."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent

for _p in (ROOT / "firmware" / "micropython" / "lib", ROOT / "tests" / "support" / "mpshims"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))  # the shims end up first


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--rig",
        default=str(ROOT / "hardware" / "rigs" / "emulated.toml"),
        help="hardware-in-the-loop rig file for the hil tests (default: the host emulation)",
    )
