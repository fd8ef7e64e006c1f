"""Home Assistant buttons and switches wired to the downlink, with a real Mosquitto and the real
agent in-process: the entities a [[homeassistant.commands]] declares appear in discovery (keys
checked against Home Assistant's documented button and switch schema), a press published as
Home Assistant publishes it reaches the device (the firmware's own handler) as a command from
the requester "homeassistant", the outcome with its signed receipt comes back as the entity's
attributes and a switch's state follows the device's authenticated answer; a press the
[[downlink.policy]] does not allow is refused and reported, never executed."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from agent.attest.receipt import verify_receipt
from agent.devices.registry import DeviceRegistry
from agent.localbroker import LocalMosquitto
from agent.model import Transport
from tests.integration.conftest import Collector, agent_config_dict, async_wait_until
from tests.integration.test_homeassistant import configs, latest
from tests.support.commandpeers import KEY, MqttBoard
from tests.unit.test_hapayload import (
    BUTTON_KEYS,
    BUTTON_REQUIRED,
    SWITCH_KEYS,
    SWITCH_REQUIRED,
    check_keys,
)

DEVICE = "gate-1"


def command_config(local: LocalMosquitto, upstream: LocalMosquitto) -> dict[str, Any]:
    cfg = agent_config_dict(
        local,
        upstream,
        downlink={
            "enabled": True,
            "resend": 2,
            "mqtt": {"url": local.url},
            "policy": [{"requester": "homeassistant", "devices": [DEVICE], "actions": ["open"]}],
        },
        homeassistant={
            "enabled": True,
            "commands": [
                {"device": DEVICE, "action": "open", "kind": "switch", "name": "gate",
                 "args": {"pin": 2}},
                {"device": DEVICE, "action": "open", "name": "pulse", "args": {"pin": 3}},
                {"device": DEVICE, "action": "reboot", "name": "restart"},
            ],
        },
    )  # fmt: skip
    cfg["sources"]["mqtt"]["allowed_devices"] = []
    return cfg


def outcome(c: Collector, topic: str) -> dict[str, Any] | None:
    got = latest(c, topic)
    return None if not got else dict(json.loads(got))


async def test_home_assistant_presses_become_commands_with_receipts_under_the_policy(
    tmp_path: Path,
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    start_agent: Any,
) -> None:
    reg = DeviceRegistry(tmp_path / "agent" / "data" / "devices")
    reg.enroll(DEVICE, transport=Transport.MQTT, name="Gate", key=KEY)
    reg.activate([DEVICE])
    board = await asyncio.to_thread(MqttBoard, local_broker.port, DEVICE, tmp_path / "flash")
    ha = Collector(local_broker.port, "homeassistant/#")
    running = await start_agent(command_config(local_broker, upstream_broker))
    gw = running.agent.key.address
    node = f"edgence_{gw[2:14].lower()}"
    base = f"edgence/{gw}/ha/{DEVICE}/cmd"
    states = Collector(local_broker.port, f"edgence/{gw}/ha/#")
    switch_topic = f"homeassistant/switch/{node}/{DEVICE}__action_2egate/config"
    button_topic = f"homeassistant/button/{node}/{DEVICE}__action_2epulse/config"
    restart_topic = f"homeassistant/button/{node}/{DEVICE}__action_2erestart/config"
    try:
        # The declared commands appear (the device has no sensor: the commands alone).
        wanted = {switch_topic, button_topic, restart_topic}
        await async_wait_until(lambda: wanted <= set(configs(ha)), 10, "command entities")
        switch, button = configs(ha)[switch_topic], configs(ha)[button_topic]
        check_keys(switch, SWITCH_KEYS, SWITCH_REQUIRED)
        check_keys(button, BUTTON_KEYS, BUTTON_REQUIRED)
        assert switch["command_topic"] == f"{base}/gate"
        assert switch["state_topic"] == f"{base}/gate/state" and switch["optimistic"] is False
        assert switch["json_attributes_topic"] == f"{base}/gate/receipt"
        assert button["command_topic"] == f"{base}/pulse" and button["payload_press"] == "PRESS"
        assert switch["device"]["identifiers"] == [f"{node}__{DEVICE}"]

        # Home Assistant switches the gate on: the device runs it, the receipt comes back.
        ha.client.publish(f"{base}/gate", b"ON", qos=1)
        await async_wait_until(
            lambda: outcome(states, f"{base}/gate/receipt") is not None, 20, "receipt"
        )
        got = outcome(states, f"{base}/gate/receipt")
        assert got is not None and got["ok"] is True and got["status"] == "ok", got
        assert verify_receipt(got["receipt"]) == gw.lower()
        await async_wait_until(lambda: latest(states, f"{base}/gate/state") == b"ON", 10, "ON")
        assert board.ran == [{"pin": 2, "value": 1}]

        ha.client.publish(f"{base}/gate", b"OFF", qos=1)
        await async_wait_until(lambda: latest(states, f"{base}/gate/state") == b"OFF", 20, "OFF")
        ha.client.publish(f"{base}/pulse", b"PRESS", qos=1)
        await async_wait_until(lambda: len(board.ran) == 3, 20, "the button's command")
        assert board.ran[1:] == [{"pin": 2, "value": 0}, {"pin": 3}]

        # A payload that is not the entity's, and a press the policy does not allow.
        ha.client.publish(f"{base}/pulse", b"ON", qos=1)
        ha.client.publish(f"{base}/restart", b"PRESS", qos=1)
        await async_wait_until(
            lambda: outcome(states, f"{base}/restart/receipt") is not None, 20, "refusal"
        )
        refused = outcome(states, f"{base}/restart/receipt")
        assert refused is not None and refused["error"] == "not_allowed", refused
        assert "'homeassistant' may not send 'reboot'" in refused["detail"]
        assert len(board.ran) == 3 and board.dl.last == 3  # nothing else reached the device
        # Home Assistant restarting finds the switch's state and the last outcome retained.
        late = Collector(local_broker.port, f"{base}/#")
        await async_wait_until(lambda: latest(late, f"{base}/gate/state") == b"OFF", 10, "late")
        # The broker sends the retained messages in an order of its own: wait for this one too.
        await async_wait_until(
            lambda: outcome(late, f"{base}/pulse/receipt") is not None, 10, "late receipt"
        )
        late_outcome = outcome(late, f"{base}/pulse/receipt")
        assert late_outcome is not None and late_outcome["ok"] is True
        late.close()
    finally:
        board.close()
        ha.close()
        states.close()
