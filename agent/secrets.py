"""Secret files (gateway key, device keys, passwords) must be private: mode 0600 or stricter."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from agent.errors import KeyFileError


def check_secret_mode(path: Path | str) -> None:
    """Refuse a secret file that group or others can read or write, saying how to fix it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise KeyFileError(f"{path}: secret file not found") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read secret file: {exc.strerror}") from None
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise KeyFileError(
            f"{path}: secret file has mode {mode:04o}, readable by others",
            fix=f"chmod 600 {path}",
        )
