"""The Prometheus text endpoint's document (/metrics): agent/metrics.py's counters and gauges,
the journal's stats and every component's health, read at scrape time.

Imported by agent/telemetry.py at the first scrape, not at start: prometheus-client and what it
imports (http.server, wsgiref, gzip: about 1.5 MB resident) stay out of an agent nobody scrapes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from agent import __version__
from agent.component import Component
from agent.journal import JournalStats
from agent.telemetry import component_health, devices_by_source

if TYPE_CHECKING:
    from agent.wiring import Parts

PREFIX = "edgence_"

# HELP texts of the counters and gauges the agent keeps; a name missing here (a component added
# later) is still exported, with a generic help text. docs/operations.md lists them all.
COUNTER_HELP = {
    "observations_signed": "readings signed and committed to the journal (accepted)",
    "observations_delivered": "observations acknowledged (PUBACK) by the upstream broker",
    "frames_rejected": "frames or readings refused, by reason and source",
    "journal_errors": "journal write errors (each held batch retry counts once)",
    "bridge_refused": "observations an MQTT 5 upstream broker refused (republished later)",
    "component_restarts": "components restarted by the supervisor after a failure",
    "source_paused": "times a source paused reading because the pipeline queue was full",
    "devices_activated": "enrolled devices whose first authenticated frame arrived",
    "registry_errors": "device registry reads or writes that failed",
    "counter_resets": "device counters forgotten on an operator's `devices reset-counter`",
    "coap_peer_limited": "CoAP requests answered 4.29 unread: their peer was over its refusals",
}
GAUGE_HELP = {
    "pipeline_queue": "readings waiting to be signed",
    "bridge_inflight": "PUBLISHes awaiting PUBACK upstream",
    "bridge_connected": "1 when the upstream link is up",
    "frames_received_mqtt": "MQTT messages received from the local broker since start",
    "chain_height": "latest block height seen from the full node",
    "devices_enrolled": "devices in the registry (enrolled with `edgence-agent pair`)",
}


STATES = ("starting", "up", "degraded", "down", "stopped")


def component_metrics(components: list[Component]) -> Iterator[Metric]:
    """`edgence_component_state{component,state}` (1 for the current state, as Prometheus
    enums are exported), `edgence_component_part_up{component,part}`, and each numeric health
    detail as `edgence_component_detail{component,key}`."""
    state = Metric(
        PREFIX + "component_state", "each component's state (1: the current one)", "gauge"
    )
    part = Metric(PREFIX + "component_part_up", "1 when a component's part is up", "gauge")
    detail = Metric(PREFIX + "component_detail", "numeric facts components report", "gauge")
    for c in components:
        h = component_health(c)
        for st in STATES:
            state.add_sample(
                PREFIX + "component_state", {"component": c.name, "state": st}, float(h.state == st)
            )
        for name, p in h.parts.items():
            part.add_sample(
                PREFIX + "component_part_up",
                {"component": c.name, "part": name},
                float(p.state == "up"),
            )
        for key, value in h.detail.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                detail.add_sample(
                    PREFIX + "component_detail", {"component": c.name, "key": key}, float(value)
                )
    yield from (state, part, detail)


class AgentCollector(Collector):
    """Exports agent/metrics.py's counters and gauges plus the last journal stats, read when
    Prometheus scrapes (the endpoint refreshes `stats` just before it calls generate_latest)."""

    def __init__(self, agent: Parts) -> None:
        self.agent = agent
        self.stats: JournalStats | None = None

    def collect(self) -> Iterator[Metric]:
        m = self.agent.metrics
        families: dict[str, Metric] = {}
        for name, labels, value in m.counters():
            fam = families.get(name)
            if fam is None:
                help_text = COUNTER_HELP.get(name, f"edgence-agent counter {name}")
                fam = families[name] = Metric(PREFIX + name, help_text, "counter")
            fam.add_sample(f"{PREFIX}{name}_total", labels, float(value))
        yield from families.values()
        for name, level in m.gauges().items():
            g = Metric(PREFIX + name, GAUGE_HELP.get(name, f"edgence-agent gauge {name}"), "gauge")
            g.add_sample(PREFIX + name, {}, level)
            yield g
        info = Metric(PREFIX + "agent", "the agent's version and gateway address", "info")
        info.add_sample(
            PREFIX + "agent_info", {"version": __version__, "gateway": self.agent.key.address}, 1.0
        )
        yield info
        up = Metric(PREFIX + "uptime_seconds", "seconds since the agent started", "gauge")
        up.add_sample(PREFIX + "uptime_seconds", {}, time.monotonic() - self.agent.started_at)
        yield up
        yield from component_metrics(self.agent.components)
        devices = devices_by_source(self.agent)
        dev = Metric(PREFIX + "devices", "devices accepted since start, by source", "gauge")
        for source, count in sorted(devices.items()):
            dev.add_sample(PREFIX + "devices", {"source": source}, float(count))
        yield dev
        role = m.facts().get("election_role")
        if role is not None:
            r = Metric(PREFIX + "election_role", "this node's role in the election", "gauge")
            r.add_sample(PREFIX + "election_role", {"role": role}, 1.0)
            yield r
        st = self.stats
        if st is not None:
            for name, help_text, value in (
                ("journal_entries", "observations stored in the journal", st.entries),
                ("journal_bytes", "bytes the journal counts against journal.max_bytes", st.bytes),
                (
                    "journal_backlog",
                    "journaled observations not yet acknowledged upstream",
                    st.backlog.get("bridge", 0),
                ),
                ("journal_last_sequence", "the newest gateway sequence", st.last_seq),
            ):
                g = Metric(PREFIX + name, help_text, "gauge")
                g.add_sample(PREFIX + name, {}, float(value))
                yield g
        free = disk_free(self.agent.cfg.journal.path.parent)
        if free is not None:
            g = Metric(
                PREFIX + "journal_disk_free_bytes", "free bytes on the journal's disk", "gauge"
            )
            g.add_sample(PREFIX + "journal_disk_free_bytes", {}, float(free))
            yield g


def disk_free(path: os.PathLike[str] | str) -> int | None:
    """Bytes available to an unprivileged writer on the filesystem holding `path`."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


class PrometheusText:
    """The /metrics document of one agent: its collector plus the process and platform ones
    prometheus-client provides."""

    def __init__(self, agent: Parts) -> None:
        self.collector = AgentCollector(agent)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        self.registry.register(ProcessCollector(registry=None, namespace=PREFIX.rstrip("_")))
        self.registry.register(PlatformCollector(registry=None))

    def render(self, stats: JournalStats) -> bytes:
        """The document, with `stats` as the journal's figures (read just before)."""
        self.collector.stats = stats
        return generate_latest(self.registry)
