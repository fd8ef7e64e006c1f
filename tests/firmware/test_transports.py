"""The firmware's transports against real peers: its minimal MQTT 3.1.1 client against a real
Mosquitto with a password file; its CoAP confirmable POST against a real aiocoap server (answer
piggybacked, and separate after an empty ACK) and against a UDP peer on loopback that loses
datagrams (the radio fault is the only fake)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiocoap
import aiocoap.resource as aiocoap_resource
import paho.mqtt.client as paho
import pytest
from edgence import coap, mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.devices.brokerauth import find_mosquitto_passwd
from agent.localbroker import LocalMosquitto
from tests.integration.conftest import wait_until


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[LocalMosquitto]:
    passwd = tmp_path / "passwd"
    passwd.touch(mode=0o600)
    for user, pw in (("dev-1", "pw-1"), ("reader", "pw-r")):
        subprocess.run(
            [find_mosquitto_passwd(), "-b", str(passwd), user, pw], check=True, capture_output=True
        )
    with LocalMosquitto(
        tmp_path / "m", name="fw", allow_anonymous=False, extra=f"password_file {passwd}"
    ) as b:
        yield b


def test_mqtt_client_logs_in_and_publishes_at_qos1_until_puback(broker: LocalMosquitto) -> None:
    got: list[tuple[str, bytes, int]] = []
    sub = paho.Client(CallbackAPIVersion.VERSION2, client_id="reader")
    sub.username_pw_set("reader", "pw-r")
    subscribed = threading.Event()
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.on_message = lambda c, u, m: got.append((m.topic, bytes(m.payload), m.qos))
    sub.connect("127.0.0.1", broker.port)
    sub.subscribe("devices/#", 1)
    sub.loop_start()
    try:
        assert subscribed.wait(10)
        c = mqtt.MQTTClient("dev-1", "127.0.0.1", broker.port, "dev-1", "pw-1")
        c.connect()
        for i in range(3):
            c.publish("devices/dev-1/up", b'{"i":%d}' % i)  # returns only after its PUBACK
        c.disconnect()
        wait_until(lambda: len(got) == 3, 10, "three messages")
        assert got == [("devices/dev-1/up", b'{"i":%d}' % i, 1) for i in range(3)]
    finally:
        sub.loop_stop()
        sub.disconnect()


def test_mqtt_client_reports_a_wrong_password_with_the_brokers_code(
    broker: LocalMosquitto,
) -> None:
    c = mqtt.MQTTClient("dev-1", "127.0.0.1", broker.port, "dev-1", "wrong")
    with pytest.raises(mqtt.MQTTError, match="return code 5"):
        c.connect()


def test_mqtt_link_says_false_while_the_broker_is_down_and_recovers(
    broker: LocalMosquitto,
) -> None:
    cfg: Any = SimpleNamespace(
        device_id="dev-1",
        mqtt={"host": "127.0.0.1", "port": broker.port, "topic": "devices/dev-1/up",
              "username": "dev-1", "password": "pw-1"},
    )  # fmt: skip
    link = mqtt.MqttLink(cfg)
    assert link.send(b"{}") is True
    broker.stop()
    assert link.send(b"{}") is False
    assert link.send(b"{}") is False  # reconnect refused
    broker.start()
    assert link.send(b"{}") is True
    link.close()


class LossyCoapPeer:
    """A UDP CoAP peer on loopback that drops the first `lose` datagrams (a radio fault) and
    answers the rest with a piggybacked ACK carrying `code`."""

    def __init__(self, code: int, lose: int = 1) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.stopping = threading.Event()
        self.port = self.sock.getsockname()[1]
        self.code, self.lose = code, lose
        self.received: list[bytes] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(2048)
            except TimeoutError:
                if self.stopping.is_set():
                    return
                continue
            self.received.append(data)
            if len(self.received) <= self.lose:
                continue
            tkl = data[0] & 0x0F
            ack = bytes((0x60 | tkl, self.code)) + data[2:4] + data[4 : 4 + tkl]
            self.sock.sendto(ack, addr)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.sock.close()


@pytest.mark.parametrize(("code", "refused"), [(coap.CHANGED, 0), (0x80, 1)])  # 2.04, 4.00
def test_coap_link_retransmits_a_lost_post_and_takes_the_answer(code: int, refused: int) -> None:
    peer = LossyCoapPeer(code)
    link = coap.CoapLink("127.0.0.1", peer.port, "/up/dev-1", ack_timeout=0.2)
    try:
        assert link.send(b'{"v":1}') is True  # done with: delivered, or refused for good
        assert link.refused == refused
        assert len(peer.received) == 2 and peer.received[0] == peer.received[1]
        assert coap.decode_header(peer.received[0])[4] == b'{"v":1}'
    finally:
        link.close()
        peer.close()


def test_coap_link_gives_up_after_max_retransmit_and_keeps_the_frame() -> None:
    peer = LossyCoapPeer(coap.CHANGED, lose=99)
    link = coap.CoapLink("127.0.0.1", peer.port, "/up/dev-1", ack_timeout=0.05)
    try:
        assert link.send(b"{}") is False  # the caller keeps it in the outbox
        assert len(peer.received) == coap.MAX_RETRANSMIT + 1
    finally:
        link.close()
        peer.close()


class UpResource(aiocoap_resource.Resource):  # type: ignore[misc]  # aiocoap is untyped
    """/up/{device} as the agent serves it: 2.04 for a frame, 4.00 for anything else;
    `delay` makes the answer late enough that aiocoap acknowledges first and answers apart."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__()
        self.delay = delay
        self.posts: list[tuple[bytes, int]] = []

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        # Site routed it here from /up/dev-1; the resource sees the rest of the path (none).
        assert request.opt.uri_path == ()
        self.posts.append((request.payload, int(request.opt.content_format)))
        if self.delay:
            await asyncio.sleep(self.delay)
        ok = request.payload.startswith(b"{")
        return aiocoap.Message(code=aiocoap.CHANGED if ok else aiocoap.BAD_REQUEST)


async def coap_server(resource: UpResource) -> tuple[aiocoap.Context, int]:
    site = aiocoap_resource.Site()
    site.add_resource(["up", "dev-1"], resource)
    port = free_udp_port()
    # UDP only: aiocoap's default transports would also bind TCP on this port and WebSocket on
    # port + 3000, ports another test may hold (address already in use).
    ctx = await aiocoap.Context.create_server_context(
        site, bind=("127.0.0.1", port), transports=["udp6"]
    )
    return ctx, port


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("delay", "separate"), [(0.0, 0), (0.6, 2)], ids=["piggybacked", "separate-response"]
)
async def test_coap_link_posts_frames_to_a_real_aiocoap_server(delay: float, separate: int) -> None:
    resource = UpResource(delay)
    ctx, port = await coap_server(resource)
    link = coap.CoapLink("127.0.0.1", port, "/up/dev-1")
    try:
        assert await asyncio.to_thread(link.send, b'{"v":1}') is True
        assert link.last_code == coap.CHANGED and link.refused == 0
        assert await asyncio.to_thread(link.send, b"not a frame") is True  # done: refused
        assert link.last_code == 0x80 and link.refused == 1
        assert resource.posts == [(b'{"v":1}', 50), (b"not a frame", 50)]
        assert link.separate == separate
    finally:
        link.close()
        await ctx.shutdown()
