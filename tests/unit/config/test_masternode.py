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


REG = f'registry = "0x{"ab" * 20}"\n'
CHAIN = '[chain]\nenabled = true\nrpc_url = "http://127.0.0.1:8545"\n'


def test_probe_is_off_by_default_and_its_values_are_read(tmp_path: Path) -> None:
    assert not load(tmp_path, MINIMAL).masternode.probe.enabled
    cfg = load(
        tmp_path,
        MINIMAL + CHAIN + "[masternode]\n" + REG + "[masternode.probe]\nenabled = true\n"
        'device = "probe-1"\nsensor = "temp"\ntimeout = 2\nmax_age = 60\nmax_lag = 3\n'
        'concurrency = 4\n[masternode.probe.mqtt]\nurl = "mqtt://10.0.0.2:1884"\n',
    )
    p = cfg.masternode.probe
    assert (p.device, p.sensor, p.timeout_s, p.max_age_s, p.max_lag, p.concurrency) == (
        "probe-1",
        "temp",
        2.0,
        60,
        3,
        4,
    )
    assert p.mqtt is not None and (p.mqtt.host, p.mqtt.port, p.mqtt.protocol) == (
        "10.0.0.2",
        1884,
        5,
    )


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        (
            CHAIN + "[masternode]\n" + REG + '[masternode.probe]\nenabled = true\nsensor = "t"\n',
            "masternode.probe.device",
            "required",
        ),
        (
            CHAIN + '[masternode.probe]\nenabled = true\ndevice = "d"\nsensor = "t"\n',
            "masternode.probe",
            "needs registry",
        ),
        (
            "[masternode]\n" + REG + '[masternode.probe]\nenabled = true\ndevice = "d"\n'
            'sensor = "t"\n',
            "masternode.probe.enabled",
            "[chain] enabled = true",
        ),
        (
            CHAIN + "[bridge]\nenabled = false\n[masternode]\n" + REG + "[masternode.probe]\n"
            'enabled = true\ndevice = "d"\nsensor = "t"\n',
            "masternode.probe.mqtt",
            "upstream broker",
        ),
        (
            "[masternode.probe]\nconcurrency = 0\n",
            "masternode.probe.concurrency",
            "between 1 and 1024",
        ),
        ("[masternode.probe]\nretries = 3\n", "retries", "concurrency"),
    ],
)
def test_probe_refusals_name_the_key_and_the_file(
    tmp_path: Path, text: str, key: str, words: str
) -> None:
    path, message = refusal(tmp_path, MINIMAL + text)
    assert key in message and words in message and str(path) in message, (text, message)
