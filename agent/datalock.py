"""One agent per data directory: an exclusive lock on `<data_dir>/agent.lock` for as long as
the agent runs.

Two agents on one data directory would share the journal's sequences and the device counters,
fight for the same broker sessions (same client ids) and for the metrics port. The lock is an
advisory `flock` that the kernel releases when the process ends, however it ends (SIGKILL and
power loss included), so a stale file never blocks a restart; the file holds the holder's pid
so that the second agent can say which process it is.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from agent.errors import AgentError

LOCK_NAME = "agent.lock"


class AlreadyRunning(AgentError):
    """Another agent holds the data directory's lock."""

    def __init__(self, data_dir: Path, pid: int | None) -> None:
        self.data_dir = data_dir
        self.pid = pid
        who = f"pid {pid}" if pid is not None else "another process"
        super().__init__(
            f"another edgence-agent ({who}) is already running on data directory {data_dir}: "
            "stop it first (systemctl stop edgence-agent), or give this agent a "
            "gateway.data_dir of its own"
        )


def holder_pid(data_dir: Path) -> int | None:
    """The pid written by the agent that holds (or last held) the lock, if readable."""
    try:
        return int((data_dir / LOCK_NAME).read_text(encoding="ascii").split()[0])
    except (OSError, ValueError, IndexError):
        return None


def agent_running(data_dir: Path) -> bool:
    """Whether an agent holds the data directory's lock now (a shared probe: writes nothing)."""
    try:
        fd = os.open(data_dir / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's own lock
    return False


class DataDirLock:
    """`acquire()` at start (raises AlreadyRunning), `release()` at the end."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunning(self.data_dir, holder_pid(self.data_dir)) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


__all__ = ["AlreadyRunning", "DataDirLock", "agent_running", "holder_pid"]
