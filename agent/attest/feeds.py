"""Feeds: what a dApp reads. The gateway assigns every reading to a feed id (bytes32) that the
signed Observation carries. Pure code, no I/O.

By default a reading's feed is keccak256(deviceId ‖ sensor) (both as bytes32 labels), so every
gateway derives the same feed for the same device and sensor. The configuration may assign
(device, sensor) pairs to a named feed instead (several devices in one feed, e.g.
"greenhouse-1 air temperature"): a name's feed id is keccak256 of its UTF-8 text; a feed id
may also be given as 0x and 64 hex digits.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from agent.attest.eip712 import keccak256
from agent.model import NAME_RE, label_bytes32

_FEED_HEX_RE = re.compile(r"^0x[0-9a-fA-F]{64}\Z")
_FEED_NAME_RE = re.compile(r"^[ -~]{1,64}\Z")


def default_feed(device_id: str, sensor: str) -> bytes:
    """keccak256(deviceId ‖ sensor): the feed every gateway derives for a device's sensor."""
    return keccak256(label_bytes32(device_id, "device id") + label_bytes32(sensor, "sensor"))


def feed_id(spec: str) -> bytes:
    """A configured feed: 0x and 64 hex digits as given, otherwise keccak256 of the name."""
    if _FEED_HEX_RE.match(spec):
        return bytes.fromhex(spec[2:])
    if not _FEED_NAME_RE.match(spec):
        raise ValueError(
            f"feed {spec!r} must be 0x and 64 hex digits, or a name of 1-64 printable ASCII "
            "characters"
        )
    return keccak256(spec.encode("ascii"))


def parse_assignment(key: str) -> tuple[str, str]:
    """A "device/sensor" assignment key as (device, sensor)."""
    device, sep, sensor = key.partition("/")
    if not sep or not NAME_RE.match(device) or not NAME_RE.match(sensor):
        raise ValueError(
            f'{key!r} must be "device/sensor" (each 1-32 characters of A-Z a-z 0-9 _ . : -)'
        )
    return device, sensor


class FeedMap:
    """(device, sensor) -> feed id: the configured assignments, else the default feed."""

    __slots__ = ("_assigned", "_cache")

    def __init__(self, assigned: Mapping[str, str] | None = None) -> None:
        self._assigned: dict[tuple[str, str], bytes] = {
            parse_assignment(key): feed_id(spec) for key, spec in (assigned or {}).items()
        }
        self._cache: dict[tuple[str, str], bytes] = {}

    def feed(self, device_id: str, sensor: str) -> bytes:
        key = (device_id, sensor)
        found = self._assigned.get(key) or self._cache.get(key)
        if found is None:
            if len(self._cache) >= 4096:  # odd input must not grow it forever
                self._cache.clear()
            found = self._cache[key] = default_feed(device_id, sensor)
        return found
