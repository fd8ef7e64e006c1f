"""Hostile devices and requesters against the real agent (child process) and Mosquitto with
the ACL `pair` writes: a device cannot read another device's commands nor answer for it; an
answer with a bad MAC is refused, counted, and reported to the requester when nothing better
came; a command id sent twice is framed once."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.attest.receipt import verify_receipt
from agent.downlink.codec import encode_answer, parse_command
from agent.localbroker import LocalMosquitto
from tests.integration.conftest import wait_until, write_agent_dir
from tests.integration.test_enrollment import AGENT_USER, SecuredBroker, cli, secured_config


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[SecuredBroker]:
    """The devices' Mosquitto: password file and the ACL `pair` writes."""
    with SecuredBroker(tmp_path / "secured") as s:
        yield s


class Device:
    """A device's MQTT 5 login (paho thread) that records what reaches it."""

    def __init__(self, bundle: dict[str, Any], port: int, subscribe: tuple[str, ...]) -> None:
        self.id = bundle["device_id"]
        self.key = bytes.fromhex(bundle["key"])
        self.got: list[tuple[str, bytes]] = []
        self.acks: dict[int, int] = {}
        self.subscribed = threading.Event()
        m = bundle["mqtt"]
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.id, protocol=paho.MQTTv5)
        c.username_pw_set(m["username"], m["password"])
        c.on_message = lambda cl, ud, msg: self.got.append((msg.topic, bytes(msg.payload)))
        c.on_publish = lambda cl, ud, mid, rc, pr: self.acks.__setitem__(mid, rc.value)
        c.on_subscribe = lambda *a: self.subscribed.set()
        c.on_connect = lambda cl, ud, fl, rc, pr: cl.subscribe([(t, 1) for t in subscribe])
        self.client = c

        def login() -> bool:
            try:
                c.connect("127.0.0.1", port, 30)
            except OSError:
                return False
            c.loop_start()
            if self.subscribed.wait(1.0):
                return True
            c.loop_stop()
            c.disconnect()
            return False

        wait_until(login, 15, f"{self.id} logged in")

    def commands(self) -> list[bytes]:
        return [p for t, p in self.got if t.endswith("/down") and p]

    def publish(self, topic: str, payload: bytes) -> int:
        mid = self.client.publish(topic, payload, qos=1).mid
        wait_until(lambda: mid in self.acks, 10, "PUBACK")
        return self.acks[mid]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def setup(tmp_path: Path, secured: SecuredBroker, upstream: LocalMosquitto) -> Path:
    cfg = secured_config(secured, upstream)
    cfg["downlink"] = {
        "enabled": True,
        "resend": 1,
        "mqtt": {
            "url": f"mqtt://127.0.0.1:{secured.broker.port}",
            "username": AGENT_USER,
            "password_file": str(secured.agent_password_file),
        },
    }
    cfg_path, _ = write_agent_dir(tmp_path / "gw", cfg)
    for d in ("dev-1", "dev-2"):
        r = cli("pair", d, "--config", str(cfg_path), "--no-wait", "--no-qr", "--window", "120")
        assert r.returncode == 0, r.stdout + r.stderr
    return cfg_path


