"""Supervises the agent's components: runs each in a task, restarts a failed one with backoff,
says when all are ready, and stops them in reverse order on a signal.

What runs is decided once by agent/wiring.py; this module knows only the Component interface
(agent/component.py). Shutdown keeps the no-loss promise: every source pauses its intake, then
the components stop in reverse start order, so the pipeline drains into the journal before the
sources acknowledge and disconnect, and the bridge gets a moment for in-flight PUBACKs before
the journal closes. Everything not acknowledged upstream stays journaled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

from agent.attest.keys import GatewayKey
from agent.backoff import Backoff
from agent.component import Component, Source
from agent.config import AgentConfig
from agent.datalock import DataDirLock
from agent.errors import AgentError
from agent.logs import event
from agent.metrics import Metrics
from agent.sdnotify import Watchdog, notify, watchdog_interval
from agent.wiring import Parts, build, domain_of, load_gateway_key

if TYPE_CHECKING:
    from agent.devices.ble import BleBackend
    from agent.devices.bledevices import BleDeviceDirectory

log = logging.getLogger("agent.runtime")

STOP_GRACE = {"pipeline": 0.8, "bridge": 0.6}  # s; others get DEFAULT_GRACE
DEFAULT_GRACE = 0.5


async def supervise(
    component: Component, stopping: asyncio.Event, metrics: Metrics, backoff: Backoff
) -> None:
    """Run a component; if it fails, log one line and restart it with backoff."""
    while not stopping.is_set():
        try:
            await component.run()
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if stopping.is_set():
                return
            metrics.inc("component_restarts", component=component.name)
            delay = backoff.next_delay()
            log.error(
                "event=component_failed component=%s error=%r restart_in=%.1fs",
                component.name,
                str(exc)[:200],
                delay,
                exc_info=exc,
            )
            await asyncio.sleep(delay)


class Agent(Parts):
    """The whole agent, built from an AgentConfig. `await agent.run(stop_event)`."""

    def __init__(
        self,
        cfg: AgentConfig,
        key: GatewayKey | None = None,
        *,
        ble_backend: BleBackend | None = None,
        ble_devices: BleDeviceDirectory | None = None,
    ) -> None:
        parts = build(
            cfg,
            key if key is not None else load_gateway_key(cfg),
            ble_backend=ble_backend,
            ble_devices=ble_devices,
        )
        super().__init__(**vars(parts))
        self.watchdog = Watchdog(watchdog_interval())
        self.lock = DataDirLock(cfg.gateway.data_dir)

    async def _announce_ready(self, components: list[Component]) -> None:
        for c in components:
            await c.ready.wait()
        self.ready.set()
        notify("STATUS=ready: sources subscribed")
        event(
            log,
            "ready",
            gateway=self.key.address,
            ready_ms=int((time.monotonic() - self.started_at) * 1000),
            sources=",".join(s.name for s in self.sources) or "none",
            upstream=self.cfg.bridge.broker.url if self.bridge else "disabled",
            chain=self.cfg.chain.rpc_url if self.rpc else "disabled",
            components=",".join(c.name for c in components),
        )

    async def _open(self) -> None:
        data_dir = self.cfg.gateway.data_dir
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.lock.acquire()  # before anything in the data directory is opened
        loop = asyncio.get_running_loop()
        try:
            Path(self.cfg.journal.path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            await self.journal.open()  # its thread starts here; closed last in _shutdown
            await self.pipeline.load_state()
            await loop.run_in_executor(None, self.gate.load)
        except BaseException:
            try:
                await self.journal.close()
            finally:
                self.lock.release()
            raise
        j = self.cfg.journal
        event(
            log,
            "starting",
            gateway=self.key.address,
            chain_id=self.cfg.gateway.chain_id,
            journal=str(j.path),
            journal_max_bytes=j.max_bytes,
            journal_max_age_s=int(j.max_age_s),
            journal_overflow=j.overflow,
            journal_synchronous=j.synchronous,
        )

    async def run(self, stop: asyncio.Event) -> None:
        self.started_at = time.monotonic()
        await self._open()
        components = self.components
        stopping = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(
                    supervise(c, stopping, self.metrics, Backoff(0.5, 30.0)), name=c.name
                )
                for c in components
            ]
            tasks.append(tg.create_task(self._announce_ready(components)))
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
                await self._shutdown(components, tasks)

    async def _shutdown(self, components: list[Component], tasks: list[asyncio.Task[None]]) -> None:
        t0 = time.monotonic()
        for c in components:
            if isinstance(c, Source):
                c.pause_intake()
        for c in reversed(components):
            try:
                await c.stop(STOP_GRACE.get(c.name, DEFAULT_GRACE))
            except AgentError as exc:
                event(log, "stop_failed", logging.ERROR, component=c.name, error=str(exc))
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.rpc is not None:
            await self.rpc.close()
        await self.journal.close()
        self.lock.release()
        self.watchdog.stop()
        event(
            log,
            "stopped",
            drained=self.pipeline.drained,
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
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)


__all__ = ["Agent", "AgentError", "domain_of", "load_gateway_key", "run_until_signalled"]
