"""The installed command as an operator uses it: `init` then `run`, with an encrypted key."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.attest.observation import verify_envelope
from agent.devices.codecs.frame import encode_frame
from agent.localbroker import LocalMosquitto

from .conftest import AgentProcess, Collector, Device, wait_until


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


@pytest.mark.timeout(120)  # scrypt twice (init, then the agent's start): 28 s on a busy machine
def test_init_with_an_encrypted_key_then_run_signs_with_that_key(
    tmp_path: Path,
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    collector: Collector,
    device: Device,
    agent_process: Any,
) -> None:
    passfile = tmp_path / "gateway.pass"
    fd = os.open(passfile, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"correct horse battery staple\n")
    os.close(fd)
    d = tmp_path / "etc"
    out = cli(
        "init",
        "--dir",
        str(d),
        "--passphrase-file",
        str(passfile),
        "--local-broker",
        local_broker.url,
        "--upstream",
        upstream_broker.url,
    )
    assert out.returncode == 0, out.stderr
    address = out.stdout.split("address")[1].split()[0].lower()
    assert json.loads((d / "gateway.key").read_text())["crypto"]["kdf"] == "scrypt"
    cfg = d / "agent.toml"
    cfg.write_text(
        cfg.read_text().replace("allowed_devices = []", 'allowed_devices = ["dev-1"]', 1)
    )
    proc: AgentProcess = agent_process(cfg)
    proc.start()  # the config init wrote names the passphrase file
    device.publish("devices/dev-1/up", encode_frame(1, [("t", 5, 0, "Cel")]))
    wait_until(lambda: len(collector.raw_observations()) == 1, 10, "the observation upstream")
    assert verify_envelope(collector.raw_observations()[0][1]).signer == address
    proc.signal(signal.SIGTERM)
    assert proc.wait(10) == 0

    # The same key without its passphrase file refuses to start and says how to provide one.
    cfg.write_text(cfg.read_text().replace("passphrase_file =", "# passphrase_file ="))
    env = {k: v for k, v in os.environ.items() if k != "EDGENCE_KEY_PASSPHRASE"}
    res = cli("run", "--config", str(cfg), env=env)
    assert res.returncode == 2
    assert "EDGENCE_KEY_PASSPHRASE" in res.stderr or "passphrase" in res.stderr

    # A passphrase readable by others is refused like a key would be.
    os.chmod(passfile, 0o644)
    cfg.write_text(cfg.read_text().replace("# passphrase_file =", "passphrase_file ="))
    res = cli("run", "--config", str(cfg))
    assert res.returncode == 2 and f"chmod 600 {passfile}" in res.stderr
