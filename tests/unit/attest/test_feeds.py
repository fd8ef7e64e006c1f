"""Feed assignment: the default feed every gateway derives alike, and configured feeds."""

from __future__ import annotations

import pytest

from agent.attest.eip712 import keccak256
from agent.attest.feeds import FeedMap, default_feed, feed_id, parse_assignment


def test_default_feed_is_keccak_of_the_two_bytes32_labels() -> None:
    expected = keccak256(b"dev-1".ljust(32, b"\0") + b"temp".ljust(32, b"\0"))
    assert default_feed("dev-1", "temp") == expected
    assert default_feed("dev-1", "hum") != expected != default_feed("dev-2", "temp")
    # Not a plain concatenation of the texts: "dev-1"+"temp" and "dev-"+"1temp" differ.
    assert default_feed("dev-", "1temp") != expected


def test_configured_feeds_by_name_or_id_and_the_default_for_the_rest() -> None:
    fid = "0x" + "ab" * 32
    feeds = FeedMap({"dev-1/temp": "greenhouse-1 air", "dev-2/temp": fid})
    assert (
        feeds.feed("dev-1", "temp") == keccak256(b"greenhouse-1 air") == feed_id("greenhouse-1 air")
    )
    assert feeds.feed("dev-2", "temp") == bytes.fromhex("ab" * 32)
    assert feeds.feed("dev-1", "hum") == default_feed("dev-1", "hum")


@pytest.mark.parametrize("key", ["dev-1", "/temp", "dev-1/", "dev 1/temp", "a/b/c"])
def test_assignment_keys_must_be_device_slash_sensor(key: str) -> None:
    with pytest.raises(ValueError, match='must be "device/sensor"'):
        parse_assignment(key)


@pytest.mark.parametrize("spec", ["", "x" * 65, "caf\u00e9"])
def test_feed_names_are_printable_ascii_up_to_64(spec: str) -> None:
    with pytest.raises(ValueError, match="1-64 printable ASCII"):
        feed_id(spec)
