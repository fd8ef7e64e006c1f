"""The enrollment gate: every frame must come from an enrolled device and verify with its key.

Checks, cheapest first: known device, not revoked, right transport, HMAC (or the BLE source's
own BTHome verification), join window for pending devices, per-device rate. The counter check
follows in the pipeline, against the counters kept in the journal. The registry is re-read
whenever its files change (`edgence-agent pair` runs as another process).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

from agent.component import Detail, Health
from agent.devices.auth import mac_matches
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
from agent.model import AuthMethod
from agent.pipeline import Arrival


class TokenBucket:
    """`rate` frames per second on average, bursts up to `burst`."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


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
    ) -> None:
        self.registry = registry
        self.allowlist = frozenset(allowlist)
        self.rate = rate
        self.burst = burst
        self.metrics = metrics or Metrics()
        self.log = logger or logging.getLogger("agent.devices.gate")
        self.clock = clock
        self.wall = wall
        self._records: dict[str, DeviceRecord] = {}
        self._keys: dict[str, bytes] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._marker: tuple[int, ...] | None = None
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
        if rec is None:
            if device in self.allowlist:
                self._rate_limit(device)
                return AuthMethod.ALLOWLIST
            raise RejectedReading("unknown_device", f"device {device!r} is not enrolled")
        if rec.status is DeviceStatus.REVOKED:
            raise RejectedReading("revoked", f"device {device!r} was revoked")
        if rec.transport != arrival.transport:
            raise RejectedReading(
                "wrong_transport",
                f"device {device!r} is enrolled for {rec.transport}, frame came over "
                f"{arrival.transport}",
            )
        if rec.key_kind is KeyKind.BTHOME:
            # The BLE source decrypts with the bindkey; a plaintext advert is a downgrade.
            if arrival.verified is not AuthMethod.BTHOME:
                raise RejectedReading("bad_mac", f"device {device!r} sent no encrypted advert")
            method = AuthMethod.BTHOME
        else:
            key = self._keys.get(device)
            if arrival.frame.mac is None:
                raise RejectedReading("missing_mac", f"device {device!r} sent no mac")
            if key is None or not mac_matches(key, device, arrival.frame):
                raise RejectedReading("bad_mac", f"mac of counter {arrival.frame.counter}")
            method = AuthMethod.HMAC
        if rec.status is DeviceStatus.PENDING:
            if not rec.join_open(self.wall()):
                raise RejectedReading(
                    "not_active",
                    f"device {device!r} is pending and its join window has closed; "
                    f"open it again with `edgence-agent pair --reopen {device}`",
                )
            self._activate(rec)
        self._rate_limit(device)
        self._seen[device] = int(self.wall())
        return method

    def _rate_limit(self, device: str) -> None:
        now = self.clock()
        bucket = self._buckets.get(device)
        if bucket is None:
            bucket = self._buckets[device] = TokenBucket(self.rate, self.burst, now)
        if not bucket.take(now):
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
        for d in list(self._buckets):
            if d not in self._records and d not in self.allowlist:
                del self._buckets[d]

    def load(self) -> None:
        """Read the registry now (blocking: at start, or in a worker thread)."""
        if self.registry is None:
            return
        marker = self.registry.change_marker()
        snap = self.registry.snapshot()
        self.apply(snap)
        self._marker = marker

    async def flush_activations(self) -> None:
        """Write pending -> active for devices whose first frame verified (also at shutdown)."""
        if self.registry is None or not self._activated:
            return
        ids = sorted(self._activated)
        loop = asyncio.get_running_loop()
        done = await loop.run_in_executor(None, self.registry.activate, ids)
        self._activated.difference_update(ids)
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
