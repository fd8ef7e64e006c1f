"""The enrollment gate: every frame must come from an enrolled device and verify with its key.

Checks (agent/devices/check.py, shared with `devices check`): known device (enrolled, or
allowlisted for the transport the frame came over), not revoked, right transport, HMAC (or the BLE
source's own BTHome verification), declared sensors, join window for pending devices, the device
clock. Then the pipeline checks the counter, against the counters kept in the journal, and only
then `admit` spends the device's rate budget and activates a pending device: a forged or
replayed frame costs the device it names nothing. The registry is re-read whenever its files
change (`edgence-agent pair` runs as another process).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from pathlib import Path
from typing import Protocol

from agent.component import Detail, Health
from agent.devices.check import DEFAULT_SKEW, frame_violations
from agent.devices.counterreset import answer, pending_resets
from agent.devices.registry import (
    DeviceRecord,
    DeviceRegistry,
    DeviceStatus,
    KeyKind,
    RegistryError,
    RegistrySnapshot,
)
from agent.errors import AgentError, RejectedReading
from agent.frame import counter_key
from agent.logs import event
from agent.metrics import Metrics
from agent.model import AuthMethod, ClockSkew, Transport
from agent.pipeline import Arrival
from agent.ratelimit import KeyedBuckets


class ResetCounters(Protocol):
    """Pipeline.reset_counters: forget a device's last counters; returns them by key."""

    def __call__(
        self, device_id: str, transport: Transport | None, *, bare: bool = ...
    ) -> Awaitable[dict[str, int]]: ...


