"""What the agent says about itself: the health JSON (for `status`, /health and the retained
upstream health topic) and the loopback HTTP endpoint serving it and Prometheus' /metrics.

Everything is read at scrape time from agent/metrics.py's counters and gauges, from the
journal's stats and from each component's own `health()` (agent/component.py): every source and
service appears with its own state without this module naming any of them. The ingest path does
no extra work for it. The HTTP server is a minimal HTTP/1.0 responder on the agent's own event
loop (no thread, no framework); /metrics' document is agent/prometheus.py's, loaded at the first
scrape.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.component import Component, Detail, Health
from agent.journal import JournalStats
from agent.logs import event
from agent.metrics import Metrics

if TYPE_CHECKING:
    from agent.prometheus import PrometheusText
    from agent.wiring import Parts

log = logging.getLogger("agent.telemetry")

HEALTH_VERSION = 1
# What /metrics says it is: the classic text format generate_latest writes (names escaped to
# underscores), which every Prometheus version reads (newer clients default to "version=1.0.0").
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class HealthSampler:
    """Keeps (time, signed) samples so that health can say readings per second over the last
    minute; sampled every `every` seconds with loop.call_at (no sleeping task)."""

    def __init__(self, metrics: Metrics, every: float = 5.0, window: float = 60.0) -> None:
        self.metrics = metrics
        self.every = every
        self._samples: deque[tuple[float, int]] = deque(maxlen=max(2, int(window / every) + 1))
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self._handle is None:
            self._sample()

    def _sample(self) -> None:
        self._samples.append((time.monotonic(), self.metrics.get("observations_signed")))
        loop = asyncio.get_running_loop()
        self._handle = loop.call_at(loop.time() + self.every, self._sample)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def per_second(self) -> float:
        if not self._samples:
            return 0.0
        t0, n0 = self._samples[0]
        dt = time.monotonic() - t0
        return (self.metrics.get("observations_signed") - n0) / dt if dt > 0.5 else 0.0


def devices_by_source(agent: Parts) -> dict[str, int]:
    devices: dict[str, int] = {}
    for source in agent.pipeline.device_sources.values():
        devices[source] = devices.get(source, 0) + 1
    return devices


def component_health(c: Component) -> Health:
    """The component's report; one that raises (it must not) reads as down, with the error."""
    try:
        return c.health()
    except Exception as exc:  # a report must never take the health document down with it
        return Health("down", {"error": f"health() failed: {exc}"[:200]})


def build_health(agent: Parts, stats: JournalStats, per_second: float) -> dict[str, Any]:
    """The health document: what `status --json` prints and the health topic carries."""
    m = agent.metrics
    gauges = m.gauges()
    facts = m.facts()
    devices = devices_by_source(agent)
    source_names = {s.name for s in agent.sources}
    sources: dict[str, Any] = {}
    components: dict[str, Any] = {}
    for c in agent.components:
        report = component_health(c).as_dict()
        if c.name in source_names:
            sources[c.name] = {**report, "devices": devices.get(c.name, 0)}
        else:
            components[c.name] = report
    for source, count in devices.items():  # e.g. readings a test offered to the pipeline
        sources.setdefault(source, {"devices": count})
    bridge = agent.bridge
    height = gauges.get("chain_height")
    enrolled = gauges.get("devices_enrolled")
    return {
        "v": HEALTH_VERSION,
        "gateway": agent.key.address,
        "agent": f"edgence-agent/{__version__}",
        "ts": int(time.time()),
        "uptime_s": round(time.monotonic() - agent.started_at, 1),
        "ready": agent.ready.is_set(),
        "sources": sources,
        "components": components,
        "devices": {
            "heard": len(agent.pipeline.device_sources),
            "enrolled": None if enrolled is None else int(enrolled),
        },
        "readings": {
            "signed": m.get("observations_signed"),
            "per_s": round(per_second, 2),
            "queued": int(gauges.get("pipeline_queue", 0)),
        },
        "rejected": dict(sorted(m.by_label("frames_rejected", "reason").items())),
        "journal": {
            "entries": stats.entries,
            "bytes": stats.bytes,
            "backlog": stats.backlog.get("bridge", 0),
            "last_seq": stats.last_seq,
            "errors": m.get("journal_errors"),
        },
        "upstream": {
            "enabled": bridge is not None,
            "url": agent.cfg.bridge.broker.url if bridge is not None else None,
            "connected": bridge is not None and bridge.conn.connected.is_set(),
            "delivered": m.get("observations_delivered"),
            "inflight": bridge.in_flight if bridge is not None else 0,
            "refused": m.get("bridge_refused"),
        },
        "chain": {"height": None if height is None else int(height)},
        "election": {"role": facts.get("election_role")},
        "restarts": dict(sorted(m.by_label("component_restarts", "component").items())),
    }


