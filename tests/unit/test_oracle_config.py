"""[oracle] and [masternode] configuration: defaults, values, and refusals naming the key."""

from __future__ import annotations

from pathlib import Path

from tests.unit.test_config import MINIMAL, load, refusal

VRF = "0x02" + "11" * 32


def test_oracle_and_masternode_defaults(tmp_path: Path) -> None:
    cfg = load(tmp_path, MINIMAL)
    assert not cfg.oracle.enabled and not cfg.oracle.submit_enabled
    assert cfg.oracle.mqtt is not None and cfg.oracle.mqtt.url == cfg.mqtt.broker.url
    assert cfg.oracle.mqtt.protocol == 5
    assert cfg.oracle.reply_topics == ("{prefix}/{gateway}/oracle/res/#",)
    assert cfg.masternode.registry is None and cfg.masternode.heartbeat


def test_oracle_and_masternode_values_are_read(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        MINIMAL.replace("[gateway]\n", f'[gateway]\nverifying_contract = "0x{"cd" * 20}"\n')
        + "[chain]\nenabled = true\n"
        '[oracle]\nenabled = true\n[oracle.coap]\nenabled = true\nbind = "0.0.0.0:5690"\n'
        '[oracle.submit]\nenabled = true\nsensors = ["dev-1/temp", "sim-2/pressure"]\n'
        'interval = "5m"\nmax_batch = 10\n'
        f'[masternode]\nregistry = "0x{"ab" * 20}"\nvrf_public_key = "{VRF}"\n'
        "heartbeat_every_blocks = 50\n",
    )
    o = cfg.oracle
    assert (o.coap_host, o.coap_port) == ("0.0.0.0", 5690)
    assert o.submit_sensors == (("dev-1", "temp"), ("sim-2", "pressure"))
    assert o.submit_interval_s == 300.0 and o.submit_max_batch == 10
    assert cfg.masternode.vrf_public_key == bytes.fromhex(VRF[2:])
    assert cfg.masternode.heartbeat_every_blocks == 50


def test_oracle_and_masternode_refusals_name_the_key(tmp_path: Path) -> None:
    cases = {
        '[oracle.submit]\nenabled = true\nsensors = ["dev-1/temp"]\n': (
            "[oracle.submit.enabled]",
            "[chain]",
        ),
        '[chain]\nenabled = true\n[oracle.submit]\nenabled = true\nsensors = ["dev-1"]\n': (
            "[oracle.submit.sensors]",
            "DEVICE/SENSOR",
        ),
        '[oracle.mqtt]\nprotocol = "3.1.1"\n': ("[oracle.mqtt.protocol]", '"5"'),
        '[oracle.mqtt]\nreply_topics = ["#"]\n': ("[oracle.mqtt.reply_topics]", "too wide"),
        "[oracle]\ncolour = 1\n": ("[oracle.colour]", "not a known key"),
        '[masternode]\nregistry = "0x12"\n': ("[masternode.registry]", "40 hex"),
        '[masternode]\nvrf_public_key = "0x04' + "11" * 32 + '"\n': (
            "[masternode.vrf_public_key]",
            "33-byte",
        ),
        "[forward]\nenabled = true\n[forward.coap]\nenabled = true\n"
        "[oracle.coap]\nenabled = true\n": ("[oracle.coap.bind]", "port of its own"),
        '[chain]\nenabled = true\n[oracle.submit]\nenabled = true\nsensors = ["d/t"]\n': (
            "[oracle.submit.enabled]",
            "gateway.verifying_contract",
        ),
    }
    for text, (key, words) in cases.items():
        _, message = refusal(tmp_path, MINIMAL + text)
        assert key in message and words in message, (text, message)
