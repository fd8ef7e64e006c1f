"""[log]: the log level."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast, get_args

from agent.config.reader import Section

Level = Literal["debug", "info", "warning", "error"]


@dataclass(frozen=True, kw_only=True)
class LogConfig:
    level: Level = "info"


def read_log(lg: Section) -> LogConfig:
    cfg = LogConfig(level=cast(Level, lg.choice("level", LogConfig.level, get_args(Level))))
    lg.done()
    return cfg
