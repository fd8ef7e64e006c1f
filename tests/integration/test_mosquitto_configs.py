"""configs/mosquitto/*.conf run in a real Mosquitto, included from a main file laid out like
Debian's /etc/mosquitto/mosquitto.conf (which sets persistence_location and include_dir): the
local broker keeps a persistent session's QoS 1 messages across a restart, and the bridge
example carries edgence/# to an upstream broker. Ports and paths are the only edits."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.localbroker import LocalMosquitto, find_mosquitto, free_port

from .conftest import Collector, wait_until

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "mosquitto"


class DebianLikeMosquitto:
    """Mosquitto started from a Debian-style main config that includes `conf_d`."""

    def __init__(self, workdir: Path, files: dict[str, str]) -> None:
        self.workdir = workdir
        conf_d = workdir / "conf.d"
        conf_d.mkdir(parents=True)
        for name, text in files.items():
            (conf_d / name).write_text(text)
        self.main = workdir / "mosquitto.conf"
        self.main.write_text(
            f"persistence true\npersistence_location {workdir}/\nlog_dest stderr\n"
            + ("user root\n" if os.geteuid() == 0 else "")
            + f"include_dir {conf_d}\n"
        )
        self.log = workdir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, port: int | None) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [find_mosquitto(), "-c", str(self.main)], stdout=log, stderr=log
            )
        if port is not None:

            def listening() -> bool:
                assert self.proc is not None
                assert self.proc.poll() is None, self.log.read_text()
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    return True
                except OSError:
                    return False

            wait_until(listening, 10, "mosquitto listening")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def brokers() -> Iterator[list[DebianLikeMosquitto]]:
    started: list[DebianLikeMosquitto] = []
    yield started
    for b in started:
        b.stop()


def local_conf(port: int) -> str:
    text = (CONFIGS / "local.conf").read_text()
    assert re.search(r"^listener 1883 127\.0\.0\.1$", text, re.M)  # loopback only, as shipped
    assert not re.search(r"^persistence_location", text, re.M)  # Debian's file sets it
    return text.replace("listener 1883 127.0.0.1", f"listener {port} 127.0.0.1")


def test_local_conf_keeps_queued_qos1_messages_across_a_broker_restart(
    tmp_path: Path, brokers: list[DebianLikeMosquitto]
) -> None:
    port = free_port()
    broker = DebianLikeMosquitto(tmp_path / "local", {"edgence-local.conf": local_conf(port)})
    brokers.append(broker)
    broker.start(port)
    got: list[bytes] = []
    received = threading.Event()

    def on_message(client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        got.append(bytes(msg.payload))
        received.set()

    def agent_client() -> paho.Client:  # a persistent QoS 1 session, like the agent's
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id="agent", clean_session=False)
        c.on_message = on_message
        return c

    sub = agent_client()
    subscribed = threading.Event()
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.connect("127.0.0.1", port)
    sub.subscribe("devices/+/up", 1)
    sub.loop_start()
    assert subscribed.wait(10)
    sub.disconnect()
    sub.loop_stop()

    pub = paho.Client(CallbackAPIVersion.VERSION2, client_id="sensor")
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    pub.publish("devices/dev-1/up", b"kept while the agent is away", qos=1).wait_for_publish(10)
    pub.disconnect()
    pub.loop_stop()

    broker.stop()  # a clean stop writes the persistence file
    broker.start(port)
    sub = agent_client()
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    try:
        assert received.wait(10), broker.log.read_text()
    finally:
        sub.disconnect()
        sub.loop_stop()
    assert got == [b"kept while the agent is away"]


def test_bridge_example_carries_edgence_topics_upstream(
    tmp_path: Path, brokers: list[DebianLikeMosquitto], upstream_broker: LocalMosquitto
) -> None:
    port = free_port()
    bridge = (CONFIGS / "bridge-example.conf").read_text()
    bridge = bridge.replace(
        "address broker.example.net:8883", f"address 127.0.0.1:{upstream_broker.port}"
    )
    # The test upstream speaks plain MQTT without logins: drop the TLS and login lines only.
    bridge = re.sub(
        r"^(bridge_cafile|bridge_insecure|remote_username|remote_password) .*$",
        "",
        bridge,
        flags=re.M,
    )
    broker = DebianLikeMosquitto(
        tmp_path / "gw", {"edgence-local.conf": local_conf(port), "edgence-bridge.conf": bridge}
    )
    brokers.append(broker)
    collector = Collector(upstream_broker.port, "edgence/#")
    try:
        broker.start(port)
        wait_until(
            lambda: any(t == "edgence/bridges/gateway-1/state" for t, _, _ in collector.messages),
            15,
            "the bridge's notification upstream",
        )
        pub = paho.Client(CallbackAPIVersion.VERSION2, client_id="agent-bridge")
        pub.connect("127.0.0.1", port)
        pub.loop_start()
        pub.publish("edgence/0xabc/obs/dev-1/t", b"{}", qos=1).wait_for_publish(10)
        pub.disconnect()
        pub.loop_stop()
        wait_until(
            lambda: any(t == "edgence/0xabc/obs/dev-1/t" for t, _, _ in collector.messages),
            15,
            "the observation upstream",
        )
    finally:
        collector.close()
