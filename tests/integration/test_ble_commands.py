"""Commands to a device enrolled over BLE, through the whole agent (in-process, its real
wiring) on bleak over Bumble virtual controllers: the operator's command is written to the
device's command characteristic, the device's command handler is the firmware's own
(edgence.downlink) and its answer comes back by notification, signed as a receipt. On the
peripheral side, a forged and a replayed command written by another central are refused; a
BTHome-only device (no answer characteristic) gets the write and the requester is told that no
receipt can exist; a device out of range until the TTL ends is reported offline."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from bleak import BleakClient
from edgence.downlink import Downlink as FirmwareDownlink

from agent.attest.keys import GatewayKey
from agent.attest.receipt import verify_receipt
from agent.config import BrokerEndpoint
from agent.devices.registry import DeviceRegistry, KeyKind
from agent.downlink.client import CommandClient
from agent.localbroker import LocalMosquitto
from agent.model import Transport

from .ble_bumble import COMMAND_CHARACTERISTIC, CommandPeripheral, VirtualRadio
from .conftest import agent_config_dict, async_wait_until

BINDKEY = bytes.fromhex("8c1f3a5e7d9b2c4e6f8a0b1c2d3e4f50")
MAC = "C8:2B:96:44:55:66"
DEVICE = "lock-1"


class Lock:
    """The device's command handling: the firmware's edgence.downlink with one handler."""

    def __init__(self, flash: Path) -> None:
        flash.mkdir(parents=True, exist_ok=True)
        self.ran: list[dict[str, Any]] = []
        self.dl = FirmwareDownlink(
            SimpleNamespace(key=BINDKEY, device_id=DEVICE), {"unlock": self._unlock}, str(flash)
        )

    def _unlock(self, args: dict[str, Any]) -> dict[str, Any]:
        self.ran.append(dict(args))
        return {"unlocked": args.get("s", 0)}

    def handle(self, line: bytes) -> bytes | None:
        with contextlib.redirect_stdout(io.StringIO()):
            answer: bytes | None = self.dl.handle(line)
        return answer


@pytest.fixture
async def radio() -> AsyncIterator[VirtualRadio]:
    r = VirtualRadio()
    await r.add_adapter("hci0", "F0:F0:F0:F0:F0:F0")
    await r.add_adapter("hci1", "F1:F1:F1:F1:F1:F1")  # another central: the attacker's
    yield r


async def start(
    start_agent: Any, tmp_path: Path, local: LocalMosquitto, upstream: LocalMosquitto, radio: Any
) -> GatewayKey:
    registry = DeviceRegistry(tmp_path / "agent" / "data" / "devices")
    registry.enroll(
        DEVICE, transport=Transport.BLE, address=MAC, key=BINDKEY, key_kind=KeyKind.BTHOME
    )
    key = GatewayKey.generate()
    cfg = agent_config_dict(
        local,
        upstream,
        sources={
            "mqtt": {"url": local.url},
            "ble": {
                "enabled": True,
                "adapter": "hci0",
                "connect_timeout": 2,
                "connect_attempts": 1,
            },
        },
        downlink={"enabled": True, "resend": 2, "mqtt": {"url": local.url}},
    )
    await start_agent(cfg, key=key, ble_backend=radio.backend())
    return key


async def command(local: LocalMosquitto, key: GatewayKey, **request: Any) -> dict[str, Any]:
    endpoint = BrokerEndpoint("127.0.0.1", local.port, protocol=5)
    async with CommandClient(endpoint, "edgence", key.address, "operator") as c:
        return await c.send({"device": DEVICE, **request}, wait_s=60)


async def test_a_command_is_written_over_gatt_and_the_notified_answer_is_signed(
    start_agent: Any,
    tmp_path: Path,
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    radio: VirtualRadio,
) -> None:
    lock = Lock(tmp_path / "flash")
    peripheral = CommandPeripheral(radio, MAC, lock.handle)
    await peripheral.appear()
    key = await start(start_agent, tmp_path, local_broker, upstream_broker, radio)
    out = await command(local_broker, key, action="unlock", args={"s": 5}, ttl=30, id="u-1")
    assert out["ok"] is True and out["status"] == "ok", out
    assert out["result"] == {"unlocked": 5}
    assert verify_receipt(out["receipt"]) == key.address.lower()
    assert lock.ran == [{"s": 5}] and lock.dl.last == 1
    frame = peripheral.lines[-1]
    assert json.loads(frame)["n"] == 1

    # Another central (hci1) writes to the device: a forged command, then the captured one.
    forged = json.loads(frame)
    forged["args"] = {"s": 600}
    evil = BleakClient(MAC, backend=radio.backend().client, adapter="hci1", timeout=5)
    await async_wait_until(lambda: not peripheral.connections, 10, "the agent disconnected")
    await evil.connect()
    try:
        for payload in (json.dumps(forged, separators=(",", ":")).encode(), frame):
            data = payload + b"\n"
            for i in range(0, len(data), 20):
                await evil.write_gatt_char(COMMAND_CHARACTERISTIC, data[i : i + 20], response=True)
    finally:
        await evil.disconnect()
    assert len(peripheral.lines) >= 3
    assert lock.dl.refused == 1  # the forged one: its MAC does not verify, not answered
    assert lock.ran == [{"s": 5}]  # the replayed one is not run again
    assert lock.dl.executed == 1


async def test_a_bthome_only_device_gets_the_write_and_no_receipt_is_promised(
    start_agent: Any,
    tmp_path: Path,
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    radio: VirtualRadio,
) -> None:
    lock = Lock(tmp_path / "flash")
    peripheral = CommandPeripheral(radio, MAC, lock.handle, answers=False)
    await peripheral.appear()
    key = await start(start_agent, tmp_path, local_broker, upstream_broker, radio)
    out = await command(local_broker, key, action="unlock", args={"s": 1}, ttl=30)
    assert out["ok"] is True and out["status"] == "delivered_unanswered", out
    assert "receipt" not in out and "cannot answer" in out["detail"]
    assert lock.ran == [{"s": 1}]  # it verified and ran the command; it just cannot say so


async def test_a_device_out_of_range_until_the_ttl_ends_is_reported_offline(
    start_agent: Any,
    tmp_path: Path,
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    radio: VirtualRadio,
) -> None:
    lock = Lock(tmp_path / "flash")
    peripheral = CommandPeripheral(radio, MAC, lock.handle)
    await peripheral.device.power_on()  # powered, never advertising: out of range
    key = await start(start_agent, tmp_path, local_broker, upstream_broker, radio)
    out = await command(local_broker, key, action="unlock", args={"s": 1}, ttl=3)
    assert out["ok"] is False and out["error"] == "device_offline", out
    assert "did not answer before the TTL ended" in out["detail"]
    assert peripheral.lines == [] and lock.ran == []
