"""No device speaks for another (issue 16, findings 1, 2 and 8): against the real agent with real
Mosquitto, CoAP over real UDP sockets and a pty serial line.

- An id allowlisted, bound to a serial port or enrolled is accepted on its own transport only.
- Counters of unauthenticated devices are kept per transport: a spoof with counter 2^64-1 on one
  transport does not make the device's frames on another replays, also after a restart.
- A captured frame replayed in a flood is refused before it spends the device's budget; over
  CoAP the flood is limited per peer address.
- 20,000 frames from distinct unknown ids give a bounded number of warning lines and a summary.
- A JSON frame with a key twice is refused.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import tty
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiocoap
import pytest
from aiocoap.numbers.codes import Code

from agent.devices.auth import encode_signed_frame, frame_mac
from agent.devices.coap import PEER_REFUSALS_BURST
from agent.devices.codecs.frame import encode_frame, parse_frame
from agent.devices.codecs.serial_line import encode_serial_frame
from agent.devices.registry import DeviceRegistry
from agent.localbroker import LocalMosquitto
from agent.model import Transport
from agent.pipeline import Pipeline
from tests.integration.conftest import (
    Collector,
    Device,
    agent_config_dict,
    async_wait_until,
)
from tests.integration.test_coap_source import free_udp_port, write_oscore_context

MAX = 2**64 - 1


@pytest.fixture
def pty_port() -> Iterator[tuple[int, str]]:
    """A pseudo-terminal pair: the agent reads the slave's name, the test writes the master."""
    master, slave = os.openpty()
    tty.setraw(slave)
    yield master, os.ttyname(slave)
    os.close(master)
    os.close(slave)


def rejects(running: Any) -> dict[str, int]:
    return dict(running.agent.metrics.by_label("frames_rejected", "reason"))


def accepted(collector: Collector) -> list[tuple[str, str, int]]:
    """(device, transport, counter) of every observation upstream, in arrival order."""
    return [
        (o["reading"]["device"], o["reading"]["transport"], int(o["message"]["deviceCounter"]))
        for o in collector.observations()
    ]


def frame(counter: int, value: int = 1) -> bytes:
    return encode_frame(counter, [("t", value, 0, "Cel")])


_mids = iter(range(1, 60000))


def coap_post(port: int, device: str, payload: bytes, source: str = "127.0.0.1") -> str:
    """One confirmable POST /up/DEVICE from a UDP socket bound to `source` (any 127.x address
    is this machine's); returns the response code. Blocking: run it in a thread."""
    mid = next(_mids)
    request = aiocoap.Message(
        code=Code.POST, uri_path=("up", device), content_format=50, payload=payload
    )
    request.mtype, request.mid, request.token = aiocoap.CON, mid, mid.to_bytes(2, "big")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.settimeout(15)
        s.sendto(request.encode(), ("127.0.0.1", port))
        while True:
            answer = aiocoap.Message.decode(s.recv(4096))
            if answer.code == Code.EMPTY:
                continue  # an empty ACK: the response follows as its own message
            if answer.mtype == aiocoap.CON:
                ack = aiocoap.Message(code=Code.EMPTY)
                ack.mtype, ack.mid = aiocoap.ACK, answer.mid
                s.sendto(ack.encode(), ("127.0.0.1", port))
            return str(answer.code.dotted)


def isolation_config(
    local: LocalMosquitto, upstream: LocalMosquitto, coap_port: int, serial_path: str, **enr: Any
) -> dict[str, Any]:
    cfg = agent_config_dict(local, upstream)
    cfg["sources"]["mqtt"]["allowed_devices"] = ["mq-1", "both"]
    cfg["sources"]["coap"] = {
        "enabled": True,
        "bind": "127.0.0.1",
        "port": coap_port,
        "allowed_devices": ["co-1"],
    }
    cfg["sources"]["serial"] = {
        "ports": [
            {
                "path": serial_path,
                "device": "ser-1",
                "gps_device": "gps-1",
                "allowed_devices": ["both", "hm-1"],
            }
        ]
    }
    cfg["enrollment"] |= enr
    return cfg


