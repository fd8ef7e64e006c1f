"""The supervisor (agent/runtime.py) and the component list wiring builds (agent/wiring.py)."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

from agent.attest.keys import GatewayKey
from agent.backoff import Backoff
from agent.component import Component, Health, Source
from agent.config import config_from_dict
from agent.metrics import Metrics
from agent.runtime import supervise
from agent.wiring import build

ROOT = Path(__file__).resolve().parents[2]


class Flaky:
    """A component whose run() fails `failures` times, then serves until stopped."""

    name = "flaky"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.runs = 0
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()

    async def run(self) -> None:
        self.runs += 1
        if self.runs <= self.failures:
            raise RuntimeError(f"failure {self.runs}")
        self.ready.set()
        await self._stop.wait()

    async def stop(self, grace: float) -> None:
        self._stop.set()

    def health(self) -> Health:
        return Health("up" if self.ready.is_set() else "starting")


async def test_a_failing_component_is_restarted_with_backoff_and_counted() -> None:
    c = Flaky(failures=3)
    assert isinstance(c, Component)
    metrics = Metrics()
    backoff = Backoff(0.001, 0.004, jitter=0.0)
    task = asyncio.create_task(supervise(c, asyncio.Event(), metrics, backoff))
    await asyncio.wait_for(c.ready.wait(), 5)
    assert c.runs == 4 and backoff.failures == 3
    assert metrics.get("component_restarts", component="flaky") == 3
    await c.stop(0)
    await asyncio.wait_for(task, 5)  # run() returned after stop(): the supervisor ends too


async def test_a_failure_while_stopping_is_not_restarted() -> None:
    c = Flaky(failures=1)
    stopping = asyncio.Event()
    stopping.set()
    metrics = Metrics()
    await asyncio.wait_for(supervise(c, stopping, metrics, Backoff()), 5)
    assert c.runs == 0 and metrics.get("component_restarts") == 0


def test_wiring_orders_the_pipeline_after_the_sources_and_sources_are_sources(
    tmp_path: Path,
) -> None:
    cfg = config_from_dict(
        {
            "gateway": {"key_file": "k", "data_dir": str(tmp_path)},
            "sources": {
                "mqtt": {"url": "mqtt://127.0.0.1:1"},
                "coap": {"enabled": True, "port": 5999},
                "serial": {"ports": [{"path": str(tmp_path / "tty"), "device": "s-1"}]},
            },
            "bridge": {"url": "mqtt://127.0.0.1:2"},
            "metrics": {"listen": "127.0.0.1:0"},
        },
        str(tmp_path / "agent.toml"),
        tmp_path,
    )
    parts = build(cfg, GatewayKey.generate())
    names = [c.name for c in parts.components]
    sources = ["mqtt", "coap", "serial"]
    assert names == ["registry", "journal", "bridge", *sources, "pipeline", "telemetry"]
    for c in parts.components:
        assert isinstance(c, Component), c.name
    assert [c.name for c in parts.components if isinstance(c, Source)] == sources


def test_no_module_imports_the_runtime_but_the_cli() -> None:
    """Components know the interface, not the runtime (the telemetry <-> runtime circle)."""
    offenders = []
    for path in (ROOT / "agent").rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        if rel == "agent/runtime.py" or "/cli" in rel or rel.endswith(("cli.py", "demo.py")):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "agent.runtime":
                offenders.append(rel)
    assert offenders == []
