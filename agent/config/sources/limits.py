"""Limits every source shares (bytes and readings per frame): the device frame codec's own
defaults, so they are written once, beside the format they bound."""

from __future__ import annotations

from agent.config.reader import Section
from agent.frame import DEFAULT_MAX_BYTES as MAX_PAYLOAD
from agent.frame import DEFAULT_MAX_VALUES as MAX_VALUES_PER_FRAME

__all__ = ["MAX_PAYLOAD", "MAX_VALUES_PER_FRAME", "read_max_values"]


def read_max_values(sec: Section) -> int:
    return sec.int_range("max_values_per_frame", MAX_VALUES_PER_FRAME, 1, 256)