async def test_an_id_allowlisted_on_one_transport_is_refused_on_every_other(
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    collector: Collector,
    device: Device,
    start_agent: Any,
    pty_port: tuple[int, str],
) -> None:
    master, path = pty_port
    port = free_udp_port()
    running = await start_agent(isolation_config(local_broker, upstream_broker, port, path))
    # The attacks: a serial device, a GPS receiver and a CoAP device spoofed over MQTT with the
    # largest counter; MQTT's and the serial port's devices spoofed over CoAP.
    for spoofed in ("ser-1", "gps-1", "co-1"):
        device.publish(f"devices/{spoofed}/up", frame(MAX, 666))
    codes = [
        await asyncio.to_thread(coap_post, port, d, frame(MAX, 666)) for d in ("mq-1", "ser-1")
    ]
    assert codes == ["4.01", "4.01"]
    await async_wait_until(lambda: rejects(running).get("unknown_device") == 5, 10, "refusals")
    # Each device on its own transport, from counter 1: none of them was poisoned.
    device.publish("devices/mq-1/up", frame(1))
    assert await asyncio.to_thread(coap_post, port, "co-1", frame(1)) == "2.04"
    os.write(master, encode_serial_frame(frame(1)))
    await async_wait_until(lambda: len(collector.observations()) == 3, 10, "three readings")
    assert sorted(accepted(collector)) == [
        ("co-1", "coap", 1),
        ("mq-1", "mqtt", 1),
        ("ser-1", "serial", 1),
    ]
    assert rejects(running) == {"unknown_device": 5}


async def test_a_maximal_counter_spoofed_on_one_transport_does_not_poison_another(
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    collector: Collector,
    device: Device,
    start_agent: Any,
    pty_port: tuple[int, str],
) -> None:
    """`both` is allowlisted over MQTT (anyone can publish as it) and bound to the serial port:
    the MQTT spoof is accepted as what it is (auth=allowlist over mqtt), and the serial
    device's counter is its own, before and after a restart."""
    master, path = pty_port
    cfg = isolation_config(local_broker, upstream_broker, free_udp_port(), path)
    running = await start_agent(cfg)
    device.publish("devices/both/up", frame(MAX, 666))
    await async_wait_until(lambda: len(collector.observations()) == 1, 10, "the spoof")
    os.write(master, encode_serial_frame(encode_frame(1, [("t", 1, 0, "Cel")], device_id="both")))
    await async_wait_until(lambda: len(collector.observations()) == 2, 10, "serial frame 1")
    assert rejects(running) == {}

    await running.stop()
    again = await start_agent(cfg)
    device.publish("devices/both/up", frame(5))  # MQTT's counter survived the restart
    os.write(master, encode_serial_frame(encode_frame(2, [("t", 2, 0, "Cel")], device_id="both")))
    await async_wait_until(lambda: len(collector.observations()) == 3, 10, "serial frame 2")
    await async_wait_until(lambda: rejects(again) == {"replay": 1}, 10, "the MQTT replay")
    assert accepted(collector) == [
        ("both", "mqtt", MAX),
        ("both", "serial", 1),
        ("both", "serial", 2),
    ]


async def test_an_enrolled_device_is_accepted_only_over_the_transport_it_was_paired_for(
    tmp_path: Path,
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    collector: Collector,
    device: Device,
    start_agent: Any,
    pty_port: tuple[int, str],
) -> None:
    """hm-1 is enrolled for MQTT; the serial port also lists it, and its frames carry a valid
    MAC over every transport: only MQTT takes them (an allowlist never downgrades a key)."""
    master, path = pty_port
    port = free_udp_port()
    reg = DeviceRegistry(tmp_path / "agent" / "data" / "devices")
    _, key = reg.enroll("hm-1", transport=Transport.MQTT)
    reg.activate(["hm-1"])
    running = await start_agent(isolation_config(local_broker, upstream_broker, port, path))
    signed = encode_signed_frame(key, "hm-1", 1, [("t", 1, 0, "Cel")])
    assert await asyncio.to_thread(coap_post, port, "hm-1", signed) == "4.01"
    values = [("t", 2, 0, "Cel")]
    mac = frame_mac(key, "hm-1", parse_frame(encode_frame(2, values, device_id="hm-1")))
    os.write(master, encode_serial_frame(encode_frame(2, values, device_id="hm-1", mac=mac)))
    await async_wait_until(lambda: rejects(running).get("wrong_transport") == 2, 10, "refusals")
    device.publish("devices/hm-1/up", encode_signed_frame(key, "hm-1", 3, [("t", 3, 0, "Cel")]))
    await async_wait_until(lambda: len(collector.observations()) == 1, 10, "the MQTT frame")
    assert accepted(collector) == [("hm-1", "mqtt", 3)]
    assert collector.observations()[0]["reading"]["auth"] == "hmac"


