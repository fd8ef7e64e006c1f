"""Commands end to end on the rig: the real agent with [downlink] on, Mosquitto with the ACL
`pair` writes, the firmware on the board. An operator's `devices command` reaches the firmware
and comes back as the gateway's signed receipt; a command for a board that is off waits in the
agent until the board is back; refusals reach the requester with their reason."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.attest.receipt import verify_receipt
from agent.config import BrokerEndpoint
from agent.downlink.client import CommandClient
from tests.hil.boards import Board, EmulatedBoard
from tests.hil.conftest import Gateway, sensor_args, settings_for
from tests.integration.conftest import to_toml, wait_until
from tests.integration.test_enrollment import AGENT_USER

pytestmark = pytest.mark.timeout(120)


def enable_downlink(gateway: Gateway) -> None:
    """[downlink] on the devices' broker as the agent's user; the operator may do anything,
    the dApp `dapp-1` only ask a device for its version."""
    gateway.cfg["downlink"] = {
        "enabled": True,
        "resend": 1,
        "mqtt": {
            "url": f"mqtt://127.0.0.1:{gateway.devices.broker.port}",
            "username": AGENT_USER,
            "password_file": str(gateway.devices.agent_password_file),
        },
    }
    text = to_toml(gateway.cfg)
    text += '\n[[downlink.policy]]\nrequester = "operator"\ndevices = ["*"]\nactions = ["*"]\n'
    text += '\n[[downlink.policy]]\nrequester = "dapp-1"\ndevices = ["*"]\nactions = ["version"]\n'
    gateway.config.write_text(text)


def bring_up(gateway: Gateway, board: Board, device: str) -> None:
    enable_downlink(gateway)
    bundle = gateway.pair(device, *sensor_args(board), **settings_for(board, outputs=[2]))
    board.deploy(json.dumps(bundle).encode())
    gateway.agent.start()
    board.power_on()
    wait_until(lambda: len(gateway.observations(device)) >= 2, 30, "readings from the board")


def command(gateway: Gateway, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "devices", "command", *args, "--json",
         "--config", str(gateway.config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def outcome(p: subprocess.Popen[str], timeout: float = 60) -> tuple[int, dict[str, Any], str]:
    out, err = p.communicate(timeout=timeout)
    return p.returncode, json.loads(out) if out.strip() else {}, err


def pins(board: Board) -> list[str]:
    assert isinstance(board, EmulatedBoard)
    f = Path(board.flash) / ".pins"
    return f.read_text().split() if f.exists() else []


@pytest.mark.needs("deploy", "mqtt")
def test_an_operator_command_reaches_the_firmware_and_returns_a_signed_receipt(
    gateway: Gateway, board: Board
) -> None:
    bring_up(gateway, board, "cmd-1")
    rc, out, err = outcome(command(gateway, "cmd-1", "set_output", "pin=2", "value=1"))
    assert rc == 0, err
    assert (out["ok"], out["status"], out["result"]) == (True, "ok", {"pin": 2, "value": 1})
    receipt = out["receipt"]
    assert verify_receipt(receipt) == gateway.key.address
    assert receipt["message"]["deviceId"] == "0x" + b"cmd-1".ljust(32, b"\0").hex()
    assert receipt["answer"].startswith("EDGENCE-ACK-1\ncmd-1\n1\n")  # downlink counter 1
    if isinstance(board, EmulatedBoard):
        assert pins(board) == ["2=1"]
    rc, out, err = outcome(command(gateway, "cmd-1", "version"))
    assert rc == 0 and out["result"] == {"version": "0.1.0"}, err
    assert out["receipt"]["message"]["deviceCounter"] == 2
    # A pin outside firmware.outputs: the firmware refuses, authenticated, and says why.
    rc, out, _ = outcome(command(gateway, "cmd-1", "set_output", "pin=5", "value=1"))
    assert rc == 1 and out["error"] == "bad_args" and verify_receipt(out["receipt"])
    if isinstance(board, EmulatedBoard):
        assert pins(board) == ["2=1"]


@pytest.mark.needs("deploy", "mqtt", "power_cycle")
def test_a_command_for_a_board_that_is_off_waits_for_it_and_runs_once(
    gateway: Gateway, board: Board
) -> None:
    bring_up(gateway, board, "cmd-2")
    board.power_off()
    p = command(gateway, "cmd-2", "set_output", "pin=2", "value=1", "--ttl", "60")
    wait_until(lambda: "event=command_sent" in gateway.agent.log_text(), 20, "the command sent")
    assert p.poll() is None  # still waiting: the board is off
    board.power_on()
    rc, out, err = outcome(p)
    assert rc == 0 and out["status"] == "ok", err
    wait_until(lambda: len(gateway.observations("cmd-2")) >= 6, 30, "readings after the restart")
    if isinstance(board, EmulatedBoard):
        assert pins(board) == ["2=1"]  # the retained copy was cleared: not run again at boot


@pytest.mark.needs("deploy", "mqtt", "power_cycle")
def test_refusals_reach_the_requester_with_their_reason(gateway: Gateway, board: Board) -> None:
    bring_up(gateway, board, "cmd-3")
    rc, out, _ = outcome(command(gateway, "nobody", "version"))
    assert rc == 1 and out["error"] == "unknown_device"
    rc, out, _ = outcome(command(gateway, "cmd-3", "version", "--ttl", "0"))
    assert rc == 1 and out["error"] == "expired"
    board.power_off()
    rc, out, _ = outcome(command(gateway, "cmd-3", "version", "--ttl", "2"))
    assert rc == 1 and out["error"] == "device_offline"

    async def as_dapp() -> list[dict[str, Any]]:
        ep = BrokerEndpoint(
            "127.0.0.1", gateway.devices.broker.port, username=AGENT_USER,
            password_file=gateway.devices.agent_password_file, protocol=5,
        )  # fmt: skip
        async with CommandClient(ep, "edgence", gateway.key.address, "dapp-1") as c:
            return [
                await c.send({"device": "cmd-3", "action": "set_output", "args": {"pin": 2}}, 20),
                await c.send({"device": "cmd-3", "action": "version", "ttl": 1}, 20),
            ]

    denied, allowed = asyncio.run(as_dapp())
    assert denied["error"] == "not_allowed"
    assert "[[downlink.policy]]" in denied["detail"] and str(gateway.config) in denied["detail"]
    assert "['version']" in denied["detail"]
    assert allowed["error"] == "device_offline"  # allowed, but the board is off
    log = gateway.agent.log_text()
    for reason in ("unknown_device", "expired", "not_allowed"):
        assert "event=command_refused" in log and f"reason={reason}" in log
    assert "event=command_expired" in log


@pytest.mark.needs("deploy", "coap", "deep_sleep")
def test_a_sleepy_coap_board_gets_its_command_with_the_answer_to_its_next_post(
    gateway: Gateway, board: Board
) -> None:
    gateway.serve_coap()
    enable_downlink(gateway)
    bundle = gateway.pair(
        "cmd-4", "--transport", "coap", *sensor_args(board),
        **settings_for(board, outputs=[2], deep_sleep=True, interval_s=1),
    )  # fmt: skip
    board.deploy(json.dumps(bundle).encode())
    gateway.agent.start()
    board.power_on()
    wait_until(lambda: len(gateway.observations("cmd-4")) >= 2, 30, "readings over CoAP")
    rc, out, err = outcome(command(gateway, "cmd-4", "set_output", "pin=2", "value=1"))
    assert rc == 0 and out["status"] == "ok", err
    assert verify_receipt(out["receipt"]) == gateway.key.address
    # It woke, posted, got the command in the 2.04, ran it, posted the answer, slept again.
    assert "cause=deepsleep" in board.console() and "action=set_output status=ok" in board.console()
    rc, out, err = outcome(command(gateway, "cmd-4", "version"))
    assert rc == 0 and out["receipt"]["message"]["deviceCounter"] == 2, err  # kept in flash
    if isinstance(board, EmulatedBoard):
        assert pins(board) == ["2=1"]
