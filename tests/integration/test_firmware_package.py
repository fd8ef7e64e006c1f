"""A normal (non-editable) install carries the MicroPython firmware: the wheel that `pip
install .` builds holds agent/resources/firmware (boot.py, main.py, every lib/ module), and the
installed package's `firmware deploy` finds it there, not in a checkout. Built by the real pip
and setuptools from a copy of the project's sources (about 15 s)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from agent.fwbuild import firmware_sources
from tests.conftest import ROOT


def test_the_wheel_carries_the_firmware_and_the_installed_package_finds_it(
    tmp_path: Path,
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "node_modules", "tests", "contracts")
    shutil.copytree(ROOT / "agent", src / "agent", ignore=ignore)
    shutil.copytree(
        ROOT / "firmware" / "micropython", src / "firmware" / "micropython", ignore=ignore
    )
    dist = tmp_path / "dist"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("edgence_agent-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        f"agent/resources/firmware/{p}" for p in firmware_sources(src / "firmware" / "micropython")
    }
    assert expected <= names and "agent/resources/firmware/lib/edgence/outbox.py" in names
    assert not any("/tests/" in n for n in names if n.startswith("agent/resources/firmware"))

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); import agent, agent.fwbuild as f; "
        "print(agent.__file__); print(f.shipped_firmware())"
    )
    r = subprocess.run(
        [sys.executable, "-c", probe, str(site)], capture_output=True, text=True, cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    agent_file, firmware = r.stdout.split()
    assert Path(agent_file).is_relative_to(site)
    assert Path(firmware) == site / "agent" / "resources" / "firmware"
