"""Enrollment end to end with real Mosquitto brokers and the real agent: `edgence-agent pair`
-> bundle -> the device's first signed frame -> active -> observations upstream; every refusal
reason; per-device broker credentials enforced by Mosquitto's own ACL; pairing over a serial
line to a (simulated) MicroPython board."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.devices.auth import encode_signed_frame
from agent.devices.brokerauth import find_mosquitto_passwd
from agent.devices.codecs.frame import encode_frame
from agent.devices.registry import DeviceRegistry, DeviceStatus
from agent.localbroker import LocalMosquitto
from agent.model import Transport
from tests.integration.conftest import (
    Collector,
    Device,
    agent_config_dict,
    async_wait_until,
    wait_until,
    write_agent_dir,
)
from tests.support.raw_repl_board import RawReplBoard

AGENT_USER = "edgence-agent"


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


class SecuredBroker:
    """A local Mosquitto that admits only users of its password file, per its ACL."""

    def __init__(self, d: Path) -> None:
        d.mkdir(parents=True, exist_ok=True)
        self.passwd = d / "passwd"
        self.acl = d / "acl"
        self.pid_file = d / "mosquitto.pid"
        self.agent_password_file = d / "agent.pass"
        self.agent_password = "agent-secret-pw"
        self.passwd.touch(mode=0o600)
        subprocess.run(
            [find_mosquitto_passwd(), "-b", str(self.passwd), AGENT_USER, self.agent_password],
            check=True,
            capture_output=True,
        )
        self.agent_password_file.write_text(self.agent_password)
        self.agent_password_file.chmod(0o600)
        self.acl.write_text(f"user {AGENT_USER}\ntopic read devices/+/up\n")
        self.broker = LocalMosquitto(
            d,
            name="secured",
            allow_anonymous=False,
            extra=f"password_file {self.passwd}\nacl_file {self.acl}",
        )

    def __enter__(self) -> SecuredBroker:
        self.broker.start()
        self.pid_file.write_text(str(self.broker.pid))
        return self

    def __exit__(self, *exc: object) -> None:
        self.broker.stop()


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[SecuredBroker]:
    with SecuredBroker(tmp_path / "secured") as s:
        yield s


def secured_config(secured: SecuredBroker, upstream: LocalMosquitto, **over: Any) -> dict[str, Any]:
    cfg = agent_config_dict(secured.broker, upstream)
    cfg["sources"]["mqtt"] |= {
        "allowed_devices": [],
        "username": AGENT_USER,
        "password_file": str(secured.agent_password_file),
    }
    cfg["enrollment"] |= {
        "mosquitto": {
            "password_file": str(secured.passwd),
            "acl_file": str(secured.acl),
            "pid_file": str(secured.pid_file),
            "agent_username": AGENT_USER,
        }
    }
    for k, v in over.items():
        cfg[k] = cfg.get(k, {}) | v
    return cfg


class MqttDevice:
    """A device as its bundle describes it: MQTT 5 with its own credentials (paho thread).
    Like firmware, it logs in again until the broker knows it (the broker reloads its password
    file on SIGHUP, a moment after `pair` wrote it) and after the broker drops it."""

    def __init__(self, bundle: dict[str, Any], port: int) -> None:
        self.bundle = bundle
        self.key = bytes.fromhex(bundle["key"])
        self.counter = bundle["counter_start"]
        self.port = port
        self.acks: dict[int, int] = {}
        self.connected = threading.Event()
        self.client: paho.Client | None = None

    def _new_client(self) -> paho.Client:
        m = self.bundle["mqtt"]
        c = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=self.bundle["device_id"], protocol=paho.MQTTv5
        )
        c.username_pw_set(m["username"], m["password"])
        c.reconnect_delay_set(1, 1)
        c.on_publish = lambda cl, ud, mid, rc, pr: self.acks.__setitem__(mid, rc.value)

        def on_connect(cl: paho.Client, ud: Any, fl: Any, rc: Any, pr: Any) -> None:
            if not rc.is_failure:
                self.connected.set()

        def on_disconnect(cl: paho.Client, ud: Any, fl: Any, rc: Any, pr: Any) -> None:
            self.connected.clear()

        c.on_connect = on_connect
        c.on_disconnect = on_disconnect
        return c

    def connect(self) -> None:
        def logged_in() -> bool:
            if self.connected.is_set():
                return True
            if self.client is not None:
                self.client.loop_stop()
                self.client.disconnect()
            self.client = self._new_client()
            try:
                self.client.connect("127.0.0.1", self.port, 30)
            except OSError:
                return False
            self.client.loop_start()
            return self.connected.wait(1.0)

        wait_until(logged_in, 15, "device login")

    def send(self, value: int, topic: str | None = None, counter: int | None = None) -> int:
        """Publish a signed reading; returns the PUBACK reason code (below 0x80: accepted)."""
        if counter is None:
            counter = self.counter
            self.counter += 1
        payload = encode_signed_frame(
            self.key, self.bundle["device_id"], counter, [("t", value, -1, "Cel")]
        )
        while True:
            wait_until(self.connected.is_set, 15, "device connected")
            assert self.client is not None
            info = self.client.publish(topic or self.bundle["mqtt"]["topic"], payload, qos=1)
            if info.rc == paho.MQTT_ERR_NO_CONN:
                continue  # dropped between the check and the publish: publish again
            mid = info.mid
            wait_until(lambda: mid in self.acks, 10, "PUBACK")  # noqa: B023 (used at once)
            return self.acks[mid]

    def close(self) -> None:
        if self.client is not None:
            self.client.loop_stop()
            self.client.disconnect()


def test_pair_enrolls_a_device_whose_signed_readings_go_upstream(
    tmp_path: Path, secured: SecuredBroker, upstream_broker: LocalMosquitto, agent_process: Any
) -> None:
    cfg_path, key = write_agent_dir(tmp_path / "gw", secured_config(secured, upstream_broker))
    collector = Collector(upstream_broker.port)
    agent = agent_process(cfg_path)
    agent.start()
    pair = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent.cli",
            "pair",
            "dev-1",
            "--config",
            str(cfg_path),
            "--sensor",
            "t:Cel",
            "--window",
            "60",
            "--no-qr",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    bundle_path = tmp_path / "gw" / "data" / "bundles" / "dev-1.json"
    wait_until(bundle_path.exists, 15, "provisioning bundle")
    assert (bundle_path.stat().st_mode & 0o777) == 0o600
    bundle = json.loads(bundle_path.read_text())
    assert bundle["device_id"] == "dev-1" and bundle["counter_start"] == 0
    assert bundle["gateway"] == key.checksum_address
    dev = MqttDevice(bundle, secured.broker.port)
    dev.connect()
    try:
        # The device sends readings until the agent has verified one and pair says so.
        while pair.poll() is None:
            dev.send(200 + dev.counter)
            with contextlib.suppress(subprocess.TimeoutExpired):
                pair.wait(0.3)
        out = pair.stdout.read() if pair.stdout else ""
        assert pair.returncode == 0, out
        assert "dev-1 is active" in out
        dev.send(7)
        sent = dev.counter
        wait_until(
            lambda: any(
                o["message"]["deviceCounter"] == sent - 1 for o in collector.observations()
            ),
            15,
            "the last reading upstream",
        )
        obs = collector.observations()
        assert {o["reading"]["auth"] for o in obs} == {"hmac"}
        counters = [o["message"]["deviceCounter"] for o in obs]
        # Frames sent before the agent had read the new registry entry were refused as
        # unknown; everything after the first verified frame is signed exactly once.
        assert counters == list(range(counters[0], sent))
        shown = cli("devices", "show", "dev-1", "--config", str(cfg_path), "--json")
        assert json.loads(shown.stdout)["status"] == "active"
        assert json.loads(shown.stdout)["last_counter"] == sent - 1
    finally:
        dev.close()
        collector.close()


def test_the_broker_acl_stops_a_device_publishing_as_another(
    tmp_path: Path, secured: SecuredBroker, upstream_broker: LocalMosquitto
) -> None:
    cfg_path, _ = write_agent_dir(tmp_path / "gw", secured_config(secured, upstream_broker))
    # As the broker's user would have them: pair (run as root) must not take them over.
    root = os.geteuid() == 0
    for f in (secured.passwd, secured.acl):
        if root:
            os.chown(f, 4242, 4343)
        f.chmod(0o640)
    for d in ("dev-1", "dev-2"):
        r = cli("pair", d, "--config", str(cfg_path), "--no-wait", "--no-qr")
        assert r.returncode == 0, r.stdout + r.stderr
    for f in (secured.passwd, secured.acl):
        st = f.stat()
        assert st.st_mode & 0o777 == 0o640, f
        if root:
            assert (st.st_uid, st.st_gid) == (4242, 4343), f
    acl = secured.acl.read_text()
    assert "user dev-1\ntopic write devices/dev-1/up" in acl
    bundle = json.loads((tmp_path / "gw" / "data" / "bundles" / "dev-1.json").read_text())
    dev = MqttDevice(bundle, secured.broker.port)
    dev.connect()
    try:
        assert dev.send(1, topic="devices/dev-2/up") == 135  # MQTT 5 "not authorized"
    finally:
        dev.close()  # (Mosquitto drops the connection after a refused publish)
    dev = MqttDevice(bundle, secured.broker.port)
    dev.connect()
    try:
        assert dev.send(2) < 0x80  # its own topic: accepted (0x10: no subscriber yet)
        # Revoking removes its broker login as well as its key.
        r = cli("devices", "revoke", "dev-1", "--config", str(cfg_path))
        assert r.returncode == 0, r.stderr
        assert "user dev-1\n" not in secured.acl.read_text()
        assert "dev-1:" not in secured.passwd.read_text()
    finally:
        dev.close()


def test_pairing_window_expires_and_the_device_stays_pending(
    tmp_path: Path, local_broker: LocalMosquitto, upstream_broker: LocalMosquitto
) -> None:
    cfg_path, _ = write_agent_dir(tmp_path / "gw", agent_config_dict(local_broker, upstream_broker))
    r = cli("pair", "late-1", "--config", str(cfg_path), "--window", "1", "--qr")
    assert r.returncode == 1
    assert "stays pending" in r.stdout and "pair --reopen late-1" in r.stdout
    # The device card as a QR code: rows of half-block characters, all the same width, fitting
    # a 24-row terminal.
    qr_rows = [ln for ln in r.stdout.splitlines() if "▀" in ln or "▄" in ln]
    assert 10 < len(qr_rows) <= 24 and len({len(ln) for ln in qr_rows}) == 1
    reg = DeviceRegistry(tmp_path / "gw" / "data" / "devices")
    assert reg.get("late-1").status is DeviceStatus.PENDING  # type: ignore[union-attr]
    listed = cli("devices", "list", "--config", str(cfg_path))
    assert "late-1" in listed.stdout and "pending" in listed.stdout


def test_pair_over_serial_writes_the_bundle_onto_the_board(
    tmp_path: Path, local_broker: LocalMosquitto, upstream_broker: LocalMosquitto
) -> None:
    cfg_path, _ = write_agent_dir(tmp_path / "gw", agent_config_dict(local_broker, upstream_broker))
    with RawReplBoard(tmp_path / "flash") as board:
        r = cli(
            "pair",
            "pico-1",
            "--config",
            str(cfg_path),
            "--serial",
            board.port,
            "--no-wait",
            "--no-qr",
        )
        assert r.returncode == 0, r.stdout + r.stderr
        on_board = json.loads((tmp_path / "flash" / "config.json").read_text())
        assert board.soft_resets == 1
    bundle = json.loads((tmp_path / "gw" / "data" / "bundles" / "pico-1.json").read_text())
    assert on_board == bundle and on_board["device_id"] == "pico-1"


# -- refusals, with the agent in process so that its counters can be read -----------------


def open_cfg(local: LocalMosquitto, upstream: LocalMosquitto, **enr: Any) -> dict[str, Any]:
    cfg = agent_config_dict(local, upstream)
    cfg["sources"]["mqtt"]["allowed_devices"] = []
    cfg["enrollment"] |= enr
    return cfg


def rejects(agent: Any) -> dict[str, int]:
    return dict(agent.agent.metrics.by_label("frames_rejected", "reason"))


async def test_forged_replayed_unknown_revoked_and_stale_frames_are_refused(
    tmp_path: Path,
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    collector: Collector,
    device: Device,
    start_agent: Any,
) -> None:
    reg = DeviceRegistry(tmp_path / "agent" / "data" / "devices")
    _, key = reg.enroll("dev-1", transport=Transport.MQTT)
    _, key2 = reg.enroll("dev-2", transport=Transport.MQTT)
    reg.activate(["dev-1", "dev-2"])
    running = await start_agent(open_cfg(local_broker, upstream_broker))

    def send(dev: str, n: int, k: bytes, value: int = 1) -> None:
        device.publish(
            f"devices/{dev}/up", encode_signed_frame(k, dev, n, [("t", value, 0, "Cel")])
        )

    send("dev-1", 1, key)
    send("dev-1", 2, bytes(32))  # forged: wrong key
    send("dev-1", 1, key, value=99)  # replay of counter 1 (a valid mac over new content)
    device.publish("devices/dev-1/up", encode_frame(3, [("t", 1, 0, "Cel")]))  # no mac
    send("ghost", 1, key)  # unknown
    send("dev-1", 3, key, value=3)
    await async_wait_until(lambda: sum(rejects(running).values()) >= 4, 10, "four refusals")
    assert rejects(running) == {"bad_mac": 1, "replay": 1, "missing_mac": 1, "unknown_device": 1}
    await async_wait_until(lambda: len(collector.observations()) >= 2, 10, "two observations")
    assert [o["message"]["value"] for o in collector.observations()] == ["1", "3"]

    reg.revoke("dev-2")
    await async_wait_until(
        lambda: running.agent.gate._records["dev-2"].status is DeviceStatus.REVOKED, 10, "reload"
    )
    send("dev-2", 1, key2)
    await async_wait_until(lambda: rejects(running).get("revoked") == 1, 10, "revoked refusal")

    # A counter accepted before a restart is still refused after it; 2, never accepted (its
    # frame was forged), is inside the replay window and taken once.
    await running.stop()
    again = await start_agent(open_cfg(local_broker, upstream_broker), name="agent")
    send("dev-1", 3, key, value=33)
    send("dev-1", 2, key, value=2)
    send("dev-1", 4, key, value=4)
    await async_wait_until(lambda: len(collector.observations()) >= 4, 10, "after restart")
    assert rejects(again) == {"replay": 1}
    assert [o["message"]["value"] for o in collector.observations()] == ["1", "3", "2", "4"]


async def test_a_chatty_device_is_rate_limited_without_starving_others(
    tmp_path: Path,
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    collector: Collector,
    device: Device,
    start_agent: Any,
) -> None:
    reg = DeviceRegistry(tmp_path / "agent" / "data" / "devices")
    keys = {d: reg.enroll(d, transport=Transport.MQTT)[1] for d in ("chatty", "calm")}
    reg.activate(list(keys))
    running = await start_agent(open_cfg(local_broker, upstream_broker, rate=1, burst=5))
    for n in range(1, 41):
        device.publish(
            "devices/chatty/up",
            encode_signed_frame(keys["chatty"], "chatty", n, [("t", n, 0, "Cel")]),
            wait=False,
        )
    for n in range(1, 4):
        device.publish(
            "devices/calm/up", encode_signed_frame(keys["calm"], "calm", n, [("t", n, 0, "Cel")])
        )
    await async_wait_until(
        lambda: sum(1 for o in collector.observations() if o["reading"]["device"] == "calm") == 3,
        10,
        "calm's readings",
    )
    await async_wait_until(
        lambda: (
            rejects(running).get("rate_limited", 0)
            + sum(1 for o in collector.observations() if o["reading"]["device"] == "chatty")
            == 40
        ),
        10,
        "all of chatty's frames decided",
    )
    assert rejects(running)["rate_limited"] >= 30  # 40 in a burst of 5 at 1/s
