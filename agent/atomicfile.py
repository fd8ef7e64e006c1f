"""Files replaced whole: written to a temporary file, fsynced, renamed over the old one, the
directory fsynced; a reader in another process sees the old file or the new one. Run as root
(`sudo edgence-agent pair`), a file keeps the owner of the one it replaces.
"""

from __future__ import annotations

import os
from pathlib import Path


def owner_to_keep(path: Path) -> tuple[int, int] | None:
    """As root (`sudo edgence-agent pair`), files must stay readable by the service user: keep
    the owner of the file being replaced, or take the directory's for a new one."""
    if os.geteuid() != 0:
        return None
    for p in (path, path.parent):
        try:
            st = p.stat()
        except FileNotFoundError:
            continue
        return st.st_uid, st.st_gid
    return None


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    owner = owner_to_keep(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
