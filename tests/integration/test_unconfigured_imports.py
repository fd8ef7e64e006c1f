"""What a running agent imports: the parts a configuration does not ask for stay out of the
process (memory on a Pi, issue 23). The agent runs as `edgence-agent run` under
`python -X importtime`, whose log names every module the process imported."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.devices.codecs.frame import encode_frame
from agent.localbroker import LocalMosquitto, free_port

from .conftest import Collector, Device, agent_config_dict, wait_until, write_agent_dir

# Libraries and agent modules only some configurations need (a prefix covers its submodules).
HEAVY = (
    "aiocoap",
    "bleak",
    "bumble",
    "pymodbus",
    "serial",
    "aiohttp",
    "websockets",
    "eth_account",
    "eth_abi",
    "eth_utils",
    "web3",
    "cryptography",
    "cffi",
    "pycparser",
    "prometheus_client",
    "segno",
    "agent.chainclient",
    "agent.oracle",
    "agent.election",
    "agent.masternode",
    "agent.rewards",
    "agent.downlink",
    "agent.hadiscovery",
    "agent.coapserver",
    "agent.devices.coap",
    "agent.devices.ble",
    "agent.devices.serial",
    "agent.devices.modbus",
    "agent.devices.codecs.bthome",
    "agent.cli.devices",
    "agent.cli.firmware",
    "agent.cli.rawrepl",
    "agent.cli.doctor",
    "agent.cli.probes",
    "agent.cli.status",
    "agent.cli.chain",
    "agent.cli.contracts",
    "agent.prometheus",
)


def imported_modules(log: str) -> set[str]:
    return {
        line.rsplit("|", 1)[1].strip()
        for line in log.splitlines()
        if line.startswith("import time:") and "|" in line
    }


def heavy_in(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


def run_agent_and_read_imports(
    tmp_path: Path, cfg: dict[str, Any], device: Device, collector: Collector
) -> set[str]:
    """Start the agent, let one reading go all the way upstream, stop it: its imports."""
    config, _ = write_agent_dir(tmp_path / "etc", cfg)
    log = tmp_path / "agent.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-X", "importtime", "-m", "agent.cli", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        wait_until(
            lambda: "event=ready" in log.read_text(errors="replace") or proc.poll() is not None,
            30,
            "agent ready",
        )
        assert proc.poll() is None, log.read_text(errors="replace")[-2000:]
        device.publish("devices/dev-1/up", encode_frame(1, [("t", 215, -1, "Cel")]))
        wait_until(lambda: len(collector.observations()) == 1, 20, "the observation upstream")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    return imported_modules(log.read_text(errors="replace"))


@pytest.mark.timeout(120)
def test_an_mqtt_only_agent_imports_no_unconfigured_source_feature_or_command(
    tmp_path: Path,
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    device: Device,
    collector: Collector,
) -> None:
    cfg = agent_config_dict(local_broker, upstream_broker)
    modules = run_agent_and_read_imports(tmp_path, cfg, device, collector)
    assert {"paho.mqtt.client", "agent.devices.mqtt", "agent.bridge"} <= modules
    assert heavy_in(modules) == []


@pytest.mark.timeout(120)
def test_a_configured_coap_source_is_imported_and_seen_by_the_same_check(
    tmp_path: Path,
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    device: Device,
    collector: Collector,
) -> None:
    # The same reading of the import log finds a part once the config asks for it.
    cfg = agent_config_dict(local_broker, upstream_broker)
    cfg["sources"]["coap"] = {"enabled": True, "bind": "127.0.0.1", "port": free_port()}
    modules = run_agent_and_read_imports(tmp_path, cfg, device, collector)
    assert {"aiocoap", "agent.devices.coap"} <= set(heavy_in(modules))
