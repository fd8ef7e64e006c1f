"""`status` and `doctor` show only this gateway's health document: when metrics.listen is held by
another edgence-agent (of another gateway) or by another program, they say so instead of reading
that document as this agent's. Real agent processes and a real HTTP server hold the port."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.localbroker import LocalMosquitto, free_port
from tests.integration.conftest import AgentProcess, agent_config_dict, write_agent_dir


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def line_of(out: str, name: str) -> str:
    return next(x for x in out.splitlines() if x[6:].startswith(name + " "))


@pytest.fixture
def foreign_program(tmp_path: Path) -> Iterator[int]:
    """Another program on a port: it answers GET /health with a JSON document of its own."""
    port = free_port()
    server = tmp_path / "other.py"
    server.write_text(
        "import http.server, sys\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        '        body = b\'{"status": "ok", "ready": true}\'\n'
        "        self.send_response(200)\n"
        "        self.send_header('Content-Type', 'application/json')\n"
        "        self.send_header('Content-Length', str(len(body)))\n"
        "        self.end_headers()\n"
        "        self.wfile.write(body)\n"
        "    def log_message(self, *a): pass\n"
        "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n"
    )
    proc = subprocess.Popen([sys.executable, str(server), str(port)], stdin=subprocess.DEVNULL)
    try:
        import socket
        import time

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def gateway_config(
    tmp_path: Path, name: str, local: LocalMosquitto, upstream: LocalMosquitto, port: int
) -> tuple[Path, str]:
    cfg: dict[str, Any] = agent_config_dict(
        local, upstream, metrics={"listen": f"127.0.0.1:{port}"}
    )
    path, key = write_agent_dir(tmp_path / name, cfg)
    return path, key.address


def test_status_and_doctor_refuse_another_gateways_health_document(
    tmp_path: Path,
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    agent_process: Any,
) -> None:
    port = free_port()
    other, other_gw = gateway_config(tmp_path, "other", local_broker, upstream_broker, port)
    mine, my_gw = gateway_config(tmp_path, "mine", local_broker, upstream_broker, port)
    running: AgentProcess = agent_process(other)
    running.start()
    # the agent of `other` answers with its own document
    assert other_gw in cli("status", "--config", str(other), "--json").stdout
    out = cli("status", "--config", str(mine), "--once")
    assert out.returncode != 0
    assert other_gw not in out.stdout
    assert f"health of gateway {other_gw}, not of this config's {my_gw}" in out.stderr
    doc = cli("doctor", "--config", str(mine))
    line = line_of(doc.stdout, "agent")
    assert line.startswith("FAIL  agent"), line
    assert "another agent holds metrics.listen" in line and f":{port}" in line


def test_status_and_doctor_say_when_another_program_holds_the_port(
    tmp_path: Path,
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    foreign_program: int,
) -> None:
    mine, _ = gateway_config(tmp_path, "mine", local_broker, upstream_broker, foreign_program)
    out = cli("status", "--config", str(mine), "--once")
    assert out.returncode != 0
    assert "another program holds the port" in out.stderr
    doc = cli("doctor", "--config", str(mine))
    assert doc.stdout, doc.stderr  # the report, never only a traceback
    line = line_of(doc.stdout, "agent")
    assert line.startswith("FAIL  agent"), line
    assert "another program holds the port" in line
    assert f"ss -ltnp 'sport = :{foreign_program}'" in line
