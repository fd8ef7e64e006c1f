"""[sources.mqtt] (agent/config/sources/mqtt.py): topic filters and allowed device ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.config.helpers import MINIMAL, refusal


@pytest.mark.parametrize(
    "topic", ["devices/up", "devices/#", "devices/+/+", "devices/a+/up", "devices/+/#"]
)
def test_topic_without_exactly_one_plus_level_is_refused(tmp_path: Path, topic: str) -> None:
    path, message = refusal(tmp_path, MINIMAL + f'[sources.mqtt]\ntopics = ["{topic}"]\n')
    assert str(path) in message
    assert "[sources.mqtt.topics]" in message
    assert "exactly one '+' level" in message
    assert repr(topic) in message


@pytest.mark.parametrize("device", ["sim 1", "a/b", "", "x" * 33, "dev+"])
def test_bad_allowed_device_id_is_refused(tmp_path: Path, device: str) -> None:
    text = MINIMAL + f'[sources.mqtt]\nallowed_devices = ["ok-1", "{device}"]\n'
    path, message = refusal(tmp_path, text)
    assert str(path) in message
    assert "[sources.mqtt.allowed_devices]" in message
    assert "A-Z a-z 0-9 _ . : -" in message


def test_allowed_device_id_with_trailing_newline_is_refused(tmp_path: Path) -> None:
    refusal(tmp_path, MINIMAL + '[sources.mqtt]\nallowed_devices = ["sim-1\\n"]\n')