class EnrollmentGate:
    """A DeviceGate over the registry, plus optional unauthenticated allowlists, one per
    transport (config `sources.*.allowed_devices`, observed CoAP devices, OSCORE devices, the
    devices bound to a serial port; for development and benchmarks; such observations are
    marked auth=allowlist in their envelope). An id allowlisted for one transport is unknown
    on every other.

    As a component ("registry") it reloads the registry when it changes, writes activations
    and last-seen times, and serves `devices reset-counter` requests (devices/counterreset.py)
    with `reset_counters` (the pipeline's); stopping flushes the pending activations."""

    name = "registry"

    def __init__(
        self,
        registry: DeviceRegistry | None,
        *,
        allowlists: Mapping[Transport, Collection[str]] | None = None,
        rate: float = 10.0,
        burst: float = 20.0,
        metrics: Metrics | None = None,
        logger: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        skew: ClockSkew = DEFAULT_SKEW,
        data_dir: Path | None = None,
        reset_counters: ResetCounters | None = None,
    ) -> None:
        self.registry = registry
        self.data_dir = data_dir
        self.reset_counters = reset_counters
        self.allowlists: dict[Transport, frozenset[str]] = {
            t: frozenset(ids) for t, ids in (allowlists or {}).items()
        }
        self.rate = rate
        self.burst = burst
        self.metrics = metrics or Metrics()
        self.log = logger or logging.getLogger("agent.devices.gate")
        self.clock = clock
        self.wall = wall
        self.skew = skew
        self._records: dict[str, DeviceRecord] = {}
        self._keys: dict[str, bytes] = {}
        # Keyed like the counters (an allowlisted id per transport). Unbounded: only frames of
        # enrolled and allowlisted devices that verified and are fresh get this far, and
        # apply() forgets the buckets of devices that left the registry.
        self._buckets = KeyedBuckets(rate, burst, clock=clock)
        self._marker: tuple[int, ...] | None = None
        self._logged: frozenset[tuple[str, str, str]] = frozenset()
        self._activated: set[str] = set()
        self._seen: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._answered: set[Path] = set()  # counter-reset requests served since start
        self.ready = asyncio.Event()
        self._error: str | None = None
        self.metrics.gauge("devices_enrolled", lambda: float(len(self._records)))

    @property
    def records(self) -> dict[str, DeviceRecord]:
        """The registry as last read: a new mapping after every reload (activations update
        the current one in place)."""
        return self._records

    @property
    def keys(self) -> dict[str, bytes]:
        return self._keys

    @property
    def allowlist(self) -> frozenset[str]:
        """Every allowlisted id, whatever its transport (the oracle's "known device")."""
        return frozenset().union(*self.allowlists.values())

    def allowlisted(self, device: str, transport: Transport) -> bool:
        return device in self.allowlists.get(transport, ())

    # -- the check (on the loop, per frame) ------------------------------------------------
    def check(self, arrival: Arrival) -> AuthMethod:
        device = arrival.device_id
        rec = self._records.get(device)
        now = self.wall()
        # The same rules `edgence-agent devices check` prints; the first one broken refuses.
        problems = frame_violations(
            device,
            arrival.frame,
            arrival.transport,
            record=rec,
            key=self._keys.get(device),
            allowlisted=self.allowlisted(device, arrival.transport),
            verified=arrival.verified,
            now=now,
            skew=self.skew,
        )
        if problems:
            first = problems[0]
            if first.reason == "unknown_device" and device in self.allowlist:
                elsewhere = sorted(str(t) for t, ids in self.allowlists.items() if device in ids)
                raise RejectedReading(
                    "unknown_device",
                    f"device {device!r} is allowlisted for {', '.join(elsewhere)} only; "
                    f"this frame came over {arrival.transport}",
                )
            raise RejectedReading(first.reason, first.detail)
        if rec is None:
            # Listed, not enrolled: only a transport that authenticated it (OSCORE with the
            # device's own context) lifts it above unauthenticated.
            if arrival.verified is AuthMethod.OSCORE:
                return AuthMethod.OSCORE
            return AuthMethod.ALLOWLIST
        return AuthMethod.BTHOME if rec.key_kind is KeyKind.BTHOME else AuthMethod.HMAC

    def admit(self, arrival: Arrival, auth: AuthMethod) -> None:
        """After the counter rule: spend the device's budget; a pending device's first fresh,
        verified frame activates it."""
        device = arrival.device_id
        key = counter_key(device, arrival.transport, auth)
        if self._buckets.take(key):
            raise RejectedReading(
                "rate_limited", f"device {device!r} is above {self.rate:g} frames/s"
            )
        rec = self._records.get(device)
        if rec is None:
            return
        if rec.status is DeviceStatus.PENDING:
            self._activate(rec)
        self._seen[device] = int(self.wall())

    def _activate(self, rec: DeviceRecord) -> None:
        # Active in memory at once; written to the registry by `run` (off the hot path).
        self._records[rec.id] = DeviceRecord(
            **{**rec.__dict__, "status": DeviceStatus.ACTIVE, "join_until": None}
        )
        self._activated.add(rec.id)
        self._wake.set()

    # -- keeping the view of the registry current (off the hot path) ------------------------
    def apply(self, snap: RegistrySnapshot) -> None:
        self._records = snap.records
        self._keys = snap.keys
        # Activations not yet written must survive a reload that raced with them.
        for d in self._activated:
            rec = self._records.get(d)
            if rec is not None and rec.status is DeviceStatus.PENDING:
                self._records[d] = DeviceRecord(
                    **{**rec.__dict__, "status": DeviceStatus.ACTIVE, "join_until": None}
                )
        allowed = self.allowlist
        self._buckets.retain(lambda k: k in self._records or k.partition("/")[2] in allowed)

    def load(self) -> None:
        """Read the registry now (blocking: at start, or in a worker thread)."""
        if self.registry is None:
            return
        marker = self.registry.change_marker()
        snap = self.registry.snapshot()
        self.apply(snap)
        self._marker = marker
        self._logged = _enrollment(self._records)

    async def flush_activations(self) -> None:
        """Write pending -> active for devices whose first frame verified (also at shutdown)."""
        if self.registry is None or not self._activated:
            return
        ids = sorted(self._activated)
        loop = asyncio.get_running_loop()
        done = await loop.run_in_executor(None, self.registry.activate, ids)
        self._activated.difference_update(ids)
        self._logged = _enrollment(self._records)  # device_activated says it; not a reload
        for d in done:
            self.metrics.inc("devices_activated")
            event(self.log, "device_activated", device=d)

    async def run(self, poll: float = 0.5, touch_every: float = 60.0) -> None:
        """Serve counter resets; reload the registry on change, write activations at once and
        last-seen times once a minute."""
        self.ready.set()
        loop = asyncio.get_running_loop()
        last_touch = time.monotonic()
        while True:
            try:
                await self.serve_counter_resets()
                registry = self.registry
                if registry is not None:
                    await self.flush_activations()
                    if time.monotonic() - last_touch >= touch_every and self._seen:
                        seen, self._seen = self._seen, {}
                        await loop.run_in_executor(None, registry.touch, seen)
                        last_touch = time.monotonic()
                    await self._reload_if_changed(registry)
                self._error = None
            except (RegistryError, AgentError, OSError) as exc:
                self._error = str(exc)[:200]
                self.metrics.inc("registry_errors")
                event(self.log, "registry_error", logging.ERROR, error=str(exc))
                await asyncio.sleep(poll)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), poll)
            self._wake.clear()

    async def _reload_if_changed(self, registry: DeviceRegistry) -> None:
        loop = asyncio.get_running_loop()
        marker = await loop.run_in_executor(None, registry.change_marker)
        if marker == self._marker:
            return
        snap = await loop.run_in_executor(None, registry.snapshot)
        self.apply(snap)
        self._marker = marker
        # The file also changes for last-seen times and activations the gate wrote itself:
        # say so only when enrollment changed (devices, status, keys).
        now = _enrollment(self._records)
        if now != self._logged:
            self._logged = now
            event(self.log, "registry_loaded", devices=len(snap.records))

    async def serve_counter_resets(self) -> None:
        """Answer `devices reset-counter` requests: an unauthenticated device's counters are
        forgotten (one `counter_reset` line each); an enrolled device's are not (its key binds
        its counter: a reset would let every captured frame of it replay)."""
        if self.data_dir is None or self.reset_counters is None:
            return
        loop = asyncio.get_running_loop()
        for req in await loop.run_in_executor(None, pending_resets, self.data_dir):
            if req.path in self._answered:
                continue  # done once; its file could not be removed (logged then)
            rec = self._records.get(req.device)
            where = str(req.transport) if req.transport is not None else "all"
            result: dict[str, object]
            if rec is not None:
                result = {
                    "refused": f"device {req.device!r} is enrolled ({rec.status}, over "
                    f"{rec.transport}): its counter is bound to its key; `edgence-agent "
                    f"devices rotate-key {req.device}` gives it a new key and a bundle whose "
                    "counter continues above the last one"
                }
                event(
                    self.log,
                    "counter_reset_refused",
                    logging.WARNING,
                    device=req.device,
                    transport=where,
                    reason="enrolled",
                )
            else:
                removed = await self.reset_counters(
                    req.device, req.transport, bare=req.transport is None
                )
                result = {"removed": removed}
                self.metrics.inc("counter_resets")
                event(
                    self.log,
                    "counter_reset",
                    logging.WARNING,
                    device=req.device,
                    transport=where,
                    forgotten=",".join(f"{k}:{v}" for k, v in sorted(removed.items())) or "none",
                )
            self._answered.add(req.path)
            await loop.run_in_executor(None, answer, req, result)

    async def stop(self, grace: float = 0.5) -> None:
        """Write the activations of devices whose first frame arrived (pending -> active)."""
        try:
            await asyncio.wait_for(self.flush_activations(), max(grace, 2.0))
        except (RegistryError, AgentError, OSError, TimeoutError) as exc:
            event(self.log, "registry_error", logging.ERROR, error=str(exc) or "timeout")

    def health(self) -> Health:
        detail: dict[str, Detail] = {
            "enrolled": len(self._records) if self.registry is not None else None,
            "allowlisted": sum(len(ids) for ids in self.allowlists.values()),
            "error": self._error,
        }
        return Health("degraded" if self._error else "up", detail)


def _enrollment(records: dict[str, DeviceRecord]) -> frozenset[tuple[str, str, str]]:
    """What an operator changes in the registry: each device's id, status and key."""
    return frozenset((r.id, str(r.status), r.key_ref) for r in records.values())
