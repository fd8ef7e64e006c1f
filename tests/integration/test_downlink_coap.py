"""dApp commands over CoAP against real peers: an aiocoap client POSTs to the agent's /cmd, the
command reaches the device (the firmware's own handler over Mosquitto), and the CoAP answer is
the outcome with the gateway's signed receipt; the same request from libcoap's independent
client is answered the same way (its id is never run twice)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiocoap
import pytest

from agent.attest.receipt import verify_receipt
from agent.config.downlink import CommandRule
from agent.downlink.coapcommands import CoapCommands
from agent.downlink.service import Downlink
from agent.localbroker import LocalMosquitto
from agent.metrics import Metrics
from agent.model import Transport
from tests.support.commandpeers import (
    GATEWAY_KEY,
    MqttBoard,
    command_service,
    run_parts,
    stop_parts,
)

DEVICE = "gate-1"
ME = "coap:127.0.0.1"  # the requester the agent names an aiocoap client on loopback


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CoapCommandRig:
    def __init__(self, dl: Downlink, server: CoapCommands, metrics: Metrics, board: MqttBoard):
        self.dl, self.server, self.metrics, self.board = dl, server, metrics, board
        self.uri = f"coap://127.0.0.1:{server.port}/cmd"
        self.ctx: aiocoap.Context | None = None

    async def post(self, body: dict[str, Any] | bytes) -> tuple[str, dict[str, Any]]:
        assert self.ctx is not None
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = aiocoap.Message(code=aiocoap.POST, uri=self.uri, payload=payload)
        resp = await asyncio.wait_for(self.ctx.request(req).response, 30)
        return resp.code.dotted, json.loads(resp.payload) if resp.payload else {}


@contextlib.asynccontextmanager
async def coap_command_rig(tmp: Path, broker: LocalMosquitto) -> AsyncIterator[CoapCommandRig]:
    """The command service with its CoAP server; `ME` may send `open` to any device; gate-1
    runs the firmware's handler, gate-2 is enrolled but never connects."""
    policy = (
        CommandRule("operator", ("*",), ("*",)),
        CommandRule(ME, ("*",), ("open",)),
    )
    dl, metrics, _ = command_service(
        tmp,
        broker.port,
        [(DEVICE, Transport.MQTT), ("gate-2", Transport.MQTT)],
        policy,
        rate=5.0,
        burst=20,
    )
    server = CoapCommands(dl, "127.0.0.1", free_udp_port(), rate=dl.cfg.rate, burst=dl.cfg.burst)
    board = await asyncio.to_thread(MqttBoard, broker.port, DEVICE, tmp / "flash")
    tasks = await run_parts(dl, server)
    rig = CoapCommandRig(dl, server, metrics, board)
    rig.ctx = await aiocoap.Context.create_client_context()
    try:
        yield rig
    finally:
        await rig.ctx.shutdown()
        await stop_parts(tasks, dl, server)
        board.close()


@pytest.fixture
async def coap_rig(tmp_path: Path, local_broker: LocalMosquitto) -> AsyncIterator[CoapCommandRig]:
    async with coap_command_rig(tmp_path, local_broker) as rig:
        yield rig


async def test_a_coap_command_reaches_the_device_and_is_answered_with_a_signed_receipt(
    coap_rig: CoapCommandRig,
) -> None:
    code, out = await coap_rig.post(
        {"device": DEVICE, "action": "open", "args": {"gate": "north"}, "ttl": 30, "id": "pay-1"}
    )
    assert code == "2.05", out
    assert out["ok"] is True and out["status"] == "ok" and out["id"] == "pay-1"
    assert verify_receipt(out["receipt"]) == GATEWAY_KEY.address.lower()
    assert coap_rig.board.ran == [{"gate": "north"}]
    # The same id again: the stored outcome, not a second execution.
    code, again = await coap_rig.post(
        {"device": DEVICE, "action": "open", "args": {"gate": "north"}, "ttl": 30, "id": "pay-1"}
    )
    assert code == "2.05" and again["receipt"] == out["receipt"]
    assert coap_rig.board.ran == [{"gate": "north"}]


@pytest.mark.skipif(shutil.which("coap-client-notls") is None, reason="libcoap3-bin not installed")
async def test_libcoap_client_gets_the_same_outcome(coap_rig: CoapCommandRig) -> None:
    body = json.dumps({"device": DEVICE, "action": "open", "ttl": 30, "id": "lib-1"})
    proc = await asyncio.to_thread(
        subprocess.run,
        ["coap-client-notls", "-m", "post", "-t", "50", "-e", body, "-B", "30", coap_rig.uri],
        capture_output=True,
        timeout=40,
    )
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["ok"] is True and out["id"] == "lib-1", proc.stdout + proc.stderr
    assert verify_receipt(out["receipt"]) == GATEWAY_KEY.address.lower()
    assert coap_rig.board.ran == [{}]
