"""`edgence-agent status` against a real running agent process: JSON for scripts, plain text
when stdout is not a terminal, a live redrawn view on a real pseudo-terminal."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.devices.codecs.frame import encode_frame
from agent.localbroker import LocalMosquitto, free_port

from ..conftest import (
    AgentProcess,
    Collector,
    Device,
    agent_config_dict,
    wait_until,
    write_agent_dir,
)


def status(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", "status", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_status_reports_the_running_agents_numbers_as_json_and_text(
    tmp_path: Path,
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    collector: Collector,
    device: Device,
    agent_process: Callable[[Path], AgentProcess],
) -> None:
    cfg = agent_config_dict(
        local_broker, upstream_broker, metrics={"listen": f"127.0.0.1:{free_port()}"}
    )
    config, key = write_agent_dir(tmp_path / "gw", cfg)
    agent = agent_process(config)
    agent.start()
    for n in range(1, 6):
        device.publish("devices/dev-1/up", encode_frame(n, [("t", n, 0, "Cel")]))
    device.publish("devices/dev-2/up", encode_frame(1, [("t", 1, 0, "Cel")]))
    device.publish("devices/dev-2/up", encode_frame(1, [("t", 1, 0, "Cel")]))  # a replay
    wait_until(lambda: len(collector.observations()) == 6, 15, "6 observations")

    def health() -> dict[str, Any]:
        out = status("--config", str(config), "--json")
        assert out.returncode == 0, out.stderr
        doc: dict[str, Any] = json.loads(out.stdout)
        return doc

    wait_until(lambda: health()["upstream"]["delivered"] == 6, 15, "delivered 6")
    h = health()
    assert h["gateway"] == key.address
    assert h["readings"]["signed"] == 6
    assert h["rejected"] == {"replay": 1}
    assert h["sources"]["mqtt"]["devices"] == 2
    assert h["chain"] == {"height": None} and h["election"] == {"role": None}

    out = status("--config", str(config))  # stdout is a pipe: plain text, printed once
    assert out.returncode == 0
    assert "\x1b[" not in out.stdout
    lines = {line.split()[0]: line for line in out.stdout.splitlines()}
    assert "signed 6" in lines["readings"]
    assert "replay 1" in lines["rejected"]
    assert "devices 2" in lines["source"] and "connected" in lines["source"]
    assert "delivered 6" in lines["upstream"]
    assert "height unknown" in lines["chain"]


def test_status_on_a_terminal_redraws_in_place_until_ctrl_c(
    tmp_path: Path,
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    agent_process: Callable[[Path], AgentProcess],
) -> None:
    port = free_port()
    cfg = agent_config_dict(local_broker, upstream_broker, metrics={"listen": f"127.0.0.1:{port}"})
    config, _ = write_agent_dir(tmp_path / "gw", cfg)
    agent_process(config).start()
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent.cli",
            "status",
            "--url",
            f"http://127.0.0.1:{port}",
            "--interval",
            "0.2",
        ],
        stdin=slave,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    seen = b""
    try:
        while seen.count(b"\x1b[H\x1b[2J") < 2:  # two frames drawn
            ready, _, _ = select.select([master], [], [], 15)
            assert ready, f"no output from status on a terminal: {seen!r}"
            seen += os.read(master, 65536)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert b"readings" in seen and b"\x1b[32mready\x1b[0m" in seen


def test_status_without_a_running_agent_says_so(tmp_path: Path) -> None:
    out = status("--url", f"http://127.0.0.1:{free_port()}")
    assert out.returncode == 2
    assert "the agent is not answering at" in out.stderr and "systemctl status" in out.stderr


def test_status_with_a_config_that_disables_metrics_says_so(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[gateway]\nkey_file = "k"\n[metrics]\nenabled = false\n')
    out = status("--config", str(config), "--json")
    assert out.returncode == 2
    assert "[metrics.enabled] is false" in out.stderr


def test_status_without_a_readable_config_asks_the_default_address(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGENCE_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "empty")  # no default config for a normal user
    env["EDGENCE_CONFIG"] = str(tmp_path / "unreadable" / "agent.toml")
    # Hold the default port without listening: a connection there is refused for certain.
    with socket.socket() as holder:
        try:
            holder.bind(("127.0.0.1", 9464))
        except OSError:
            pytest.skip("127.0.0.1:9464 is in use by another process on this machine")
        out = subprocess.run(
            [sys.executable, "-m", "agent.cli", "status", "--json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
            check=False,
        )
    assert out.returncode == 2
    assert "not answering at http://127.0.0.1:9464/health" in out.stderr
