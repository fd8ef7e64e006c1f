"""[oracle] (agent/config/oracle.py, with the MQTT 5 / CoAP settings of agent/config/service.py):
defaults, values, and refusals naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.config.helpers import MINIMAL, load, refusal


def test_oracle_defaults(tmp_path: Path) -> None:
    cfg = load(tmp_path, MINIMAL)
    assert not cfg.oracle.enabled and not cfg.oracle.submit_enabled
    assert cfg.oracle.mqtt is not None and cfg.oracle.mqtt.url == cfg.sources.mqtt.broker.url
    assert cfg.oracle.mqtt.protocol == 5
    assert cfg.oracle.reply_topics == ("{prefix}/{gateway}/oracle/res/{client}/#",)
    assert (cfg.oracle.rate, cfg.oracle.burst) == (20.0, 40)


def test_oracle_values_are_read(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        MINIMAL.replace("[gateway]\n", f'[gateway]\nverifying_contract = "0x{"cd" * 20}"\n')
        + "[chain]\nenabled = true\n"
        "[oracle]\nenabled = true\nrate = 0.5\nburst = 3\n"
        '[oracle.coap]\nenabled = true\nbind = "0.0.0.0:5690"\n'
        '[oracle.submit]\nenabled = true\nsensors = ["dev-1/temp", "sim-2/pressure"]\n'
        'interval = "5m"\nmax_batch = 10\n',
    )
    o = cfg.oracle
    assert (o.rate, o.burst) == (0.5, 3)
    assert (o.coap_host, o.coap_port) == ("0.0.0.0", 5690)
    assert o.submit_sensors == (("dev-1", "temp"), ("sim-2", "pressure"))
    assert o.submit_interval_s == 300.0 and o.submit_max_batch == 10


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        (
            '[chain]\nenabled = true\n[oracle.submit]\nenabled = true\nsensors = ["dev-1"]\n',
            "[oracle.submit.sensors]",
            "DEVICE/SENSOR",
        ),
        ("[oracle.submit]\nenabled = true\n", "[oracle.submit.sensors]", "must list"),
        ('[oracle.mqtt]\nprotocol = "3.1.1"\n', "[oracle.mqtt.protocol]", '"5"'),
        ('[oracle.mqtt]\nreply_topics = ["#"]\n', "[oracle.mqtt.reply_topics]", "too wide"),
        (
            '[oracle.mqtt]\nreply_topics = ["a/{client}x/#"]\n',
            "[oracle.mqtt.reply_topics]",
            "{client}",
        ),
        ("[oracle]\ncolour = 1\n", "[oracle.colour]", "not a known key"),
        ("[oracle]\nrate = 0\n", "[oracle.rate]", "positive"),
        ("[oracle]\nburst = 0\n", "[oracle.burst]", "between 1 and 100000"),
    ],
)
def test_oracle_refusals_name_the_key(tmp_path: Path, text: str, key: str, words: str) -> None:
    _, message = refusal(tmp_path, MINIMAL + text)
    assert key in message and words in message, (text, message)
