"""A runner for scripts under real MicroPython: the WebAssembly port from the npm registry,
driven by node (firmware/micropython/tests/run.mjs; `npm ci` there is run by scripts/test).
The root conftest.py puts the firmware's library on sys.path for the CPython side."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

FIRMWARE = ROOT / "firmware" / "micropython"
LIB = FIRMWARE / "lib"
MP_TESTS = FIRMWARE / "tests"


def run_micropython(script: Path, *files: tuple[Path, str]) -> str:
    """Run `script` under MicroPython (wasm) with lib/ at /lib and `files` copied in as
    (host path, guest path); returns its stdout, fails the test on a Python exception."""
    node = shutil.which("node")
    module = MP_TESTS / "node_modules" / "@micropython" / "micropython-webassembly-pyscript"
    if node is None or not module.is_dir():
        pytest.fail(
            "MicroPython (wasm) is not installed: run scripts/test, or `npm ci` in "
            f"{MP_TESTS.relative_to(ROOT)} (needs node)"
        )
    args = [node, str(MP_TESTS / "run.mjs"), str(script)]
    args += [f"{host}:{guest}" for host, guest in files]
    r = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=MP_TESTS)
    assert r.returncode == 0, f"MicroPython failed:\n{r.stderr}\n{r.stdout}"
    return r.stdout


@pytest.fixture
def micropython() -> Callable[..., Any]:
    """micropython(script, files...) -> the JSON object the script printed on its last line."""

    def run(script: Path, *files: tuple[Path, str]) -> Any:
        out = run_micropython(script, *files).strip().splitlines()
        return json.loads(out[-1])

    return run
