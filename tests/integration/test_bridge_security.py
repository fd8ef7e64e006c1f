"""The upstream bridge against a real Mosquitto that asks for TLS, a login or MQTT 5: readings
arrive only when the agent trusts the right CA and knows the password, and otherwise stay
journaled while the agent keeps running."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from agent.attest.keys import GatewayKey
from agent.attest.observation import verify_envelope
from agent.config import config_from_dict
from agent.devices.codecs.frame import encode_frame
from agent.errors import AgentError, KeyFileError
from agent.localbroker import LocalMosquitto
from agent.runtime import Agent

from .conftest import (
    AgentProcess,
    Collector,
    Device,
    agent_config_dict,
    async_wait_until,
    write_agent_dir,
)

# LocalMosquitto itself keeps a root-started broker root (see agent/localbroker.py), so that it
# can read certificates and password files in pytest's private tmp_path.


# -- a throwaway PKI, made with the openssl CLI --------------------------------------------------


@dataclass(frozen=True)
class ServerPki:
    """A CA, a server and a client certificate it signed, and a second CA that signed nothing
    of ours."""

    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def openssl(workdir: Path, *args: str) -> None:
    if shutil.which("openssl") is None:
        pytest.fail(
            "the openssl command is needed to make test certificates: apt-get install openssl"
        )
    done = subprocess.run(["openssl", *args], cwd=workdir, capture_output=True, text=True)
    assert done.returncode == 0, f"openssl {' '.join(args)} failed: {done.stderr}"


def make_ca(workdir: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA (EC P-256, valid two days): (certificate, key)."""
    cnf = workdir / f"{name}.cnf"
    cnf.write_text(
        "[req]\ndistinguished_name = dn\nprompt = no\n"
        f"[dn]\nCN = edgence test {name}\n"
        "[ext]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n"
        "subjectKeyIdentifier = hash\n"
    )
    cert, key = workdir / f"{name}.crt", workdir / f"{name}.key"
    openssl(
        workdir,
        "req", "-x509", "-config", cnf.name, "-extensions", "ext", "-days", "2",
        "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key.name, "-out", cert.name,
    )  # fmt: skip
    return cert, key


def make_cert(
    workdir: Path, ca: tuple[Path, Path], name: str, usage: str, san: str | None = None
) -> tuple[Path, Path]:
    """A leaf certificate signed by `ca` for `usage` (serverAuth or clientAuth), naming `san`
    (e.g. "IP:127.0.0.1,DNS:localhost") when given: (certificate, key)."""
    cnf = workdir / f"{name}.cnf"
    cnf.write_text(f"[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = {name}\n")
    ext = workdir / f"{name}.ext"
    ext.write_text(
        "basicConstraints = critical,CA:FALSE\n"
        "keyUsage = critical,digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage = {usage}\n"
        + (f"subjectAltName = {san}\n" if san else "")
        + "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n"
    )
    cert, key, csr = (workdir / f"{name}.{s}" for s in ("crt", "key", "csr"))
    openssl(
        workdir,
        "req", "-new", "-config", cnf.name, "-newkey", "ec",
        "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key.name, "-out", csr.name,
    )  # fmt: skip
    openssl(
        workdir,
        "x509", "-req", "-in", csr.name, "-CA", ca[0].name, "-CAkey", ca[1].name,
        "-set_serial", f"0x{os.urandom(8).hex()}", "-days", "2", "-extfile", ext.name,
        "-out", cert.name,
    )  # fmt: skip
    os.chmod(key, 0o600)
    return cert, key


def make_pki(workdir: Path, san: str = "IP:127.0.0.1,DNS:localhost") -> ServerPki:
    workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca = make_ca(workdir, "ca")
    cert, key = make_cert(workdir, ca, "server", "serverAuth", san)
    client_cert, client_key = make_cert(workdir, ca, "gateway-client", "clientAuth")
    other_ca, _ = make_ca(workdir, "other-ca")
    return ServerPki(ca[0], cert, key, client_cert, client_key, other_ca)


def tls_listener(
    pki: ServerPki, *, require_client_cert: bool = False, tls_version: str = "tlsv1.2"
) -> str:
    """Listener lines for TLS with `pki`; Mosquitto's tls_version is the oldest it accepts."""
    return "\n".join(
        [
            f"cafile {pki.ca}",
            f"certfile {pki.cert}",
            f"keyfile {pki.key}",
            f"tls_version {tls_version}",
            f"require_certificate {'true' if require_client_cert else 'false'}",
        ]
    )


