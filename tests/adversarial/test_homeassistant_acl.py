"""Home Assistant discovery under the broker ACL that `pair` writes (agent/devices/brokerauth.py):
a real Mosquitto that admits only its password file's logins, the real agent publishing discovery
with its own login, Home Assistant's login reading it. The agent's discovery configs, states and
availability reach Home Assistant; an enrolled device's login cannot publish any of them (nor
Home Assistant's status). What the ACL says with [homeassistant] off or with another login for
discovery: tests/unit/devices/test_brokerauth.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import BrokerAuthConfig, HomeAssistantConfig
from agent.devices.auth import encode_signed_frame
from agent.devices.brokerauth import MosquittoAuth
from agent.devices.registry import DeviceRegistry
from agent.hapayload import Topics
from agent.localbroker import LocalMosquitto
from agent.model import Transport
from tests.integration.conftest import agent_config_dict, async_wait_until

AGENT, HASS = "edgence-agent", "hass"


class Login(threading.Thread):
    """A client with a broker login that keeps what it receives (its own paho thread)."""

    def __init__(self, port: int, username: str, password: str, subscribe: str | None) -> None:
        super().__init__(daemon=True)
        self.got: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        ready = threading.Event()
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{username}-{time.time_ns()}")
        c.username_pw_set(username, password)
        c.on_message = self._on_message
        if subscribe is None:
            c.on_connect = lambda *a: ready.set()
        else:
            c.on_connect = lambda cl, *a: cl.subscribe(subscribe, 1)
            c.on_subscribe = lambda *a: ready.set()
        c.connect("127.0.0.1", port, 30)
        c.loop_start()
        assert ready.wait(10), f"{username} could not connect"
        self.client = c

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self.lock:
            self.got.append((msg.topic, bytes(msg.payload)))

    def topics(self) -> set[str]:
        with self.lock:
            return {t for t, _ in self.got}

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class AclBroker:
    """A Mosquitto under the ACL `pair` writes, with logins for the agent, Home Assistant and
    the enrolled device dev-1."""

    def __init__(self, d: Path, registry: DeviceRegistry, ha: HomeAssistantConfig) -> None:
        d.mkdir(parents=True, exist_ok=True)
        cfg = BrokerAuthConfig(
            password_file=d / "passwd",
            acl_file=d / "acl",
            agent_username=AGENT,
            homeassistant_username=HASS,
        )
        auth = MosquittoAuth(cfg, homeassistant=ha)
        self.passwords = {u: auth.set_password(u) for u in (AGENT, HASS, "dev-1")}
        self.password_files: dict[str, Path] = {}
        for u, p in self.passwords.items():
            f = d / f"{u}.pass"
            f.write_text(p)
            f.chmod(0o600)
            self.password_files[u] = f
        auth.write_acl(registry.all())
        self.acl = (d / "acl").read_text()
        self.broker = LocalMosquitto(
            d,
            name="acl",
            allow_anonymous=False,
            extra=f"password_file {d / 'passwd'}\nacl_file {d / 'acl'}",
        )

    def login(self, username: str, subscribe: str | None = None) -> Login:
        return Login(self.broker.port, username, self.passwords[username], subscribe)


@pytest.fixture
def registry(tmp_path: Path) -> tuple[DeviceRegistry, bytes]:
    reg = DeviceRegistry(tmp_path / "gw" / "data" / "devices")
    _, key = reg.enroll("dev-1", transport=Transport.MQTT, sensors=(("t", "Cel"),))
    reg.activate(["dev-1"])
    return reg, key


@pytest.fixture
def acl_broker(tmp_path: Path, registry: tuple[DeviceRegistry, bytes]) -> Iterator[AclBroker]:
    b = AclBroker(tmp_path / "acl", registry[0], HomeAssistantConfig(enabled=True))
    with b.broker:
        yield b


def agent_on(b: AclBroker, upstream: LocalMosquitto) -> dict[str, Any]:
    login = {"username": AGENT, "password_file": str(b.password_files[AGENT])}
    cfg = agent_config_dict(b.broker, upstream, homeassistant={"enabled": True})
    cfg["sources"]["mqtt"] |= {"allowed_devices": [], **login}
    cfg["homeassistant"]["mqtt"] = {"url": b.broker.url, **login}
    return cfg


async def test_only_the_agent_publishes_discovery_and_home_assistant_reads_it(
    acl_broker: AclBroker,
    upstream_broker: LocalMosquitto,
    registry: tuple[DeviceRegistry, bytes],
    start_agent: Any,
) -> None:
    hass = acl_broker.login(HASS, subscribe="#")
    device = acl_broker.login("dev-1")
    try:
        running = await start_agent(agent_on(acl_broker, upstream_broker), name="gw")
        gw = running.agent.key.address
        topics = Topics("homeassistant", "edgence", gw)
        frame = encode_signed_frame(registry[1], "dev-1", 1, [("t", 5, 0, "Cel")])
        device.publish("devices/dev-1/up", frame)
        state = topics.state("dev-1")
        await async_wait_until(lambda: state in hass.topics(), 15, "the device's state")
        await async_wait_until(lambda: topics.availability in hass.topics(), 15, "online")
        seen = hass.topics()
        assert topics.gateway_config in seen
        assert any(t.startswith(f"homeassistant/sensor/{topics.node_id}/dev") for t in seen)
        # The device's login tries every topic Home Assistant trusts, then says something it
        # may say; once that arrived, everything before it was decided by the broker.
        forged = [
            "homeassistant/sensor/edgence_forged/dev_1__t/config",
            "homeassistant/switch/x/y/config",
            topics.availability,
            state,
            "homeassistant/status",
        ]
        for topic in forged:
            # Mosquitto may drop the connection of a login that publishes where it must not:
            # one connection per attempt, each attempt finished (refused or acknowledged).
            attempt = acl_broker.login("dev-1")
            try:
                attempt.publish(topic, b"forged")
            except RuntimeError:
                pass  # disconnected for it: the broker refused it
            finally:
                attempt.close()
        hass.publish("homeassistant/status", b"online")
        await async_wait_until(
            lambda: ("homeassistant/status", b"online") in hass.got, 10, "Home Assistant's status"
        )
        with hass.lock:
            assert [t for t, p in hass.got if p == b"forged"] == []
        assert "pattern write homeassistant" not in acl_broker.acl
    finally:
        hass.close()
        device.close()