def bundle(cfg_path: Path, device: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(
        (cfg_path.parent / "data" / "bundles" / f"{device}.json").read_text()
    )
    return out


def command(cfg_path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "devices", "command", *args, "--json",
         "--config", str(cfg_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def result(p: subprocess.Popen[str]) -> tuple[int, dict[str, Any]]:
    out, err = p.communicate(timeout=60)
    return p.returncode, (json.loads(out) if out.strip() else {"stderr": err})


def test_a_device_cannot_read_or_answer_another_devices_commands(
    tmp_path: Path, secured: SecuredBroker, upstream_broker: LocalMosquitto, agent_process: Any
) -> None:
    cfg_path = setup(tmp_path, secured, upstream_broker)
    assert "pattern read devices/%u/down" in secured.acl.read_text()
    agent = agent_process(cfg_path)
    agent.start()
    dev1 = Device(bundle(cfg_path, "dev-1"), secured.broker.port, ("devices/dev-1/down",))
    dev2 = Device(bundle(cfg_path, "dev-2"), secured.broker.port, ("devices/+/down",))
    try:
        p = command(cfg_path, "dev-1", "set_output", "pin=2", "value=1", "--ttl", "30")
        wait_until(lambda: bool(dev1.commands()), 20, "the command at dev-1")
        cmd = parse_command(dev1.key, "dev-1", dev1.commands()[0])  # framed with dev-1's key
        assert (cmd.action, cmd.counter) == ("set_output", 1)
        # dev-2 answers for dev-1 with a MAC of its own key: the broker refuses the publish.
        forged = encode_answer(dev2.key, "dev-1", 1, cmd.command_id, "ok", {})
        assert dev2.publish("devices/dev-1/ack", forged) == 135  # MQTT 5 "not authorized"
        # dev-1 itself sends an answer that does not verify: refused and counted, not taken.
        bad = encode_answer(bytes(32), "dev-1", 1, cmd.command_id, "ok", {"pin": 9})
        assert dev1.publish("devices/dev-1/ack", bad) < 0x80
        wait_until(lambda: "reason=bad_mac" in agent.log_text(), 10, "the bad answer refused")
        assert p.poll() is None
        good = encode_answer(dev1.key, "dev-1", 1, cmd.command_id, "ok", {"pin": 2})
        dev1.publish("devices/dev-1/ack", good)
        rc, out = result(p)
        assert rc == 0 and out["result"] == {"pin": 2}, out
        assert verify_receipt(out["receipt"])
        assert dev2.commands() == []  # dev-2's wildcard subscription got none of dev-1's
    finally:
        dev1.close()
        dev2.close()


def test_only_bad_mac_answers_end_as_bad_answer_mac_and_an_id_is_framed_once(
    tmp_path: Path, secured: SecuredBroker, upstream_broker: LocalMosquitto, agent_process: Any
) -> None:
    cfg_path = setup(tmp_path, secured, upstream_broker)
    agent = agent_process(cfg_path)
    agent.start()
    dev1 = Device(bundle(cfg_path, "dev-1"), secured.broker.port, ("devices/dev-1/down",))
    try:
        p = command(cfg_path, "dev-1", "version", "--ttl", "3")
        wait_until(lambda: bool(dev1.commands()), 20, "the command at dev-1")
        cmd = parse_command(dev1.key, "dev-1", dev1.commands()[0])
        dev1.publish(
            "devices/dev-1/ack", encode_answer(bytes(32), "dev-1", 1, cmd.command_id, "ok", {})
        )
        rc, out = result(p)
        assert rc == 1 and out["error"] == "bad_answer_mac", out
        # The same id twice: one frame (counter 2), both requesters get the same receipt.
        a = command(cfg_path, "dev-1", "version", "--id", "once", "--ttl", "30")
        b = command(cfg_path, "dev-1", "version", "--id", "once", "--ttl", "30")

        def ids() -> dict[str, set[int]]:
            out: dict[str, set[int]] = {}
            for c in dev1.commands():
                got = parse_command(dev1.key, "dev-1", c)
                out.setdefault(got.command_id, set()).add(got.counter)
            return out

        wait_until(lambda: "once" in ids(), 20, "the second command")
        assert ids()["once"] == {2}
        dev1.publish(
            "devices/dev-1/ack", encode_answer(dev1.key, "dev-1", 2, "once", "ok", {"version": "x"})
        )
        (ra, oa), (rb, ob) = result(a), result(b)
        assert ra == rb == 0 and oa["receipt"] == ob["receipt"]
        framed = {parse_command(dev1.key, "dev-1", c).counter for c in dev1.commands()}
        assert framed == {1, 2}  # resends carry the same counter; nothing framed a third time
    finally:
        dev1.close()
    log = agent.log_text()
    assert "event=command_answer_rejected" in log and "event=command_expired" in log