class Telemetry:
    """The loopback HTTP endpoint (/metrics, /health) and the periodic retained health message
    upstream. `await run()` until stopped; `port` is the bound port (config may say 0)."""

    name = "telemetry"
    MAX_REQUEST = 8192
    # How long the first health message waits for the agent to become ready once the upstream
    # link is up: the sources usually subscribe within moments, and a first retained document
    # saying "ready": false for that moment misleads whoever reads it.
    READY_GRACE_S = 5.0

    def __init__(self, agent: Parts) -> None:
        self.agent = agent
        self.cfg = agent.cfg.metrics
        self.sampler = HealthSampler(agent.metrics)
        self.prometheus: PrometheusText | None = None  # built at the first scrape
        self.port: int | None = None
        self.listening = asyncio.Event()
        self.ready = asyncio.Event()
        self.health_published = 0
        self._stop = asyncio.Event()

    async def _stats(self) -> JournalStats:
        return await self.agent.journal.stats()

    async def health_document(self) -> dict[str, Any]:
        return build_health(self.agent, await self._stats(), self.sampler.per_second())

    def health(self) -> Health:
        """This component's own report (the document is `health_document()`)."""
        up = self.port is not None and self.listening.is_set()
        detail: dict[str, Detail] = {"url": f"http://{self.cfg.host}:{self.port}" if up else None}
        return Health("up" if up else "down", detail)

    async def stop(self, grace: float = 0.5) -> None:
        self._stop.set()

    async def metrics_text(self) -> bytes:
        if self.prometheus is None:
            # prometheus-client is imported here, off the loop, the first time anyone scrapes.
            self.prometheus = await asyncio.to_thread(_prometheus_text, self.agent)
        return self.prometheus.render(await self._stats())

    async def run(self) -> None:
        self.sampler.start()
        server = await asyncio.start_server(
            self._serve, self.cfg.host, self.cfg.port, limit=self.MAX_REQUEST
        )
        try:
            self.port = int(server.sockets[0].getsockname()[1])
            self.listening.set()
            self.ready.set()
            event(log, "metrics_listening", url=f"http://{self.cfg.host}:{self.port}/metrics")
            publisher = asyncio.create_task(self._publish_health_forever())
            try:
                await self._stop.wait()
            finally:
                publisher.cancel()
                await asyncio.gather(publisher, return_exceptions=True)
        finally:
            self.sampler.stop()
            self.listening.clear()
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)

    async def _publish_health_forever(self) -> None:
        bridge = self.agent.bridge
        if bridge is None:  # no upstream: the endpoint alone
            await asyncio.Event().wait()
            return
        ready = self.agent.ready
        interval = self.cfg.health_interval_s
        while True:
            # The first message goes out as soon as the link is up and the agent is ready (or
            # after READY_GRACE_S without), then every interval, and at once when it becomes
            # ready.
            await bridge.conn.connected.wait()
            if not ready.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ready.wait(), min(interval, self.READY_GRACE_S))
            payload = json.dumps(await self.health_document(), separators=(",", ":")).encode()
            if bridge.publish_retained("health", payload):
                self.health_published += 1
            if ready.is_set():
                await asyncio.sleep(interval)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ready.wait(), interval)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, ctype, body = await asyncio.wait_for(self._respond(reader), 5.0)
        except (TimeoutError, ValueError, ConnectionError, asyncio.IncompleteReadError):
            status, ctype, body = "400 Bad Request", "text/plain", b"bad request\n"
        head = (
            f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        with contextlib.suppress(ConnectionError):
            writer.write(head.encode() + body)
            await writer.drain()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[str, str, bytes]:
        request = await reader.readuntil(b"\r\n\r\n")  # LimitOverrunError is a ValueError
        parts = request.split(b"\r\n", 1)[0].split()
        if len(parts) != 3 or parts[0] != b"GET":
            return "405 Method Not Allowed", "text/plain", b"GET /metrics or /health\n"
        path = parts[1].split(b"?", 1)[0]
        if path == b"/metrics":
            return "200 OK", CONTENT_TYPE, await self.metrics_text()
        if path == b"/health":
            body = json.dumps(await self.health_document(), indent=1).encode() + b"\n"
            return "200 OK", "application/json", body
        return "404 Not Found", "text/plain", b"GET /metrics or /health\n"


def _prometheus_text(agent: Parts) -> PrometheusText:
    from agent.prometheus import PrometheusText

    return PrometheusText(agent)
