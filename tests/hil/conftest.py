"""Field tests against a rig (`pytest -m hil --rig FILE`, default hardware/rigs/emulated.toml):
the rig's board, and a gateway of real parts for it: Mosquitto with per-device credentials
(persistent, so a broker restart loses nothing), an upstream broker with a collector, and the
real agent (`edgence-agent run`). A test marked `needs("x", ...)` is skipped, naming what is
missing, when the rig's board lacks one of them."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.attest.observation import verify_envelope
from agent.localbroker import LocalMosquitto
from tests.hil.boards import Board, EmulatedBoard, SerialBoard
from tests.hil.preflight import preflight, report
from tests.hil.rig import Rig, load_rig
from tests.integration.conftest import AgentProcess, Collector, to_toml, write_agent_dir
from tests.integration.test_coap_source import free_udp_port
from tests.integration.test_enrollment import SecuredBroker, secured_config


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/hil/" in item.nodeid:
            item.add_marker(pytest.mark.hil)


@pytest.fixture(scope="session")
def rig(request: pytest.FixtureRequest) -> Rig:
    """The rig, once `python -m tests.hil.preflight`'s checks pass on this machine: otherwise
    every field test fails with what is missing, in words (not a broker's bind error)."""
    loaded = load_rig(Path(request.config.getoption("--rig")))
    findings = preflight(loaded)
    if not all(f.ok for f in findings):
        pytest.fail(report(loaded, findings), pytrace=False)
    return loaded


@pytest.fixture
def board(rig: Rig, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Board]:
    needs = [n for m in request.node.iter_markers("needs") for n in m.args]
    for spec in rig.boards:
        if all(spec.has(n) for n in needs):
            break
    else:
        missing = [n for n in needs if not any(b.has(n) for b in rig.boards)]
        pytest.skip(f"rig {rig.name} has no board with {', '.join(missing or needs)}")
    b: EmulatedBoard | SerialBoard
    if spec.kind == "emulated":
        b = EmulatedBoard(spec, tmp_path / spec.name)
    else:
        b = SerialBoard(spec, tmp_path / spec.name)
    yield b
    b.close()


class DeviceBroker(SecuredBroker):
    """The sensors' broker: password file + ACL as the agent manages them, persistent, and
    listening on the rig's gateway address too when boards are not on this host."""

    def __init__(self, d: Path, rig: Rig) -> None:
        super().__init__(d)
        extra = f"password_file {self.passwd}\nacl_file {self.acl}"
        if rig.gateway_host not in ("127.0.0.1", "localhost"):
            extra += f"\nlistener {rig.gateway_mqtt_port} {rig.gateway_host}"
        self.broker = LocalMosquitto(
            d, name="devices", allow_anonymous=False, persistence=True, extra=extra
        )


class Gateway:
    def __init__(
        self, tmp: Path, rig: Rig, devices: SecuredBroker, upstream: LocalMosquitto
    ) -> None:
        self.rig, self.devices, self.upstream = rig, devices, upstream
        self.dir = tmp / "gw"
        self.cfg = secured_config(devices, upstream)
        self.serial_ports: list[tuple[str, str]] = []
        self.config, self.key = write_agent_dir(self.dir, self.cfg)
        self.collector = Collector(upstream.port)
        self.agent = AgentProcess(self.config, tmp / "agent.log")

    def _write_config(self) -> None:
        text = to_toml(self.cfg)
        for path, device in self.serial_ports:  # arrays of tables: beyond to_toml
            text += f"\n[[sources.serial.ports]]\npath = {json.dumps(path)}\n"
            text += f"device = {json.dumps(device)}\n"
        self.config.write_text(text)

    def serve_coap(self) -> int:
        """Turns on the agent's CoAP source on the rig's gateway address (before `pair`, whose
        bundle carries its port, and before the agent starts); returns the UDP port."""
        port = self.rig.gateway_coap_port or free_udp_port()
        self.cfg["sources"]["coap"] = {"enabled": True, "bind": self.rig.gateway_host, "port": port}
        self._write_config()
        return port

    def read_serial(self, path: str, device: str) -> None:
        """Adds a `[[sources.serial.ports]]` for the host's end of a board's UART."""
        self.serial_ports.append((path, device))
        self._write_config()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "agent.cli", *args, "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )

    def pair(self, device: str, *extra: str, **firmware: Any) -> dict[str, Any]:
        """`edgence-agent pair` -> the bundle, with the rig's broker address and the given
        firmware settings (what `firmware deploy --setting` adds)."""
        r = self.cli(
            "pair", device, "--no-wait", "--no-qr", "--window", "120",
            "--host", self.rig.gateway_host, *extra,
        )  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        bundle: dict[str, Any] = json.loads(
            (self.dir / "data" / "bundles" / f"{device}.json").read_text()
        )
        if "mqtt" in bundle:
            bundle["mqtt"]["port"] = self.rig.gateway_mqtt_port or self.devices.broker.port
        bundle["firmware"] = firmware
        return bundle

    def observations(self, device: str) -> list[dict[str, Any]]:
        """This device's observations upstream, each verified (EIP-712 signature of this
        gateway's key) before it is returned."""
        out = []
        for _, raw in self.collector.raw_observations():
            v = verify_envelope(raw.decode())
            if v.reading.device_id != device:
                continue
            assert v.signer.lower() == self.key.checksum_address.lower()
            out.append(json.loads(raw))
        return out

    def counters(self, device: str) -> list[int]:
        return [o["message"]["deviceCounter"] for o in self.observations(device)]

    def device_record(self, device: str) -> dict[str, Any]:
        r = self.cli("devices", "show", device, "--json")
        assert r.returncode == 0, r.stderr
        out: dict[str, Any] = json.loads(r.stdout)
        return out


@pytest.fixture
def gateway(tmp_path: Path, rig: Rig) -> Iterator[Gateway]:
    with (
        DeviceBroker(tmp_path / "devices", rig) as devices,
        LocalMosquitto(tmp_path / "up", name="upstream", persistence=True) as upstream,
    ):
        gw = Gateway(tmp_path, rig, devices, upstream)
        try:
            yield gw
        finally:
            gw.agent.kill()
            gw.collector.close()


def sensor_args(board: Board) -> list[str]:
    """`pair --sensor` declarations for what the board's firmware sensors send (the gateway
    refuses undeclared sensors)."""
    declared = ["temperature:Cel"]
    if "bme280" in board.spec.sensors:
        declared += ["humidity:%", "pressure:hPa"]
    return [arg for d in declared for arg in ("--sensor", d)]


def settings_for(board: Board, **over: Any) -> dict[str, Any]:
    """Firmware settings for a field test: quick readings, small counter blocks, the rig
    board's own sensors and Wi-Fi."""
    spec = board.spec
    fw: dict[str, Any] = {"interval_s": 0.2, "counter_block": 4, "watchdog_s": 30}
    fw["sensors"] = [["bme280", {}]] if "bme280" in spec.sensors else [["simulated", {}]]
    if spec.wifi_ssid:
        assert spec.wifi_password_file is not None
        fw["wifi"] = {
            "ssid": spec.wifi_ssid,
            "password": Path(spec.wifi_password_file).read_text().strip(),
        }
    return fw | over
