"""`pair` gives each MQTT device a broker password: it must never be on mosquitto_passwd's command
line, where any local user reads it in /proc while the tool runs. A wrapper first on PATH records
the real tool's arguments and runs it; the broker then admits the device with that password."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import BrokerAuthConfig
from agent.devices.brokerauth import MosquittoAuth, find_mosquitto_passwd
from agent.localbroker import LocalMosquitto


def test_the_device_password_never_appears_on_mosquitto_passwds_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = find_mosquitto_passwd()
    argv_log = tmp_path / "argv.log"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "mosquitto_passwd"
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {argv_log}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    auth = MosquittoAuth(
        BrokerAuthConfig(password_file=tmp_path / "passwd", acl_file=tmp_path / "acl")
    )
    password = auth.set_password("dev-1")
    auth.set_password("dev-2")
    logged = argv_log.read_text()
    assert logged.count("\n") == 2, "the wrapper did not run: the test would prove nothing"
    assert password not in logged
    assert "-b" not in logged.split()
    # and the password the tool stored is the one the device was given
    with LocalMosquitto(
        tmp_path, allow_anonymous=False, extra=f"password_file {tmp_path / 'passwd'}"
    ) as broker:
        for pw, ok in ((password, True), ("wrong", False)):
            got: list[bool] = []
            done = threading.Event()
            c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"dev-1-{ok}")
            c.username_pw_set("dev-1", pw)

            def on_connect(*a: object, got: list[bool] = got, done: threading.Event = done) -> None:
                got.append(not a[3].is_failure)  # type: ignore[attr-defined]
                done.set()

            c.on_connect = on_connect
            c.connect("127.0.0.1", broker.port, 30)
            c.loop_start()
            try:
                assert done.wait(10)
            finally:
                c.loop_stop()
                c.disconnect()
            assert got == [ok]