async def test_a_captured_frame_replayed_in_a_flood_costs_the_device_none_of_its_frames(
    tmp_path: Path,
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    collector: Collector,
    device: Device,
    start_agent: Any,
) -> None:
    """A budget of 20 frames that barely refills (0.01/s): on the old order (MAC, budget,
    counter) 300 replays of frame 1 spent it and the victim's next 14 frames were refused."""
    reg = DeviceRegistry(tmp_path / "agent" / "data" / "devices")
    _, key = reg.enroll("victim", transport=Transport.MQTT)
    reg.activate(["victim"])
    cfg = agent_config_dict(local_broker, upstream_broker)
    cfg["sources"]["mqtt"]["allowed_devices"] = []
    cfg["enrollment"] |= {"rate": 0.01, "burst": 20}
    running = await start_agent(cfg)

    def signed(n: int) -> bytes:
        return encode_signed_frame(key, "victim", n, [("t", n, 0, "Cel")])

    captured = signed(1)
    device.publish("devices/victim/up", captured)
    await async_wait_until(lambda: len(collector.observations()) == 1, 10, "frame 1")
    attacker = Device(local_broker.port, client_id="attacker")
    try:
        for _ in range(300):
            attacker.publish("devices/victim/up", captured, wait=False)
        attacker.publish("devices/victim/up", captured)
    finally:
        attacker.close()
    await async_wait_until(lambda: sum(rejects(running).values()) == 301, 20, "the flood decided")
    for n in range(2, 16):
        device.publish("devices/victim/up", signed(n))
    await async_wait_until(lambda: len(collector.observations()) == 15, 10, "the victim's frames")
    assert rejects(running) == {"replay": 301}
    assert [c for _, _, c in accepted(collector)] == list(range(1, 16))


async def test_a_replay_flood_over_coap_is_limited_per_peer_and_the_device_keeps_its_frames(
    tmp_path: Path,
    upstream_broker: LocalMosquitto,
    collector: Collector,
    start_agent: Any,
) -> None:
    """The attacker (127.0.0.2) replays a captured frame 200 times: past its peer's refusal
    budget it is answered 4.29 unread; the device (127.0.0.1) has every frame taken."""
    port = free_udp_port()
    reg = DeviceRegistry(tmp_path / "agent" / "data" / "devices")
    _, key = reg.enroll("co-h", transport=Transport.COAP)
    reg.activate(["co-h"])
    cfg = {
        "gateway": {"key_file": "gateway.key", "data_dir": "data", "chain_id": 31337},
        "sources": {
            "mqtt": {"enabled": False},
            "coap": {"enabled": True, "bind": "127.0.0.1", "port": port},
        },
        "bridge": {"url": upstream_broker.url},
        "enrollment": {"rate": 0.01, "burst": 20},
        "metrics": {"listen": "127.0.0.1:0"},
    }
    running = await start_agent(cfg)

    def signed(n: int) -> bytes:
        return encode_signed_frame(key, "co-h", n, [("t", n, 0, "Cel")])

    assert await asyncio.to_thread(coap_post, port, "co-h", signed(1)) == "2.04"

    def flood() -> list[str]:
        return [coap_post(port, "co-h", signed(1), source="127.0.0.2") for _ in range(200)]

    codes = await asyncio.to_thread(flood)
    assert set(codes) == {"4.00", "4.29"}  # replay, then the peer's own limit
    assert codes[: int(PEER_REFUSALS_BURST)] == ["4.00"] * int(PEER_REFUSALS_BURST)
    assert running.agent.metrics.get("coap_peer_limited") == codes.count("4.29")
    victim = [await asyncio.to_thread(coap_post, port, "co-h", signed(n)) for n in range(2, 12)]
    assert victim == ["2.04"] * 10
    assert rejects(running) == {"replay": codes.count("4.00")}
    await async_wait_until(lambda: len(collector.observations()) == 11, 10, "upstream")


