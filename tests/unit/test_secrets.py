"""Secret files must be private to their owner: check_secret_mode and its fix-it message."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.errors import AgentError, KeyFileError
from agent.secrets import check_secret_mode


def secret(tmp_path: Path, mode: int) -> Path:
    path = tmp_path / "device.key"
    path.write_text("s3cret\n")
    os.chmod(path, mode)
    return path


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o200, 0o700])
def test_owner_only_modes_are_accepted(tmp_path: Path, mode: int) -> None:
    path = secret(tmp_path, mode)
    check_secret_mode(path)
    check_secret_mode(str(path))


@pytest.mark.parametrize("mode", [0o640, 0o644, 0o660, 0o604, 0o602, 0o620, 0o666, 0o777])
def test_modes_open_to_group_or_others_are_refused_with_the_chmod_fix(
    tmp_path: Path, mode: int
) -> None:
    path = secret(tmp_path, mode)
    with pytest.raises(KeyFileError) as info:
        check_secret_mode(path)
    message = str(info.value)
    assert info.value.fix == f"chmod 600 {path}"
    assert "chmod" not in info.value.description  # the fix is a field, not in the text
    assert f"mode {mode:04o}" in message
    assert message.startswith(str(path))


def test_missing_secret_file_is_a_key_file_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "absent.key"
    with pytest.raises(KeyFileError, match="secret file not found") as info:
        check_secret_mode(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, AgentError)


def test_refusal_leaves_the_file_mode_unchanged(tmp_path: Path) -> None:
    path = secret(tmp_path, 0o644)
    with pytest.raises(KeyFileError):
        check_secret_mode(path)
    assert os.stat(path).st_mode & 0o777 == 0o644
