"""Reading -> device check -> sign (EIP-712) -> journal -> sinks, with a bounded queue.

Sources `offer` Arrivals; one worker takes them in batches, checks the device and its counter,
signs and journals the batch in the journal's thread (one hop per batch), then acknowledges the
sources (only now is a reading *accepted*) and wakes the sinks. A journal I/O error holds the
batch and retries: nothing accepted is dropped and nothing is signed twice for the sinks. So
does a full journal under `journal.overflow = "pause"` (the default): the batch is held, the
pipeline says it has no space (the sources pause: MQTT stops reading so the broker keeps the
rest, CoAP answers 5.03 with Max-Age, serial and BLE stop taking frames) until the sinks have
delivered and the journal takes the batch. No reading is acknowledged and then refused.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from agent.attest.observation import ObservationSigner
from agent.backoff import Backoff
from agent.component import Health
from agent.config.pipeline import PipelineConfig
from agent.errors import (
    JournalBatchTooLarge,
    JournalError,
    JournalFull,
    JournalHeld,
    RejectedReading,
)
from agent.frame import DeviceFrame, counter_key
from agent.journal import Journal
from agent.logs import RateLimitedLog, event
from agent.metrics import Metrics
from agent.model import AuthMethod, Observation, Reading, Transport
from agent.replaywindow import ReplayWindow, after_accepting, replay_violation


@dataclass(slots=True)
class Arrival:
    """A parsed frame as a source received it; `ack` tells the source it may forget it.

    When `ack` runs, `rejected` holds the reason the pipeline refused the frame (None: its
    readings were signed and journaled), so a source that answers its device (CoAP) can say so.
    """

    frame: DeviceFrame
    device_id: str
    transport: Transport
    source: str
    ack: Callable[[], None] | None = None
    rejected: str | None = None
    # Set by a source that authenticated the frame itself (a BTHome advert's AES-CCM MIC) or
    # whose transport authenticated the device (OSCORE with the device's own context).
    verified: AuthMethod | None = None


class DeviceGate(Protocol):
    """Decides whether a frame comes from a device the gateway vouches for.

    The pipeline asks in this order: `check` (who sent it; costs the device nothing), then the
    counter rule, then `admit` (the device's own budget). A forged or replayed frame is refused
    before it can spend the budget of the device it names."""

    def check(self, arrival: Arrival) -> AuthMethod:
        """Return how the device was authenticated, or raise RejectedReading."""
        ...

    def admit(self, arrival: Arrival, auth: AuthMethod) -> None:
        """Spend the device's budget for an authenticated, fresh frame (or raise
        RejectedReading("rate_limited", ...))."""
        ...


class AllowlistGate:
    """Accepts the device ids listed in the config (the rule before enrollment exists)."""

    def __init__(self, allowed: Sequence[str]) -> None:
        self.allowed = frozenset(allowed)

    def check(self, arrival: Arrival) -> AuthMethod:
        if arrival.device_id not in self.allowed:
            raise RejectedReading(
                "unknown_device",
                f"device {arrival.device_id!r} is not in sources.mqtt.allowed_devices",
            )
        if arrival.verified is AuthMethod.OSCORE:  # the transport authenticated the device
            return AuthMethod.OSCORE
        return AuthMethod.ALLOWLIST

    def admit(self, arrival: Arrival, auth: AuthMethod) -> None:
        """No budget before enrollment."""


class TransportGate:
    """Asks the gate of the arrival's transport (BLE devices are known to the BLE source's
    device directory), and `default` for every other transport."""

    def __init__(self, gates: dict[Transport, DeviceGate], default: DeviceGate) -> None:
        self.gates = gates
        self.default = default

    def check(self, arrival: Arrival) -> AuthMethod:
        return self.gates.get(arrival.transport, self.default).check(arrival)

    def admit(self, arrival: Arrival, auth: AuthMethod) -> None:
        self.gates.get(arrival.transport, self.default).admit(arrival, auth)


def _journal_retry() -> Backoff:
    """How a batch the journal could not take is retried (the one local journal: no jitter)."""
    return Backoff(0.05, 1.0, jitter=0.0, reset_after=math.inf)


class Pipeline:
    """The single path from arrivals to journaled, signed observations."""

    name = "pipeline"
    LINGER_BELOW = 8  # after a batch this small, with a queue this short, wait for company
    REJECT_LINES_PER_REASON = 20  # warning lines per refusal reason per minute, all devices

    def __init__(
        self,
        *,
        signer: ObservationSigner,
        journal: Journal,
        gate: DeviceGate,
        metrics: Metrics,
        queue_size: int = PipelineConfig.queue_size,
        batch_max: int = PipelineConfig.batch_max,
        linger: float = 0.0,
        logger: logging.Logger | None = None,
    ) -> None:
        self.signer = signer
        self.journal = journal
        self.gate = gate
        self.metrics = metrics
        self.queue_size = queue_size
        self.batch_max = batch_max
        self.linger = linger
        self.log = logger or logging.getLogger("agent.pipeline")
        # Refusals: per device and reason as before, and one budget per reason for all devices
        # together, with a summary line per minute of what the budget held back.
        self._rl = RateLimitedLog(
            self.log,
            reason_budget=self.REJECT_LINES_PER_REASON,
            summary_event="frames_rejected_summary",
        )
        self._summary_timer: asyncio.TimerHandle | None = None
        self._queue: asyncio.Queue[Arrival] = asyncio.Queue()
        self._first_queued = 0.0  # monotonic time the queue last went from empty to not
        self._space = asyncio.Event()
        self._space.set()
        self._held = False  # a batch waits for room in a full journal (overflow = "pause")
        # counter_key(device, transport, auth) -> the replay window journaled under it
        self._windows: dict[str, ReplayWindow] = {}
        self._counters_lock = asyncio.Lock()  # a reset never interleaves with a batch
        # device id -> the source it was last accepted from (since start; for status/health)
        self.device_sources: dict[str, str] = {}
        self._sinks: list[Callable[[int, list[Observation]], None]] = []
        self._idle = asyncio.Event()
        self._idle.set()
        self.ready = asyncio.Event()
        self.drained: bool | None = None  # set by stop(): whether the queue emptied in time
        metrics.gauge("pipeline_queue", lambda: float(self._queue.qsize()))

    @property
    def idle(self) -> asyncio.Event:
        """Set while nothing is queued or being journaled (a sink may time its own journal work
        to the gaps)."""
        return self._idle

    def add_sink(self, offer: Callable[[int, list[Observation]], None]) -> None:
        """`offer(previous_seq, observations)` is called on the loop after every committed batch;
        `previous_seq` is the journal's newest sequence before the batch, so that a sink can
        tell whether the batch follows directly on what it already has."""
        self._sinks.append(offer)

    async def load_state(self) -> None:
        """The journaled replay window per device, so replays are refused across restarts."""
        self._windows = await self.journal.counter_windows()

    def last_counter(self, key: str) -> int | None:
        """The last counter journaled under `key` (agent.frame.counter_key; None: never seen)."""
        window = self._windows.get(key)
        return None if window is None else window.high

    async def reset_counters(
        self, device_id: str, transport: Transport | None, *, bare: bool = False
    ) -> dict[str, int]:
        """Forget a device's last counters (`devices reset-counter`): the one of `transport`, or
        of every transport; with `bare`, also the counter under the bare id (an agent from
        before counters were kept per transport left it; enrolled devices keep theirs there, so
        the caller passes `bare` only for a device that is not enrolled). Returns the counters
        forgotten, by key. Runs between batches: no frame is decided meanwhile."""
        if transport is not None:
            wanted = {f"{transport}/{device_id}"}
        else:
            wanted = {k for k in self._windows if k.partition("/")[2] == device_id}
        if bare:
            wanted.add(device_id)
        async with self._counters_lock:
            removed = await self.journal.forget_counters(sorted(wanted))
            for k in wanted:
                self._windows.pop(k, None)
        return removed

    # -- intake --------------------------------------------------------------------------
    def offer(self, arrival: Arrival) -> bool:
        """Queue an arrival. Returns False when the queue is past its bound: the source must
        pause and `await wait_for_space()` (it keeps what it already read; nothing is lost)."""
        if self._queue.empty():
            self._first_queued = time.monotonic()  # the linger counts from here
        self._queue.put_nowait(arrival)
        self._idle.clear()
        if self._queue.qsize() >= self.queue_size:
            self._space.clear()
        return self._space.is_set()

    async def wait_for_space(self) -> None:
        await self._space.wait()

    def has_space(self) -> bool:
        """False while the queue is past its bound (a source that can say "busy" says so)."""
        return self._space.is_set()

    def reject(self, source: str, device: str, reason: str, detail: str) -> None:
        """Count and log a refused frame: each distinct (device, reason, detail) once a minute,
        at most REJECT_LINES_PER_REASON lines a minute per reason over all devices, every one
        at debug level; what was held back is summed up in one line a minute."""
        self.metrics.inc("frames_rejected", reason=reason, source=source)
        self._rl.event(
            (device, reason, detail),
            "frame_rejected",
            group=(device, reason),
            budget=reason,
            ident=device,
            source=source,
            device=device,
            reason=reason,
            detail=detail,
        )
        if self._rl.pending_summary and self._summary_timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # called outside the loop (a unit test): summed up lazily
                return
            self._summary_timer = loop.call_later(
                self._rl.seconds_to_summary(), self._write_reject_summary
            )

    def _write_reject_summary(self) -> None:
        self._summary_timer = None
        self._rl.flush()

    # -- worker --------------------------------------------------------------------------
    async def run(self) -> None:
        self.ready.set()
        last = 0  # size of the previous batch
        while True:
            first = await self._queue.get()
            if self.linger > 0 and max(last, self._queue.qsize()) < self.LINGER_BELOW:
                # Group commit: at low rates one commit and one thread hop per reading cost
                # several times the signing itself; a few ms of waiting gathers a batch.
                # At high rates batches are large anyway and nothing waits. The wait counts
                # from the oldest reading's arrival, not from now: what arrived while the
                # previous batch was being journaled has waited already, and a linger started
                # after each batch made it wait again.
                wait = self.linger_left()
                if wait > 0:
                    await asyncio.sleep(wait)
            batch = [first]
            while len(batch) < self.batch_max and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            last = len(batch)
            async with self._counters_lock:
                await self._process(batch)
            if self._queue.qsize() <= self.queue_size // 2 and not self._held:
                self._space.set()
            if self._queue.empty():
                self._idle.set()

    def linger_left(self) -> float:
        """Seconds the group-commit linger still has to run for the oldest queued reading."""
        return self._first_queued + self.linger - time.monotonic()

    async def drain(self, grace: float) -> bool:
        """Wait up to `grace` seconds until everything queued has been processed (shutdown)."""
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
            return True
        except TimeoutError:
            return False

    async def stop(self, grace: float = 0.8) -> None:
        """Drain into the journal (the sources have paused); what is left stays unacknowledged
        at its source, which delivers it again after the restart."""
        self.drained = await self.drain(grace)
        if self._summary_timer is not None:
            self._summary_timer.cancel()
        self._write_reject_summary()

    def health(self) -> Health:
        q = self._queue.qsize()
        return Health(
            "up" if self._space.is_set() else "degraded",
            {
                "queued": q,
                "bound": self.queue_size,
                "devices": len(self.device_sources),
                "journal_full": self._held,
            },
        )

    async def _process(self, batch: list[Arrival]) -> None:
        readings: list[Reading] = []
        updates: dict[str, ReplayWindow] = {}
        size = self.journal.replay_window
        now = int(time.time())
        for arr in batch:
            try:
                # Who sent it, then is it fresh, and only then may it cost the device's budget:
                # a captured frame replayed at any rate never spends the device's tokens.
                auth = self.gate.check(arr)
                key = counter_key(arr.device_id, arr.transport, auth)
                window = updates.get(key, self._windows.get(key))
                replay = replay_violation(window, arr.frame.counter)
                if replay is not None:
                    raise RejectedReading(replay.reason, replay.detail)
                self.gate.admit(arr, auth)
                readings.extend(arr.frame.readings(arr.device_id, arr.transport, auth, now))
                updates[key] = after_accepting(window, arr.frame.counter, size)
            except (RejectedReading, ValueError) as exc:
                reason = exc.reason if isinstance(exc, RejectedReading) else "bad_value"
                arr.rejected = reason
                self.reject(arr.source, arr.device_id, reason, str(exc))
        obs = await self._commit(readings) if readings else []
        if readings and not obs:  # the journal refused them (full, policy reject-new)
            for arr in batch:
                arr.rejected = arr.rejected or "journal_full"
        if obs:
            # Only counters that reached the journal count: a refused frame may come again.
            self._windows.update(updates)
            for arr in batch:
                if arr.rejected is None:
                    self.device_sources[arr.device_id] = arr.source
        for arr in batch:
            if arr.ack is not None:
                arr.ack()

    async def _commit(self, readings: list[Reading]) -> list[Observation]:
        """Sign and journal `readings`, offering each committed part to the sinks at once;
        returns the observations ([] when the journal refused them: policy reject-new)."""
        sign = self.signer.sign

        def make(seqs: range) -> list[Observation]:
            # Runs in the journal's thread, after the sequences are persisted: signing there
            # saves a second thread hop per batch.
            return [sign(r, s) for r, s in zip(readings, seqs, strict=True)]

        retry: Backoff | None = None  # made at the first retry (most batches need none)
        while True:
            try:
                previous, obs = await self.journal.append_with(len(readings), make)
            except JournalBatchTooLarge:
                if len(readings) == 1:
                    raise
                # A small journal.max_bytes: store the batch in two parts, in order.
                half = len(readings) // 2
                first = await self._commit(readings[:half])
                return first + await self._commit(readings[half:]) if first else []
            except JournalHeld as exc:
                # Policy pause: keep the batch, stop intake, try again once sinks delivered.
                if not self._held:
                    self._held = True
                    self._space.clear()
                    self.metrics.inc("intake_paused", reason="journal_full")
                retry = retry or _journal_retry()
                delay = retry.next_delay()
                self._rl.event(
                    ("journal", "held"),
                    "journal_full_paused",
                    logging.WARNING,
                    held=len(readings),
                    retry_in=f"{delay:.1f}s",
                    detail=str(exc),
                )
                await asyncio.sleep(delay)
                continue
            except JournalFull as exc:
                # Policy reject-new: these readings are refused, deliberately and visibly.
                for r in readings:
                    self.metrics.inc("frames_rejected", reason="journal_full", source=r.transport)
                self._rl.event(
                    ("journal", "full"),
                    "journal_full",
                    logging.ERROR,
                    refused=len(readings),
                    detail=str(exc),
                )
                return []
            except JournalError as exc:
                retry = retry or _journal_retry()
                delay = retry.next_delay()
                self.metrics.inc("journal_errors")
                self._rl.event(
                    ("journal", "error"),
                    "journal_error",
                    logging.ERROR,
                    held=len(readings),
                    retry_in=f"{delay:.1f}s",
                    detail=str(exc),
                )
                await asyncio.sleep(delay)
                continue
            if self._held:
                self._held = False
                event(self.log, "journal_room_again", held=len(readings))
            self.metrics.inc("observations_signed", len(obs))
            for offer in self._sinks:
                offer(previous, obs)
            return obs