async def test_twenty_thousand_unknown_ids_give_a_bounded_number_of_warning_lines(
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    device: Device,
    start_agent: Any,
) -> None:
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler = Keep(logging.WARNING)
    logging.getLogger("agent").addHandler(handler)
    try:
        running = await start_agent(agent_config_dict(local_broker, upstream_broker))
        for i in range(20_000):
            device.publish(f"devices/ghost-{i}/up", frame(1), wait=False)
        device.publish("devices/ghost-last/up", frame(1))
        await async_wait_until(
            lambda: rejects(running).get("unknown_device") == 20_001, 60, "every frame refused"
        )
        await running.stop()  # the pipeline writes the summary of what it held back
    finally:
        logging.getLogger("agent").removeHandler(handler)
    refused = [m for m in lines if m.startswith("event=frame_rejected ")]
    assert len(refused) == Pipeline.REJECT_LINES_PER_REASON
    summaries = [m for m in lines if m.startswith("event=frames_rejected_summary ")]
    assert len(summaries) == 1
    held = 20_001 - Pipeline.REJECT_LINES_PER_REASON
    assert f"reasons=unknown_device:{held} " in summaries[0]
    assert "top_ids=" in summaries[0]


async def test_a_json_frame_with_a_key_twice_is_refused(
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    collector: Collector,
    device: Device,
    start_agent: Any,
) -> None:
    """{"n":9,...,"n":1}: one parser reads 1, another 9; the gateway reads neither."""
    running = await start_agent(agent_config_dict(local_broker, upstream_broker))
    device.publish("devices/dev-1/up", b'{"v":1,"n":9,"r":[{"s":"t","v":1,"u":"Cel"}],"n":1}')
    device.publish("devices/dev-1/up", frame(2))
    await async_wait_until(lambda: len(collector.observations()) == 1, 10, "frame 2")
    assert rejects(running) == {"not_json": 1}
    assert accepted(collector) == [("dev-1", "mqtt", 2)]


async def test_oscore_and_observed_devices_cannot_be_spoken_for_over_mqtt_or_a_coap_post(
    tmp_path: Path,
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    collector: Collector,
    device: Device,
    start_agent: Any,
) -> None:
    """sec-1 has an OSCORE context, obs-1 is OBSERVEd by the gateway (an unreachable resource
    here): neither may be published for over MQTT, and obs-1 not POSTed for over CoAP."""
    port = free_udp_port()
    oscore = tmp_path / "agent" / "oscore"
    write_oscore_context(oscore / "sec-1", "01", "02", "a secret of sec-1")
    cfg = agent_config_dict(local_broker, upstream_broker)
    cfg["sources"]["coap"] = {
        "enabled": True,
        "bind": "127.0.0.1",
        "port": port,
        "oscore_dir": str(oscore),
        "observe": [{"device": "obs-1", "uri": f"coap://127.0.0.1:{free_udp_port()}/t"}],
    }
    running = await start_agent(cfg)
    device.publish("devices/sec-1/up", frame(MAX, 666))
    device.publish("devices/obs-1/up", frame(MAX, 666))
    assert await asyncio.to_thread(coap_post, port, "obs-1", frame(MAX, 666)) == "4.01"
    await async_wait_until(lambda: rejects(running).get("unknown_device") == 3, 10, "refusals")
    device.publish("devices/dev-1/up", frame(1))  # MQTT's own allowlisted device still speaks
    await async_wait_until(lambda: len(collector.observations()) == 1, 10, "dev-1")
    assert accepted(collector) == [("dev-1", "mqtt", 1)]
