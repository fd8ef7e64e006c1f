"""[journal]: where the durable outbox lives, its bounds, and what happens when they are hit."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast, get_args

from agent.config.reader import Section
from agent.replaywindow import DEFAULT_REPLAY_WINDOW, MAX_REPLAY_WINDOW

Synchronous = Literal["normal", "full"]
Overflow = Literal["pause", "drop-oldest", "reject-new"]
FILE_NAME = "journal.sqlite"  # in the data directory, unless `path` says otherwise


@dataclass(frozen=True, kw_only=True)
class JournalConfig:
    path: Path  # default: <data_dir>/journal.sqlite
    max_bytes: int = 256 * 2**20
    max_age_s: float = 7 * 86400.0
    synchronous: Synchronous = "normal"
    overflow: Overflow = "pause"
    # How many counters below a device's highest one may still come once each (out of order:
    # QoS 1 redelivery after a broker restart); 1 is the strict rule (agent/replaywindow.py).
    replay_window: int = DEFAULT_REPLAY_WINDOW


def read_journal(j: Section, data_dir: Path) -> JournalConfig:
    J = JournalConfig
    cfg = JournalConfig(
        path=cast(Path, j.path("path", str(data_dir / FILE_NAME))),
        max_bytes=j.size("max_bytes", J.max_bytes),
        max_age_s=j.duration("max_age", J.max_age_s),
        synchronous=cast(
            Synchronous, j.choice("synchronous", J.synchronous, get_args(Synchronous))
        ),
        overflow=cast(Overflow, j.choice("overflow", J.overflow, get_args(Overflow))),
        replay_window=j.int_range("replay_window", J.replay_window, 1, MAX_REPLAY_WINDOW),
    )
    j.done()
    return cfg
