"""[masternode] (agent/config/masternode.py): defaults, values, and refusals naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.config.helpers import MINIMAL, load, refusal

VRF = "0x02" + "11" * 32


def test_masternode_defaults(tmp_path: Path) -> None:
    mn = load(tmp_path, MINIMAL).masternode
    assert mn.registry is None and mn.vrf_public_key is None and mn.heartbeat


def test_masternode_values_are_read(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        MINIMAL + f'[masternode]\nregistry = "0x{"ab" * 20}"\nvrf_public_key = "{VRF}"\n'
        "heartbeat_every_blocks = 50\n",
    )
    assert cfg.masternode.registry == "0x" + "ab" * 20
    assert cfg.masternode.vrf_public_key == bytes.fromhex(VRF[2:])
    assert cfg.masternode.heartbeat_every_blocks == 50


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ('[masternode]\nregistry = "0x12"\n', "[masternode.registry]", "40 hex"),
        (
            '[masternode]\nvrf_public_key = "0x04' + "11" * 32 + '"\n',
            "[masternode.vrf_public_key]",
            "33-byte",
        ),
        ('[masternode]\nvrf_public_key = "zz"\n', "[masternode.vrf_public_key]", "33-byte"),
    ],
)
def test_masternode_refusals_name_the_key(tmp_path: Path, text: str, key: str, words: str) -> None:
    _, message = refusal(tmp_path, MINIMAL + text)
    assert key in message and words in message, (text, message)