@pytest.fixture
def pki(tmp_path: Path) -> ServerPki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def tls_upstream(tmp_path: Path, pki: ServerPki) -> Iterator[LocalMosquitto]:
    with LocalMosquitto(tmp_path / "mosq", name="upstream-tls", extra=tls_listener(pki)) as b:
        yield b


# -- an upstream broker that wants a login -------------------------------------------------------

UPSTREAM_USER, UPSTREAM_PASSWORD = "gateway-7", "s3cret pass"


@pytest.fixture
def login_upstream(tmp_path: Path) -> Iterator[LocalMosquitto]:
    passwd = tmp_path / "mosq" / "upstream.passwd"
    passwd.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(passwd), UPSTREAM_USER, UPSTREAM_PASSWORD],
        check=True,
        capture_output=True,
    )
    extra = f"allow_anonymous false\npassword_file {passwd}"
    with LocalMosquitto(tmp_path / "mosq", name="upstream-login", extra=extra) as b:
        # The broker really wants the login: without one it refuses.
        refused = connack(b.port)
        assert refused is not None and refused.is_failure
        yield b


def write_password_file(path: Path, password: str, mode: int = 0o600) -> Path:
    """The agent's password file, created with `mode` from the start (never briefly 0644)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(password + "\n")
    os.chmod(path, mode)  # the umask may have removed bits we asked for
    return path


# -- independent MQTT peers (paho in its own thread, not the agent's MQTT code) ------------------


def paho_client(
    client_id: str,
    *,
    ca: Path | None,
    username: str | None,
    password: str | None,
    client_cert: tuple[Path, Path] | None = None,
) -> paho.Client:
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    if ca is not None:
        cert, key = client_cert or (None, None)
        c.tls_set(
            ca_certs=str(ca),
            certfile=str(cert) if cert else None,
            keyfile=str(key) if key else None,
        )
    if username is not None:
        c.username_pw_set(username, password)
    return c


def connack(
    port: int,
    *,
    ca: Path | None = None,
    username: str | None = None,
    password: str | None = None,
) -> ReasonCode | None:
    """Connect once: the broker's CONNACK reason code, or None when the connection ended
    without one (a TLS handshake or client certificate the broker refused)."""
    got: list[ReasonCode] = []
    ended = threading.Event()

    def on_connect(cl: paho.Client, ud: Any, fl: Any, rc: ReasonCode, pr: Any) -> None:
        got.append(rc)
        ended.set()

    c = paho_client(f"probe-{os.getpid()}", ca=ca, username=username, password=password)
    c.on_connect = on_connect
    c.on_disconnect = lambda *a: ended.set()
    try:
        c.connect("127.0.0.1", port, 30)
    except OSError:  # ssl.SSLError included: refused during the handshake
        return None
    c.loop_start()
    try:
        assert ended.wait(10), "neither CONNACK nor disconnection within 10 s"
    finally:
        c.loop_stop()
        c.disconnect()
    return got[0] if got else None


class Subscriber:
    """Subscribes to `edgence/#` upstream, over TLS and/or with a login, and keeps every
    observation in arrival order."""

    def __init__(
        self,
        port: int,
        *,
        ca: Path | None = None,
        username: str | None = None,
        password: str | None = None,
        client_cert: tuple[Path, Path] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        subscribed = threading.Event()
        c = paho_client(
            f"subscriber-{port}",
            ca=ca,
            username=username,
            password=password,
            client_cert=client_cert,
        )
        c.on_connect = lambda cl, ud, fl, rc, pr: cl.subscribe("edgence/#", 1)
        c.on_subscribe = lambda *a: subscribed.set()
        c.on_message = self._on_message
        c.connect(host, port, 30)
        c.loop_start()
        self.client = c
        if not subscribed.wait(10):
            self.close()
            raise AssertionError("the upstream subscriber could not subscribe")

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def observations(self) -> list[bytes]:
        with self.lock:
            return [p for t, p in self.messages if "/obs/" in t]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def reading(counter: int) -> bytes:
    return encode_frame(counter, [("temperature", 2000 + counter, -2, "Cel")])


async def journal_backlog(running: Any) -> int:
    """Observations in the running agent's journal not yet acknowledged upstream."""
    agent: Agent = running.agent
    stats = await agent.journal.stats()
    return stats.backlog["bridge"]


