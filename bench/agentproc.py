"""The agent as a benchmark's child process: start `edgence-agent run`, wait for its ready line,
and read how much CPU a process has used."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def agent_cpus() -> set[int] | None:
    """The CPUs a benchmark pins the system under test to (`BENCH_AGENT_CPUS=1`, a comma list),
    so that CPU per observation is measured on one core; None: not pinned."""
    spec = os.environ.get("BENCH_AGENT_CPUS", "")
    return {int(c) for c in spec.split(",") if c.strip()} or None


def pin(pid: int = 0) -> None:
    """Pin a process (0: this one) to `agent_cpus()`, if set; threads started later inherit."""
    cpus = agent_cpus()
    if cpus is not None:
        os.sched_setaffinity(pid, cpus)


def spawn_agent(
    config: Path,
    log: Path,
    python_flags: tuple[str, ...] = (),
    source: Path | None = None,
    env_extra: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """`edgence-agent run --config <config>`, its output to `log`; returns at once. Pinned to
    `agent_cpus()` from its first instruction when BENCH_AGENT_CPUS is set. `source`: run the
    agent package found in that directory instead (another commit's tree, for before/after).
    `env_extra`: variables set for the agent only (e.g. EDGENCE_EVENT_LOOP)."""
    cpus = agent_cpus()
    env = dict(os.environ) | (env_extra or {})
    if source is not None:
        env["PYTHONPATH"] = str(source)
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, *python_flags, "-m", "agent.cli", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            # `python -m` puts the working directory first on sys.path, before PYTHONPATH
            cwd=source,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
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
