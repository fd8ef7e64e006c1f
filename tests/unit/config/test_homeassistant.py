"""[homeassistant] (agent/config/homeassistant.py): off by default, values read, refusals naming
the key and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.config.helpers import MINIMAL, load, refusal


def test_homeassistant_is_off_by_default_and_uses_the_local_broker(tmp_path: Path) -> None:
    cfg = load(tmp_path, MINIMAL)
    ha = cfg.homeassistant
    assert not ha.enabled
    assert ha.discovery_prefix == "homeassistant" and ha.topic_prefix == "edgence"
    assert ha.state_interval_s == 1.0
    assert ha.mqtt is not None and ha.mqtt.url == cfg.sources.mqtt.broker.url


def test_homeassistant_values_are_read(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        MINIMAL + "[homeassistant]\nenabled = true\n"
        'discovery_prefix = "ha/disc"\nstate_interval = "5s"\ntopic_prefix = "site-a"\n'
        '[homeassistant.mqtt]\nurl = "mqtt://10.0.0.5:1885"\nusername = "gw"\n',
    )
    ha = cfg.homeassistant
    assert ha.enabled and ha.discovery_prefix == "ha/disc" and ha.topic_prefix == "site-a"
    assert ha.state_interval_s == 5.0
    assert ha.mqtt is not None and ha.mqtt.url == "mqtt://10.0.0.5:1885"
    assert ha.mqtt.username == "gw"


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ('discovery_prefix = "home/#"\n', "homeassistant.discovery_prefix", "A-Z a-z 0-9 _ -"),
        ('discovery_prefix = "/ha"\n', "homeassistant.discovery_prefix", '"homeassistant"'),
        ("state_interval = 0\n", "homeassistant.state_interval", "positive duration"),
        ('state_interval = "2h"\n', "homeassistant.state_interval", "at most 3600"),
        ("enabled = 1\n", "homeassistant.enabled", "true or false"),
        (
            "prefix = 1\n",
            "homeassistant.prefix",
            "allowed here: commands, discovery_prefix, enabled",
        ),
        ('[homeassistant.mqtt]\nurl = "http://x"\n', "homeassistant.mqtt.url", "mqtt://"),
    ],
)
def test_homeassistant_refusals_name_the_key(
    tmp_path: Path, text: str, key: str, words: str
) -> None:
    path, msg = refusal(tmp_path, MINIMAL + "[homeassistant]\n" + text)
    assert key in msg and words in msg and str(path) in msg


COMMANDS_OK = (
    "[downlink]\nenabled = true\n"
    '[[downlink.policy]]\nrequester = "homeassistant"\ndevices = ["gate-1"]\n'
    'actions = ["set_output", "reboot"]\n'
    "[homeassistant]\nenabled = true\n"
)


def test_homeassistant_commands_are_read_as_buttons_and_switches(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        MINIMAL
        + COMMANDS_OK
        + '[[homeassistant.commands]]\ndevice = "gate-1"\naction = "reboot"\n'
        + '[[homeassistant.commands]]\ndevice = "gate-1"\naction = "set_output"\n'
        + 'kind = "switch"\nname = "gate"\nargs = { pin = 2 }\n',
    )
    reboot, gate = cfg.homeassistant.commands
    assert (reboot.kind, reboot.entity, reboot.args) == ("button", "reboot", ())
    assert (gate.kind, gate.entity, gate.action) == ("switch", "gate", "set_output")
    assert gate.args == (("pin", 2),) and gate.state_arg == "value"


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        (
            '[[homeassistant.commands]]\ndevice = "gate-1"\naction = "x"\nkind = "dial"\n',
            "homeassistant.commands[0].kind",
            "button, switch",
        ),
        (
            '[[homeassistant.commands]]\ndevice = "gate-1"\naction = "x"\nstate_arg = "v"\n',
            "homeassistant.commands[0].state_arg",
            'kind = "switch" only',
        ),
        (
            '[[homeassistant.commands]]\ndevice = "gate-1"\naction = "set_output"\n'
            'kind = "switch"\nargs = { value = 1 }\n',
            "homeassistant.commands[0].args",
            "on = 1, off = 0",
        ),
        (
            '[[homeassistant.commands]]\ndevice = "gate 1"\naction = "x"\n',
            "homeassistant.commands[0].device",
            "1-32 of",
        ),
        (
            '[[homeassistant.commands]]\ndevice = "gate-1"\naction = "x"\n'
            '[[homeassistant.commands]]\ndevice = "gate-1"\naction = "x"\n',
            "homeassistant.commands",
            "two commands named 'x'",
        ),
    ],
)
def test_homeassistant_command_refusals_name_the_key(
    tmp_path: Path, text: str, key: str, words: str
) -> None:
    path, msg = refusal(tmp_path, MINIMAL + COMMANDS_OK + text)
    assert key in msg and words in msg and str(path) in msg


def test_homeassistant_commands_need_the_downlink_and_a_homeassistant_policy(
    tmp_path: Path,
) -> None:
    command = '[[homeassistant.commands]]\ndevice = "gate-1"\naction = "reboot"\n'
    for text in (
        "[homeassistant]\nenabled = true\n" + command,
        "[downlink]\nenabled = true\n[homeassistant]\nenabled = true\n" + command,
    ):
        path, msg = refusal(tmp_path, MINIMAL + text)
        assert "homeassistant.commands" in msg and 'requester = "homeassistant"' in msg
        assert str(path) in msg
