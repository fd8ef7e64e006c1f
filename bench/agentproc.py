"""The agent as a benchmark's child process: start `edgence-agent run`, wait for its ready line,
and read how much CPU a process has used."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def spawn_agent(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """`edgence-agent run --config <config>`, its output to `log`; returns at once."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_ready(proc: subprocess.Popen[bytes], log: Path, limit: float = 30.0) -> None:
    """Until the agent logs `event=ready`; raises with the log's tail if it exits or takes
    longer than `limit` seconds."""
    t0 = time.monotonic()
    while "event=ready" not in log.read_text():
        if proc.poll() is not None or time.monotonic() - t0 > limit:
            raise RuntimeError("agent did not start: " + log.read_text()[-2000:])
        time.sleep(0.005)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
