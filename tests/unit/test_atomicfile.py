"""Files replaced whole (agent/atomicfile.py): the new bytes with the asked mode, and after a
failed write the old file intact with no temporary file left behind."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from agent.atomicfile import atomic_write


def test_a_file_is_replaced_whole_with_the_mode_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_bytes(b"old")
    atomic_write(path, b"new", 0o640)
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["keys.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "registry.json"
    path.write_bytes(b"old")
    not_bytes: Any = "text, not bytes"
    with pytest.raises(TypeError):
        atomic_write(path, not_bytes)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["registry.json"]
