"""[gateway] (agent/config/gateway.py): the key file is required, the verifying contract is an
address, [gateway.feeds] assigns "device/sensor" to a feed name or id."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.config.helpers import MINIMAL, load, refusal


@pytest.mark.parametrize("text", ["", "[gateway]\n", "[sources.mqtt]\nqos = 1\n"])
def test_missing_gateway_key_file_is_refused(tmp_path: Path, text: str) -> None:
    path, message = refusal(tmp_path, text)
    assert str(path) in message
    assert "[gateway.key_file] is required (a string)" in message


@pytest.mark.parametrize(
    "contract", ["0x123", "0x" + "g" * 40, "00" * 20 + "0000", "0x" + "0" * 41]
)
def test_bad_verifying_contract_is_refused(tmp_path: Path, contract: str) -> None:
    path, message = refusal(tmp_path, MINIMAL + f'verifying_contract = "{contract}"\n')
    assert str(path) in message
    assert "[gateway.verifying_contract] must be 0x followed by 40 hex digits" in message


# --- feeds ----------------------------------------------------------------------------------


def test_gateway_feeds_assign_device_sensors_to_named_feeds(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        MINIMAL
        + '[gateway.feeds]\n"dev-1/temp" = "greenhouse-1 air"\n"dev-2/temp" = "0x'
        + "ab" * 32
        + '"\n',
    )
    assert cfg.gateway.feeds == (
        ("dev-1/temp", "greenhouse-1 air"),
        ("dev-2/temp", "0x" + "ab" * 32),
    )


@pytest.mark.parametrize(
    ("line", "key", "why"),
    [
        ('"dev-1" = "x"', "gateway.feeds.dev-1", 'must be "device/sensor"'),
        ('"dev-1/t emp" = "x"', "gateway.feeds.dev-1/t emp", 'must be "device/sensor"'),
        ('"dev-1/temp" = 5', "gateway.feeds.dev-1/temp", "must be a feed name"),
        ('"dev-1/temp" = ""', "gateway.feeds.dev-1/temp", "1-64 printable ASCII"),
    ],
)
def test_bad_feed_assignment_names_the_key_and_what_is_allowed(
    tmp_path: Path, line: str, key: str, why: str
) -> None:
    path, message = refusal(tmp_path, MINIMAL + "[gateway.feeds]\n" + line + "\n")
    assert key in message and why in message and str(path) in message
