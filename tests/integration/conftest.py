"""Real peers for integration tests: Mosquitto brokers on free loopback ports, an MQTT
collector and device publisher (paho, threaded, independent of the agent's own MQTT code),
and the agent itself, in process or as a real `edgence-agent run` subprocess."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.attest.keys import GatewayKey, write_key_file
from agent.chainclient.anvil import LocalAnvil
from agent.config import AgentConfig, config_from_dict
from agent.localbroker import LocalMosquitto
from agent.runtime import Agent


@pytest.fixture
def local_broker(tmp_path: Path) -> Iterator[LocalMosquitto]:
    with LocalMosquitto(tmp_path / "mosq", name="local", persistence=True) as b:
        yield b


@pytest.fixture
def upstream_broker(tmp_path: Path) -> Iterator[LocalMosquitto]:
    with LocalMosquitto(tmp_path / "mosq", name="upstream", persistence=True) as b:
        yield b


def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def async_wait_until(
    pred: Callable[[], bool | Awaitable[bool]], limit: float, what: str
) -> None:
    """Poll `pred` (a plain or an async predicate) until it is true, or fail after `limit` s."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        got = pred()
        if got if isinstance(got, bool) else await got:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {limit}s waiting for {what}")


class JournalStall:
    """Stalls a running agent's journal for real: another connection takes sqlite's write lock,
    so the journal thread's next write waits in sqlite's busy handler (after 5 s it fails with
    SQLITE_BUSY, which the pipeline holds and retries). A stalled disk, which is what this
    stands for, cannot be produced on demand. `release()` ends the stall."""

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(path, isolation_level=None)
        self._conn.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        if self._conn.in_transaction:
            self._conn.rollback()
        self._conn.close()


_collector_ids = itertools.count()


class Collector:
    """Subscribes upstream (its own paho thread) and keeps every message in arrival order."""

    def __init__(self, port: int, topic: str = "edgence/#") -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self._subscribed = threading.Event()
        c = paho.Client(
            CallbackAPIVersion.VERSION2,
            # Unique per collector: two clients with one id would take each other's session.
            client_id=f"collector-{port}-{os.getpid()}-{next(_collector_ids)}",
            clean_session=False,
        )
        c.max_inflight_messages_set(0)
        c.on_connect = lambda cl, ud, fl, rc, pr: cl.subscribe(topic, 1)
        c.on_subscribe = lambda *a: self._subscribed.set()
        c.on_message = self._on_message
        c.reconnect_delay_set(1, 1)
        c.connect("127.0.0.1", port, 30)
        c.loop_start()
        self.client = c
        if not self._subscribed.wait(10):
            raise AssertionError("collector could not subscribe")

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def observations(self) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(p) for t, p, _ in self.messages if "/obs/" in t]

    def raw_observations(self) -> list[tuple[str, bytes]]:
        with self.lock:
            return [(t, p) for t, p, _ in self.messages if "/obs/" in t]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def collector(upstream_broker: LocalMosquitto) -> Iterator[Collector]:
    c = Collector(upstream_broker.port)
    yield c
    c.close()


class Device:
    """A device that publishes frames to the local broker with QoS 1 (its own paho thread)."""

    def __init__(self, port: int, client_id: str = "test-device") -> None:
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        c.max_inflight_messages_set(0)
        c.connect("127.0.0.1", port, 30)
        c.loop_start()
        self.client = c

    def publish(self, topic: str, payload: bytes, wait: bool = True) -> None:
        info = self.client.publish(topic, payload, qos=1)
        if wait:
            info.wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def device(local_broker: LocalMosquitto) -> Iterator[Device]:
    d = Device(local_broker.port)
    yield d
    d.close()


