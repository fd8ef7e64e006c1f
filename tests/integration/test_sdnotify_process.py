"""A real `edgence-agent run` process tells systemd's notify socket READY=1, pings the watchdog
and says STOPPING=1 on SIGTERM: the protocol Type=notify and WatchdogSec= rely on."""

from __future__ import annotations

import os
import signal
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.localbroker import LocalMosquitto

from .conftest import AgentProcess, agent_config_dict, write_agent_dir


def test_agent_process_notifies_ready_watchdog_and_stopping(
    tmp_path: Path,
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    agent_process: Callable[[Path], AgentProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    d = tempfile.mkdtemp(prefix="sdn-", dir="/tmp")
    path = os.path.join(d, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(15)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        monkeypatch.setenv("WATCHDOG_USEC", "200000")  # ping every 0.1 s
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        config, _ = write_agent_dir(
            tmp_path / "gw", agent_config_dict(local_broker, upstream_broker)
        )
        proc = agent_process(config)
        proc.start()
        seen: list[str] = []
        while seen.count("WATCHDOG=1") < 3:
            seen.extend(sock.recv(4096).decode().split("\n"))
        assert "READY=1" in seen
        assert seen.index("READY=1") < seen.index("WATCHDOG=1")
        proc.signal(signal.SIGTERM)
        while "STOPPING=1" not in seen:
            seen.extend(sock.recv(4096).decode().split("\n"))
        assert proc.wait(15) == 0
        assert "event=stopped" in proc.log_text()
    finally:
        sock.close()
        os.unlink(path)
        os.rmdir(d)
