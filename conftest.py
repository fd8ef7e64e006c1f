"""Command-line options of the test suite. At the root so that pytest knows them however it is
started (`pytest -m hil --rig FILE` with no test path included)."""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--rig",
        default=str(Path(__file__).resolve().parent / "hardware" / "rigs" / "emulated.toml"),
        help="hardware-in-the-loop rig file for the hil tests (default: the host emulation)",
    )
