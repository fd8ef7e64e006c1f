"""Starts and stops the agent's components, restarts a failed one with backoff, handles signals.

Shutdown order keeps the no-loss promise: sources stop reading, the pipeline drains into the
journal, sources acknowledge and disconnect, the bridge gets a moment for in-flight PUBACKs and
persists its cursor, the journal closes. Everything not acknowledged upstream stays journaled.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from agent.attest.keys import GatewayKey, load_key_file
from agent.attest.observation import ObservationSigner
from agent.bridge import Bridge
from agent.config import AgentConfig
from agent.devices.ble import (
    BleBackend,
    BleDeviceDirectory,
    BleGate,
    BleSource,
    ConfiguredBleDevices,
    EnrolledBleDevices,
)
from agent.devices.gate import EnrollmentGate
from agent.devices.mqtt import MqttSource
from agent.devices.registry import DeviceRegistry
from agent.errors import AgentError, JournalError
from agent.journal import Journal, JournalStats
from agent.logs import event
from agent.metrics import Metrics
from agent.model import Eip712Domain, Transport
from agent.pipeline import DeviceGate, Pipeline, TransportGate
from agent.sdnotify import Watchdog, notify, watchdog_interval
from agent.secrets import check_secret_mode

if TYPE_CHECKING:
    from agent.telemetry import Telemetry

log = logging.getLogger("agent.runtime")
T = TypeVar("T")


def load_gateway_key(cfg: AgentConfig) -> GatewayKey:
    """The gateway key, refusing loose permissions; the passphrase comes from
    gateway.passphrase_file (also 0600) or the EDGENCE_KEY_PASSPHRASE environment variable."""
    passphrase = os.environ.get("EDGENCE_KEY_PASSPHRASE")
    pf = cfg.gateway.passphrase_file
    if pf is not None:
        check_secret_mode(pf)
        passphrase = pf.read_text(encoding="utf-8").rstrip("\r\n")
    return load_key_file(cfg.gateway.key_file, passphrase)


def domain_of(cfg: AgentConfig) -> Eip712Domain:
    g = cfg.gateway
    return Eip712Domain(g.domain_name, g.domain_version, g.chain_id, g.verifying_contract)


async def supervise(
    name: str, factory: Callable[[], Awaitable[None]], stopping: asyncio.Event, metrics: Metrics
) -> None:
    """Run a component; if it fails, log one line and restart it with backoff."""
    delay = 0.5
    while not stopping.is_set():
        started = time.monotonic()
        try:
            await factory()
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if stopping.is_set():
                return
            metrics.inc("component_restarts", component=name)
            if time.monotonic() - started > 60:
                delay = 0.5
            log.error(
                "event=component_failed component=%s error=%r restart_in=%.1fs",
                name,
                str(exc)[:200],
                delay,
                exc_info=exc,
            )
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, 30.0)


class Agent:
    """The whole agent, built from an AgentConfig. `await agent.run(stop_event)`."""

    def __init__(
        self,
        cfg: AgentConfig,
        key: GatewayKey | None = None,
        *,
        ble_backend: BleBackend | None = None,
        ble_devices: BleDeviceDirectory | None = None,
    ) -> None:
        self.cfg = cfg
        self.key = key if key is not None else load_gateway_key(cfg)
        self.metrics = Metrics()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="journal")
        self.journal = Journal(
            cfg.journal.path,
            sinks=["bridge"],
            synchronous=cfg.journal.synchronous,
            max_bytes=cfg.journal.max_bytes,
            max_age_s=cfg.journal.max_age_s,
            overflow=cfg.journal.overflow,
            logger=logging.getLogger("agent.journal"),
        )
        self.signer = ObservationSigner(self.key, domain_of(cfg))
        enr = cfg.enrollment
        self.registry = (
            DeviceRegistry(enr.registry_dir) if enr is not None and enr.enabled else None
        )
        self.gate = EnrollmentGate(
            self.registry,
            allowlist=cfg.mqtt.allowed_devices,
            rate=enr.rate if enr is not None else 10.0,
            burst=enr.burst if enr is not None else 20.0,
            metrics=self.metrics,
        )
        gate: DeviceGate = self.gate
        if cfg.ble.enabled:
            if ble_devices is None:
                configured = ConfiguredBleDevices(cfg.ble.devices)
                ble_devices = (
                    EnrolledBleDevices(configured, self.gate)
                    if self.registry is not None
                    else configured
                )
            gate = TransportGate({Transport.BLE: BleGate(ble_devices, self.gate)}, gate)
        self.pipeline = Pipeline(
            signer=self.signer,
            journal=self.journal,
            executor=self.executor,
            gate=gate,
            metrics=self.metrics,
            queue_size=cfg.pipeline.queue_size,
            batch_max=cfg.pipeline.batch_max,
            linger=cfg.pipeline.linger_s,
        )
        self.bridge: Bridge | None = None
        if cfg.bridge.enabled:
            self.bridge = Bridge(
                cfg.bridge,
                journal=self.journal,
                executor=self.executor,
                gateway=self.key.address,
                metrics=self.metrics,
            )
            self.pipeline.add_sink(self.bridge.offer)
        self.mqtt: MqttSource | None = None
        if cfg.mqtt.enabled:
            self.mqtt = MqttSource(
                cfg.mqtt,
                pipeline=self.pipeline,
                metrics=self.metrics,
                client_id=f"edgence-{self.key.address[2:14]}-devices",
            )
        self.ble: BleSource | None = None
        if cfg.ble.enabled:
            assert ble_devices is not None
            self.ble = BleSource(
                cfg.ble,
                pipeline=self.pipeline,
                metrics=self.metrics,
                directory=ble_devices,
                backend=ble_backend,
            )
        self.ready = asyncio.Event()
        self.started_at = time.monotonic()
        self.watchdog = Watchdog(watchdog_interval())
        self.telemetry: Telemetry | None = None
        if cfg.metrics.enabled:
            from agent.telemetry import Telemetry  # prometheus-client only when used

            self.telemetry = Telemetry(self)

    async def _in_journal_thread(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn)

    async def in_journal_thread(self, fn: Callable[[], T]) -> T:
        """Run `fn` in the journal's thread (the only thread that touches sqlite)."""
        return await self._in_journal_thread(fn)

    async def _maintain_journal(self, every: float = 10.0, stats_every: int = 6) -> None:
        """Enforce the journal's bounds every `every` seconds and log one stats line every
        `stats_every` rounds (the operator's heartbeat in journald)."""
        rounds = 0
        while True:
            await asyncio.sleep(every)
            rounds += 1
            try:
                await self._in_journal_thread(self.journal.enforce_bounds)
                if rounds % stats_every == 0:
                    st = await self._in_journal_thread(self.journal.stats)
                    self._log_stats(st)
            except JournalError as exc:  # e.g. a full disk: retried next round
                event(log, "journal_maintenance_failed", logging.ERROR, error=str(exc))

    def _log_stats(self, st: JournalStats) -> None:
        m = self.metrics
        event(
            log,
            "stats",
            signed=m.get("observations_signed"),
            delivered=m.get("observations_delivered"),
            rejected=m.get("frames_rejected"),
            journal_entries=st.entries,
            journal_bytes=st.bytes,
            backlog=st.backlog.get("bridge", 0),
            upstream="up" if self.bridge and self.bridge.conn.connected.is_set() else "down",
        )

    async def _announce_ready(self, started: float) -> None:
        if self.mqtt is not None:
            await self.mqtt.ready.wait()
        if self.ble is not None:
            await self.ble.ready.wait()
        self.ready.set()
        notify("STATUS=ready: sources subscribed")
        event(
            log,
            "ready",
            gateway=self.key.address,
            ready_ms=int((time.monotonic() - started) * 1000),
            sources=",".join(s for s, on in (("mqtt", self.mqtt), ("ble", self.ble)) if on)
            or "none",
            upstream=self.cfg.bridge.broker.url if self.bridge else "disabled",
        )

    async def run(self, stop: asyncio.Event) -> None:
        started = self.started_at = time.monotonic()
        data_dir = self.cfg.gateway.data_dir
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        Path(self.cfg.journal.path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            await self._in_journal_thread(self.journal.open)
        except Exception:
            self.executor.shutdown(wait=False)
            raise
        await self.pipeline.load_state()
        await asyncio.get_running_loop().run_in_executor(None, self.gate.load)
        event(
            log,
            "starting",
            gateway=self.key.address,
            chain_id=self.cfg.gateway.chain_id,
            journal=str(self.cfg.journal.path),
            journal_max_bytes=self.cfg.journal.max_bytes,
            journal_max_age_s=int(self.cfg.journal.max_age_s),
            journal_overflow=self.cfg.journal.overflow,
            journal_synchronous=self.cfg.journal.synchronous,
        )
        stopping = asyncio.Event()
        m = self.metrics
        tasks = [
            asyncio.create_task(supervise("pipeline", self.pipeline.run, stopping, m)),
            asyncio.create_task(self._maintain_journal()),
            asyncio.create_task(supervise("registry", self.gate.run, stopping, m)),
        ]
        if self.bridge is not None:
            tasks.append(asyncio.create_task(supervise("bridge", self.bridge.run, stopping, m)))
        if self.mqtt is not None:
            tasks.append(asyncio.create_task(supervise("mqtt", self.mqtt.run, stopping, m)))
        if self.ble is not None:
            tasks.append(asyncio.create_task(supervise("ble", self.ble.run, stopping, m)))
        if self.telemetry is not None:
            tasks.append(
                asyncio.create_task(supervise("telemetry", self.telemetry.run, stopping, m))
            )
        tasks.append(asyncio.create_task(self._announce_ready(started)))
        # READY=1 once the journal is open and every component is supervised, not when the
        # local broker answers: a broker that is down is retried by the agent itself, and
        # systemd would otherwise kill and restart a healthy agent at TimeoutStartSec.
        notify("READY=1", "STATUS=started: waiting for the sources to subscribe")
        self.watchdog.start()
        try:
            await stop.wait()
        finally:
            stopping.set()
            notify("STOPPING=1", "STATUS=stopping: draining into the journal")
            await self._shutdown(tasks)

    async def _shutdown(self, tasks: list[asyncio.Task[None]]) -> None:
        t0 = time.monotonic()
        if self.mqtt is not None:
            self.mqtt.conn.pause_reading()
        if self.ble is not None:
            await self.ble.stop()
        drained = await self.pipeline.drain(grace=0.8)
        if self.mqtt is not None:
            await self.mqtt.stop()
        if self.bridge is not None:
            await self.bridge.stop(grace=0.6)
        try:
            await self.gate.flush_activations()
        except AgentError as exc:
            event(log, "registry_error", logging.ERROR, error=str(exc))
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._in_journal_thread(self.journal.close)
        self.executor.shutdown(wait=True)
        self.watchdog.stop()
        event(
            log,
            "stopped",
            drained=drained,
            shutdown_ms=int((time.monotonic() - t0) * 1000),
            signed=self.metrics.get("observations_signed"),
            delivered=self.metrics.get("observations_delivered"),
        )


async def run_until_signalled(agent: Agent) -> None:
    """Run the agent until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await agent.run(stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


__all__ = ["Agent", "AgentError", "load_gateway_key", "run_until_signalled"]
