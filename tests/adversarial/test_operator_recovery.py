"""What an operator does after an attack (issue 16, findings 1 and 8), with the installed command
against a running `edgence-agent run` and real Mosquitto brokers: `devices reset-counter` frees a
counter a spoofed frame poisoned, while the agent runs, logged in one line; a revoked id is paired
anew with `pair --replace` and its old bundle, which held the destroyed key, is gone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from agent.devices.codecs.frame import encode_frame
from agent.localbroker import LocalMosquitto
from tests.integration.conftest import (
    AgentProcess,
    Collector,
    Device,
    agent_config_dict,
    wait_until,
    write_agent_dir,
)

MAX = 2**64 - 1


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def frame(counter: int) -> bytes:
    return encode_frame(counter, [("t", 1, 0, "Cel")])


def test_reset_counter_frees_a_poisoned_counter_while_the_agent_runs(
    tmp_path: Path,
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    collector: Collector,
    device: Device,
    agent_process: Any,
) -> None:
    cfg, _ = write_agent_dir(tmp_path / "etc", agent_config_dict(local_broker, upstream_broker))
    proc: AgentProcess = agent_process(cfg)
    proc.start()
    device.publish("devices/dev-1/up", frame(MAX))  # the spoof: anyone may publish as dev-1
    wait_until(lambda: len(collector.observations()) == 1, 15, "the spoof signed")
    device.publish("devices/dev-1/up", frame(7))  # the real device, now a "replay"
    wait_until(lambda: "reason=replay" in proc.log_text(), 15, "the real frame refused")

    out = cli("devices", "reset-counter", "dev-1", "--transport", "mqtt", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    assert f"counter {MAX} under mqtt/dev-1 forgotten" in out.stdout

    device.publish("devices/dev-1/up", frame(8))
    wait_until(lambda: len(collector.observations()) == 2, 15, "the real frame signed")
    assert [int(o["message"]["deviceCounter"]) for o in collector.observations()] == [MAX, 8]
    resets = [ln for ln in proc.log_text().splitlines() if "event=counter_reset " in ln]
    assert len(resets) == 1
    assert "device=dev-1" in resets[0] and f"forgotten=mqtt/dev-1:{MAX}" in resets[0]

    again = cli("devices", "reset-counter", "dev-2", "--config", str(cfg))
    assert again.returncode == 0 and "nothing to reset" in again.stdout


def test_reset_counter_refuses_an_enrolled_device(
    tmp_path: Path, local_broker: LocalMosquitto, upstream_broker: LocalMosquitto
) -> None:
    cfg, _ = write_agent_dir(tmp_path / "etc", agent_config_dict(local_broker, upstream_broker))
    assert cli("pair", "dev-9", "--no-wait", "--no-qr", "--config", str(cfg)).returncode == 0
    out = cli("devices", "reset-counter", "dev-9", "--config", str(cfg))
    assert out.returncode != 0
    assert "enrolled" in out.stderr and "rotate-key dev-9" in out.stderr
    assert not list((tmp_path / "etc" / "data" / "requests").glob("*"))  # nothing requested


def test_a_revoked_id_is_paired_anew_with_replace_and_its_old_bundle_is_deleted(
    tmp_path: Path, local_broker: LocalMosquitto, upstream_broker: LocalMosquitto
) -> None:
    cfg, _ = write_agent_dir(tmp_path / "etc", agent_config_dict(local_broker, upstream_broker))
    bundle = tmp_path / "etc" / "data" / "bundles" / "dev-9.json"
    assert cli("pair", "dev-9", "--no-wait", "--no-qr", "--config", str(cfg)).returncode == 0
    old_key = json.loads(bundle.read_text())["key"]

    out = cli("devices", "revoke", "dev-9", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    assert not bundle.exists()  # it held the key just destroyed
    assert "pair dev-9 --replace" in out.stdout

    refused = cli("pair", "dev-9", "--no-wait", "--no-qr", "--config", str(cfg))
    assert refused.returncode != 0 and "--replace" in refused.stderr
    out = cli("pair", "dev-9", "--replace", "--no-wait", "--no-qr", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    new = json.loads(bundle.read_text())
    assert new["key"] != old_key and new["device_id"] == "dev-9"
    shown = cli("devices", "show", "dev-9", "--json", "--config", str(cfg))
    doc = json.loads(shown.stdout)
    assert doc["status"] == "pending" and doc["key_ref"] == "keys.json#dev-9@2"