def agent_config_dict(
    local: LocalMosquitto, upstream: LocalMosquitto, **over: Any
) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "gateway": {"key_file": "gateway.key", "data_dir": "data", "chain_id": 31337},
        "sources": {"mqtt": {"url": local.url, "allowed_devices": ["dev-1", "dev-2", "dev-3"]}},
        "bridge": {"url": upstream.url},
        "log": {"level": "info"},
        # Tests push thousands of frames per device; the per-device limit has its own tests.
        "enrollment": {"rate": 100000, "burst": 1000000},
        # A free port per agent: several run at once here (tests, other work on the machine).
        "metrics": {"listen": "127.0.0.1:0"},
    }
    for section, values in over.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def write_agent_dir(path: Path, cfg: dict[str, Any]) -> tuple[Path, GatewayKey]:
    """A config dir as `init` would leave it: agent.toml + gateway.key (0600)."""
    path.mkdir(parents=True, exist_ok=True)
    key = GatewayKey.generate()
    write_key_file(path / "gateway.key", key)
    (path / "agent.toml").write_text(to_toml(cfg))
    return path / "agent.toml", key


def to_toml(d: dict[str, Any], prefix: str = "") -> str:
    """Just enough TOML for test configs (tables, strings, ints, bools, lists of strings)."""
    scalars, tables = [], []
    for k, v in d.items():
        if isinstance(v, dict):
            tables.append((k, v))
        else:
            scalars.append(f"{k} = {json.dumps(v)}")
    out = ""
    if prefix and scalars:
        out += f"[{prefix}]\n"
    out += "".join(s + "\n" for s in scalars)
    for k, v in tables:
        out += to_toml(v, f"{prefix}.{k}" if prefix else k)
    return out


class RunningAgent:
    """An in-process agent on the test's event loop."""

    def __init__(self, agent: Agent, task: asyncio.Task[None], stop: asyncio.Event) -> None:
        self.agent, self.task, self.stop_event = agent, task, stop

    async def stop(self) -> None:
        self.stop_event.set()
        await asyncio.wait_for(self.task, 10)


@pytest.fixture
async def start_agent(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    running: list[RunningAgent] = []

    async def start(
        cfg_dict: dict[str, Any],
        key: GatewayKey | None = None,
        name: str = "agent",
        **agent_kwargs: Any,
    ) -> RunningAgent:
        base = tmp_path / name
        base.mkdir(exist_ok=True)
        key = key or GatewayKey.generate()
        cfg: AgentConfig = config_from_dict(cfg_dict, str(base / "agent.toml"), base)
        agent = Agent(cfg, key, **agent_kwargs)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        ready = asyncio.create_task(agent.ready.wait())
        done, _ = await asyncio.wait({task, ready}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # raises the startup error
        assert ready in done, "agent not ready within 10 s"
        r = RunningAgent(agent, task, stop)
        running.append(r)
        return r

    yield start
    for r in running:
        if not r.task.done():
            await r.stop()


class AgentProcess:
    """`edgence-agent run --config FILE` as a real child process."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config, self.log = config, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_ready: bool = True) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent.cli", "run", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        if wait_ready:
            wait_until(
                lambda: (
                    self.log_text().count("event=ready") > self._readies
                    or self.proc is None
                    or self.proc.poll() is not None
                ),
                15,
                "agent ready",
            )
            assert self.proc is not None and self.proc.poll() is None, self.log_text()[-2000:]
            self._readies = self.log_text().count("event=ready")

    _readies = 0

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)


@pytest.fixture
def agent_process(tmp_path: Path) -> Iterator[Callable[[Path], AgentProcess]]:
    procs: list[AgentProcess] = []

    def make(config: Path) -> AgentProcess:
        p = AgentProcess(config, tmp_path / f"agent-{len(procs)}.log")
        procs.append(p)
        return p

    yield make
    for p in procs:
        p.kill()


# -- the full node: anvil (npm @foundry-rs/anvil) on a free loopback port ---------------------


@pytest.fixture(scope="session")
def contracts_built() -> Path:
    """The contract artifacts, built by solcjs (a no-op when scripts/test already did)."""
    from agent.chainclient.build import ARTIFACTS_DIR, build

    build()
    return ARTIFACTS_DIR


@pytest.fixture
def anvil(tmp_path: Path) -> Iterator[LocalAnvil]:
    """A fresh anvil (automine) on a free loopback port, stopped after the test."""
    with LocalAnvil(tmp_path / "anvil") as node:
        yield node


@pytest.fixture
def anvil_no_mining(tmp_path: Path) -> Iterator[LocalAnvil]:
    """anvil that mines only on evm_mine: transactions wait in its pool until the test mines."""
    with LocalAnvil(tmp_path / "anvil", mining=False) as node:
        yield node
