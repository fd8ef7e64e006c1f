"""The enrollment gate: every frame must come from an enrolled device and verify with its key.

Checks (agent/devices/check.py, shared with `devices check`): known device, not revoked, right
transport, HMAC (or the BLE source's own BTHome verification), declared sensors, join window for
pending devices, the device clock; then the per-device rate. The counter check follows in the
pipeline, against the counters kept in the journal. The registry is re-read
whenever its files change (`edgence-agent pair` runs as another process).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

from agent.component import Detail, Health
from agent.devices.check import DEFAULT_SKEW, frame_violations
from agent.devices.registry import (
    DeviceRecord,
    DeviceRegistry,
    DeviceStatus,
    KeyKind,
    RegistryError,
    RegistrySnapshot,
)
from agent.errors import AgentError, RejectedReading
from agent.logs import event
from agent.metrics import Metrics
from agent.model import AuthMethod, ClockSkew
from agent.pipeline import Arrival
from agent.ratelimit import KeyedBuckets


class EnrollmentGate:
    """A DeviceGate over the registry, plus an optional unauthenticated allowlist (config
    `sources.*.allowed_devices`, for development and benchmarks; such observations are marked
    auth=allowlist in their envelope).

    As a component ("registry") it reloads the registry when it changes and writes
    activations and last-seen times; stopping flushes the pending activations."""

    name = "registry"

    def __init__(
        self,
        registry: DeviceRegistry | None,
        *,
        allowlist: Sequence[str] = (),
        rate: float = 10.0,
        burst: float = 20.0,
        metrics: Metrics | None = None,
        logger: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        skew: ClockSkew = DEFAULT_SKEW,
    ) -> None:
        self.registry = registry
        self.allowlist = frozenset(allowlist)
        self.rate = rate
        self.burst = burst
        self.metrics = metrics or Metrics()
        self.log = logger or logging.getLogger("agent.devices.gate")
        self.clock = clock
        self.wall = wall
        self.skew = skew
        self._records: dict[str, DeviceRecord] = {}
        self._keys: dict[str, bytes] = {}
        # Unbounded: only enrolled and allowlisted devices get this far, and apply() forgets
        # the buckets of devices that left the registry.
        self._buckets = KeyedBuckets(rate, burst, clock=clock)
        self._marker: tuple[int, ...] | None = None
        self._logged: frozenset[tuple[str, str, str]] = frozenset()
        self._activated: set[str] = set()
        self._seen: dict[str, int] = {}
        self._wake = asyncio.Event()
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
            allowlisted=device in self.allowlist,
            verified=arrival.verified,
            now=now,
            skew=self.skew,
        )
        if problems:
            raise RejectedReading(problems[0].reason, problems[0].detail)
        if rec is None:
            self._rate_limit(device)
            # Listed, not enrolled: only a transport that authenticated it (OSCORE with the
            # device's own context) lifts it above unauthenticated.
            if arrival.verified is AuthMethod.OSCORE:
                return AuthMethod.OSCORE
            return AuthMethod.ALLOWLIST
        if rec.status is DeviceStatus.PENDING:
            self._activate(rec)
        self._rate_limit(device)
        self._seen[device] = int(now)
        return AuthMethod.BTHOME if rec.key_kind is KeyKind.BTHOME else AuthMethod.HMAC

    def _rate_limit(self, device: str) -> None:
        if self._buckets.take(device):
            raise RejectedReading(
                "rate_limited", f"device {device!r} is above {self.rate:g} frames/s"
            )

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
        self._buckets.retain(lambda d: d in self._records or d in self.allowlist)

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
        """Reload on change, write activations at once and last-seen times once a minute."""
        self.ready.set()
        if self.registry is None:
            return
        registry = self.registry
        loop = asyncio.get_running_loop()
        last_touch = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), poll)
            self._wake.clear()
            try:
                await self.flush_activations()
                if time.monotonic() - last_touch >= touch_every and self._seen:
                    seen, self._seen = self._seen, {}
                    await loop.run_in_executor(None, registry.touch, seen)
                    last_touch = time.monotonic()
                marker = await loop.run_in_executor(None, registry.change_marker)
                if marker != self._marker:
                    snap = await loop.run_in_executor(None, registry.snapshot)
                    self.apply(snap)
                    self._marker = marker
                    # The file also changes for last-seen times and activations the gate wrote
                    # itself: say so only when enrollment changed (devices, status, keys).
                    now = _enrollment(self._records)
                    if now != self._logged:
                        self._logged = now
                        event(self.log, "registry_loaded", devices=len(snap.records))
                self._error = None
            except (RegistryError, AgentError, OSError) as exc:
                self._error = str(exc)[:200]
                self.metrics.inc("registry_errors")
                event(self.log, "registry_error", logging.ERROR, error=str(exc))
                await asyncio.sleep(poll)

    async def stop(self, grace: float = 0.5) -> None:
        """Write the activations of devices whose first frame arrived (pending -> active)."""
        try:
            await asyncio.wait_for(self.flush_activations(), max(grace, 2.0))
        except (RegistryError, AgentError, OSError, TimeoutError) as exc:
            event(self.log, "registry_error", logging.ERROR, error=str(exc) or "timeout")

    def health(self) -> Health:
        detail: dict[str, Detail] = {
            "enrolled": len(self._records) if self.registry is not None else None,
            "allowlisted": len(self.allowlist),
            "error": self._error,
        }
        return Health("degraded" if self._error else "up", detail)


def _enrollment(records: dict[str, DeviceRecord]) -> frozenset[tuple[str, str, str]]:
    """What an operator changes in the registry: each device's id, status and key."""
    return frozenset((r.id, str(r.status), r.key_ref) for r in records.values())