def upstream_log_lines(caplog: pytest.LogCaptureFixture, *events: str) -> list[str]:
    """The logged lines of these events about the upstream link."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.getMessage().split(" ", 1)[0] in {f"event={e}" for e in events}
        and " link=upstream " in r.getMessage()
    ]


async def assert_journaled_not_delivered(
    running: Any, device: Device, caplog: pytest.LogCaptureFixture, *failures: str
) -> list[str]:
    """Publish three readings while the upstream link fails: all three are signed and kept in
    the journal, none is delivered, the agent keeps running and says why at least twice (so it
    retried). Returns those log lines."""
    for n in (1, 2, 3):
        device.publish("devices/dev-1/up", reading(n))
    m = running.agent.metrics
    await async_wait_until(lambda: m.get("observations_signed") == 3, 10, "3 readings signed")
    await async_wait_until(
        lambda: len(upstream_log_lines(caplog, *failures)) >= 2, 8, f"two {failures} lines"
    )
    assert m.get("observations_delivered") == 0
    assert await journal_backlog(running) == 3
    assert not running.agent.bridge.conn.connected.is_set()
    assert not running.task.done(), "the agent stopped instead of retrying"
    return upstream_log_lines(caplog, *failures)


# -- 1. TLS ----------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_bridge_over_tls_delivers_signed_observations_to_a_broker_with_a_trusted_ca(
    host: str,
    pki: ServerPki,
    local_broker: LocalMosquitto,
    tls_upstream: LocalMosquitto,
    device: Device,
    start_agent: Any,
) -> None:
    subscriber = Subscriber(tls_upstream.port, ca=pki.ca, host=host)
    try:
        key = GatewayKey.generate()
        bridge = {"url": f"mqtts://{host}:{tls_upstream.port}", "ca_file": str(pki.ca)}
        running = await start_agent(
            agent_config_dict(local_broker, tls_upstream, bridge=bridge), key
        )
        assert running.agent.bridge.conn.endpoint.tls
        device.publish("devices/dev-1/up", reading(1))
        device.publish("devices/dev-1/up", reading(2))
        await async_wait_until(
            lambda: len(subscriber.observations()) == 2, 15, "2 observations over TLS"
        )
        verified = [verify_envelope(p) for p in subscriber.observations()]
        assert [v.signer for v in verified] == [key.address, key.address]
        assert [(v.reading.counter, v.reading.value) for v in verified] == [(1, 2001), (2, 2002)]
        # The subscriber can see the second message before the agent has read its PUBACK.
        await async_wait_until(
            lambda: running.agent.metrics.get("observations_delivered") == 2, 10, "PUBACKs"
        )
    finally:
        subscriber.close()


async def test_bridge_with_the_wrong_ca_refuses_the_broker_and_keeps_journaling(
    pki: ServerPki,
    local_broker: LocalMosquitto,
    tls_upstream: LocalMosquitto,
    device: Device,
    start_agent: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="agent")
    bridge = {"url": f"mqtts://127.0.0.1:{tls_upstream.port}", "ca_file": str(pki.other_ca)}
    running = await start_agent(agent_config_dict(local_broker, tls_upstream, bridge=bridge))
    failures = await assert_journaled_not_delivered(running, device, caplog, "mqtt_connect_failed")
    assert all("certificate verify failed" in line for line in failures), failures
    assert not upstream_log_lines(caplog, "mqtt_connected")


async def test_bridge_refuses_a_certificate_from_its_ca_made_out_for_another_host(
    tmp_path: Path,
    local_broker: LocalMosquitto,
    device: Device,
    start_agent: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="agent")
    pki = make_pki(tmp_path / "pki-elsewhere", san="DNS:broker.elsewhere.example")
    with LocalMosquitto(tmp_path / "mosq", name="elsewhere", extra=tls_listener(pki)) as upstream:
        bridge = {"url": f"mqtts://127.0.0.1:{upstream.port}", "ca_file": str(pki.ca)}
        running = await start_agent(agent_config_dict(local_broker, upstream, bridge=bridge))
        failures = await assert_journaled_not_delivered(
            running, device, caplog, "mqtt_connect_failed"
        )
        assert all("127.0.0.1" in line and "mismatch" in line for line in failures), failures
        await running.stop()


async def test_bridge_presents_its_client_certificate_to_a_broker_that_requires_one(
    tmp_path: Path,
    pki: ServerPki,
    local_broker: LocalMosquitto,
    device: Device,
    start_agent: Any,
) -> None:
    extra = tls_listener(pki, require_client_cert=True)
    with LocalMosquitto(tmp_path / "mosq", name="upstream-mtls", extra=extra) as upstream:
        # The broker really wants a client certificate: without one it ends the connection.
        assert connack(upstream.port, ca=pki.ca) is None
        client_cert = (pki.client_cert, pki.client_key)
        subscriber = Subscriber(upstream.port, ca=pki.ca, client_cert=client_cert)
        try:
            key = GatewayKey.generate()
            bridge = {
                "url": f"mqtts://127.0.0.1:{upstream.port}",
                "ca_file": str(pki.ca),
                "cert_file": str(pki.client_cert),
                "key_file": str(pki.client_key),
            }
            running = await start_agent(
                agent_config_dict(local_broker, upstream, bridge=bridge), key
            )
            device.publish("devices/dev-1/up", reading(1))
            await async_wait_until(
                lambda: len(subscriber.observations()) == 1, 15, "1 observation over mutual TLS"
            )
            assert verify_envelope(subscriber.observations()[0]).signer == key.address
            await running.stop()
        finally:
            subscriber.close()


async def test_bridge_without_the_client_certificate_a_broker_requires_says_why_it_cannot_connect(
    tmp_path: Path,
    pki: ServerPki,
    local_broker: LocalMosquitto,
    device: Device,
    start_agent: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="agent")
    # TLS 1.3: the server checks the client certificate after the client's handshake is done.
    extra = tls_listener(pki, require_client_cert=True, tls_version="tlsv1.3")
    with LocalMosquitto(tmp_path / "mosq", name="upstream-mtls", extra=extra) as upstream:
        bridge = {"url": f"mqtts://127.0.0.1:{upstream.port}", "ca_file": str(pki.ca)}
        running = await start_agent(agent_config_dict(local_broker, upstream, bridge=bridge))
        try:
            await assert_journaled_not_delivered(
                running, device, caplog, "mqtt_connect_failed", "mqtt_refused", "mqtt_disconnected"
            )
        finally:
            await running.stop()


# -- 2. login --------------------------------------------------------------------------------


async def test_bridge_logs_in_with_username_and_password_file_and_delivers(
    tmp_path: Path,
    local_broker: LocalMosquitto,
    login_upstream: LocalMosquitto,
    device: Device,
    start_agent: Any,
) -> None:
    subscriber = Subscriber(login_upstream.port, username=UPSTREAM_USER, password=UPSTREAM_PASSWORD)
    try:
        key = GatewayKey.generate()
        password_file = write_password_file(tmp_path / "upstream.password", UPSTREAM_PASSWORD)
        bridge = {"username": UPSTREAM_USER, "password_file": str(password_file)}
        await start_agent(agent_config_dict(local_broker, login_upstream, bridge=bridge), key)
        device.publish("devices/dev-1/up", reading(1))
        await async_wait_until(
            lambda: len(subscriber.observations()) == 1, 15, "1 observation after login"
        )
        v = verify_envelope(subscriber.observations()[0])
        assert (v.signer, v.reading.counter) == (key.address, 1)
    finally:
        subscriber.close()


async def test_bridge_with_a_wrong_password_is_refused_and_keeps_journaling(
    tmp_path: Path,
    local_broker: LocalMosquitto,
    login_upstream: LocalMosquitto,
    device: Device,
    start_agent: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="agent")
    password_file = write_password_file(tmp_path / "upstream.password", "not the password")
    bridge = {"username": UPSTREAM_USER, "password_file": str(password_file)}
    running = await start_agent(agent_config_dict(local_broker, login_upstream, bridge=bridge))
    refusals = await assert_journaled_not_delivered(running, device, caplog, "mqtt_refused")
    assert all("authori" in line.lower() for line in refusals), refusals
    # The password never shows up in the log.
    assert "not the password" not in caplog.text


def test_agent_refuses_a_password_file_others_can_read_naming_the_file(
    tmp_path: Path, local_broker: LocalMosquitto, login_upstream: LocalMosquitto
) -> None:
    password_file = write_password_file(tmp_path / "upstream.password", UPSTREAM_PASSWORD, 0o644)
    bridge = {"username": UPSTREAM_USER, "password_file": str(password_file)}
    cfg = config_from_dict(
        agent_config_dict(local_broker, login_upstream, bridge=bridge),
        str(tmp_path / "agent.toml"),
        tmp_path,
    )
    with pytest.raises(KeyFileError) as refused:
        Agent(cfg, GatewayKey.generate())
    assert f"chmod 600 {password_file}" in str(refused.value)
    assert "0644" in str(refused.value)


def test_agent_process_exits_with_chmod_advice_for_a_password_file_others_can_read(
    tmp_path: Path,
    local_broker: LocalMosquitto,
    login_upstream: LocalMosquitto,
    agent_process: Any,
) -> None:
    password_file = write_password_file(tmp_path / "upstream.password", UPSTREAM_PASSWORD, 0o644)
    bridge = {"username": UPSTREAM_USER, "password_file": str(password_file)}
    config, _ = write_agent_dir(
        tmp_path / "gw", agent_config_dict(local_broker, login_upstream, bridge=bridge)
    )
    proc: AgentProcess = agent_process(config)
    proc.start(wait_ready=False)
    assert proc.wait(20) == 2
    out = proc.log_text()
    assert f"edgence-agent: error: {password_file}:" in out
    assert f"chmod 600 {password_file}" in out
    assert "event=ready" not in out
    assert UPSTREAM_PASSWORD not in out


def test_a_password_file_without_username_is_refused_not_silently_ignored(
    tmp_path: Path, local_broker: LocalMosquitto, login_upstream: LocalMosquitto
) -> None:
    password_file = write_password_file(tmp_path / "upstream.password", UPSTREAM_PASSWORD)
    bridge = {"password_file": str(password_file)}
    with pytest.raises(AgentError, match="password_file"):
        cfg = config_from_dict(
            agent_config_dict(local_broker, login_upstream, bridge=bridge),
            str(tmp_path / "agent.toml"),
            tmp_path,
        )
        Agent(cfg, GatewayKey.generate())


# -- 3. MQTT 5 -------------------------------------------------------------------------------


@pytest.fixture
def persistent_upstream(tmp_path: Path) -> Iterator[LocalMosquitto]:
    """Keeps sessions across a restart, so the subscriber misses nothing while it reconnects."""
    with LocalMosquitto(tmp_path / "mosq", name="upstream-v5", persistence=True) as b:
        yield b


async def test_bridge_speaking_mqtt5_delivers_before_and_after_an_upstream_restart(
    local_broker: LocalMosquitto,
    persistent_upstream: LocalMosquitto,
    device: Device,
    start_agent: Any,
) -> None:
    upstream = persistent_upstream
    collector = Collector(upstream.port)
    try:
        key = GatewayKey.generate()
        running = await start_agent(
            agent_config_dict(local_broker, upstream, bridge={"protocol": "5"}), key
        )
        conn = running.agent.bridge.conn
        device.publish("devices/dev-1/up", reading(1))
        await async_wait_until(lambda: len(collector.observations()) == 1, 15, "first reading")

        await asyncio.to_thread(upstream.stop)
        await async_wait_until(lambda: not conn.connected.is_set(), 10, "bridge disconnected")
        device.publish("devices/dev-1/up", reading(2))  # during the outage: journaled
        await asyncio.to_thread(upstream.start)
        await async_wait_until(conn.connected.is_set, 30, "bridge reconnected")
        device.publish("devices/dev-1/up", reading(3))
        device.publish("devices/dev-1/up", reading(4))

        def counters() -> list[int]:
            return sorted({o["message"]["deviceCounter"] for o in collector.observations()})

        await async_wait_until(lambda: counters() == [1, 2, 3, 4], 30, "readings 1-4 upstream")
        by_seq: dict[int, bytes] = {}
        for _, payload in collector.raw_observations():
            v = verify_envelope(payload)
            assert v.signer == key.address
            # At least once: a copy of a sequence is the identical envelope.
            assert by_seq.setdefault(v.gateway_sequence, payload) == payload
        assert len(by_seq) == 4
        envelopes = [json.loads(by_seq[s]) for s in sorted(by_seq)]
        assert [e["message"]["deviceCounter"] for e in envelopes] == [1, 2, 3, 4]
        # The broker saw the bridge speak MQTT 5 (p5) with a kept session (c0), before and after.
        log = upstream.logfile.read_text()
        assert log.count(f"as edgence-{key.address[2:14]}-bridge (p5, c0,") >= 2, log
        # Every one was acknowledged: the journal's delivery cursor moves past all four.
        bridge = running.agent.bridge
        await async_wait_until(lambda: bridge.watermark == max(by_seq), 10, "all acknowledged")
    finally:
        collector.close()
