"""[downlink]: the per-requester policy, TTLs, topics and contract-event rules, and refusals
that name the key and the file and say what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config.downlink import CommandRule, downlink_acl_lines
from tests.unit.config.helpers import MINIMAL, load, refusal

ON = MINIMAL + "[enrollment]\nenabled = true\n[downlink]\nenabled = true\n"
CONTRACT = "0x" + "ab" * 20


def test_policy_rules_say_who_may_send_what_to_which_devices(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        ON + '[[downlink.policy]]\nrequester = "dapp-1"\ndevices = ["gate-1"]\n'
        'actions = ["set_output"]\n',
    )
    rule = cfg.downlink.rule_for("dapp-1")
    assert rule == CommandRule("dapp-1", ("gate-1",), ("set_output",))
    assert rule.allows("gate-1", "set_output") and not rule.allows("gate-1", "reboot")
    assert not rule.allows("gate-2", "set_output")
    assert cfg.downlink.rule_for("operator") is None  # a policy given replaces the default


def test_without_a_policy_only_the_operator_may_command(tmp_path: Path) -> None:
    d = load(tmp_path, ON).downlink
    assert [r.requester for r in d.policy] == ["operator"]
    assert d.rule_for("operator") is not None and d.rule_for("operator").allows("x", "y")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("extra", "key", "says"),
    [
        ('[[downlink.policy]]\nrequester = "d"\ndevices = []\nactions = ["x"]\n',
         "downlink.policy[0].devices", 'or "*" for any'),
        ('[[downlink.policy]]\nrequester = "d d"\ndevices = ["*"]\nactions = ["x"]\n',
         "downlink.policy[0].requester", "A-Z a-z 0-9"),
        ('[[downlink.policy]]\nrequester = "d"\ndevices = ["*"]\nactions = ["x"]\nwho = 1\n',
         "downlink.policy[0].who", "allowed here: actions, devices, requester"),
    ],
)  # fmt: skip
def test_bad_policies_are_refused_naming_the_key(
    tmp_path: Path, extra: str, key: str, says: str
) -> None:
    path, msg = refusal(tmp_path, ON + extra)
    assert f"[{key}]" in msg and says in msg and str(path) in msg


def test_ttls_and_topics_are_checked(tmp_path: Path) -> None:
    _, msg = refusal(tmp_path, ON + 'default_ttl = "2d"\n')
    assert "[downlink.default_ttl]" in msg and "max_ttl" in msg
    _, msg = refusal(tmp_path / "b", ON + 'down_topic = "devices/+/down"\n')
    assert "[downlink.down_topic]" in msg and "{id}" in msg


def test_commands_need_enrollment_and_events_need_the_chain(tmp_path: Path) -> None:
    _, msg = refusal(
        tmp_path, MINIMAL + "[enrollment]\nenabled = false\n[downlink]\nenabled = true\n"
    )
    assert "[downlink.enabled]" in msg and "[enrollment] enabled = true" in msg
    event = (
        f'[[downlink.events]]\ncontract = "{CONTRACT}"\n'
        'event = "GateOpened(bytes32 indexed device, uint256 seconds)"\n'
        'action = "set_output"\ndevice_from = "device"\nargs = { pin = 2 }\n'
        'args_from = { s = "seconds" }\n'
    )
    _, msg = refusal(tmp_path / "b", ON + event)
    assert "[downlink.events]" in msg and "[chain] enabled = true" in msg
    cfg = load(tmp_path / "c", ON + event + "[chain]\nenabled = true\n")
    (rule,) = cfg.downlink.events
    assert (rule.contract, rule.device_from, rule.args, rule.args_from) == (
        CONTRACT, "device", (("pin", 2),), (("s", "seconds"),),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("change", "key", "says"),
    [
        (("event = \"GateOpened(bytes32 indexed device, uint256 seconds)\"",
          'event = "GateOpened(float x)"'), "event", "only uintN"),
        (('device_from = "device"', 'device_from = "seconds"'), "device_from",
         "allowed: ['device']"),
        (('args_from = { s = "seconds" }', 'args_from = { s = "minutes" }'), "args_from",
         "allowed: ['device', 'seconds']"),
        (('device_from = "device"', 'device = "g-1"\ndevice_from = "device"'), "device",
         "exactly one"),
    ],
)  # fmt: skip
def test_bad_event_rules_say_what_is_allowed(
    tmp_path: Path, change: tuple[str, str], key: str, says: str
) -> None:
    event = (
        f'[[downlink.events]]\ncontract = "{CONTRACT}"\n'
        'event = "GateOpened(bytes32 indexed device, uint256 seconds)"\n'
        'action = "set_output"\ndevice_from = "device"\n'
        'args_from = { s = "seconds" }\n'
    ).replace(*change)
    path, msg = refusal(tmp_path, ON + event + "[chain]\nenabled = true\n")
    assert f"[downlink.events[0].{key}]" in msg and says in msg and str(path) in msg


def test_the_acl_lets_each_device_read_only_its_own_commands() -> None:
    lines = downlink_acl_lines("edgence-agent")
    assert "pattern read devices/%u/down" in lines
    assert "pattern write devices/%u/ack" in lines
    agent = lines[lines.index("user edgence-agent") :]
    assert "topic write devices/+/down" in agent and "topic read devices/+/ack" in agent
    assert not any("read devices/+/down" in x for x in lines)  # nobody reads every device's


def test_coap_commands_are_off_by_default_and_need_a_port_of_their_own(tmp_path: Path) -> None:
    d = load(tmp_path, ON).downlink
    assert not d.coap_enabled
    on = load(tmp_path, ON + '[downlink.coap]\nenabled = true\nbind = "0.0.0.0:5699"\n').downlink
    assert on.coap_enabled and (on.coap_host, on.coap_port) == ("0.0.0.0", 5699)
    # The default port is the CoAP source's: the clash is refused, naming both.
    path, msg = refusal(
        tmp_path, ON + "[sources.coap]\nenabled = true\n[downlink.coap]\nenabled = true\n"
    )
    assert "downlink.coap.bind" in msg and "[sources.coap]" in msg and str(path) in msg
