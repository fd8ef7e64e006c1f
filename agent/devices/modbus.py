"""Modbus source (pymodbus client): polls RTU buses and TCP devices by their register maps.

One task per line: an RS-485 bus is half-duplex, so its devices are polled in turn; each TCP
endpoint is a line of its own, so TCP devices are polled in parallel. A device that fails
(timeout, CRC, exception response, garbage) is counted by kind, logged once, and polled less
often (its own backoff); the other devices on the line keep their schedule. This module is the
Source (lines, schedule, counting, health); one poll's reads are in modbuspoll.py, decoding is
the pure codec's (agent/devices/codecs/modbus.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any, Protocol

from agent.backoff import Backoff
from agent.component import Detail, Health, State
from agent.config.sources.modbus import ModbusSourceConfig
from agent.devices.modbuspoll import (
    DeviceState,
    Line,
    ModbusClient,
    PollGroup,
    next_due,
    open_client,
    poll_groups,
    read_group,
)
from agent.errors import RejectedReading
from agent.frame import DeviceFrame, SensorValue, counter_key
from agent.logs import RateLimitedLog, event
from agent.metrics import Metrics
from agent.model import AuthMethod, Transport
from agent.pipeline import Arrival

LINE_BACKOFF_MAX = 30.0  # s: reopening a port or reconnecting a TCP endpoint


class Intake(Protocol):
    """What the source needs of the pipeline (agent.pipeline.Pipeline implements it)."""

    def offer(self, arrival: Arrival) -> bool: ...

    async def wait_for_space(self) -> None: ...

    def reject(self, source: str, device: str, reason: str, detail: str) -> None: ...

    def last_counter(self, key: str) -> int | None: ...


class ModbusGate:
    """The pipeline's check for Modbus arrivals: the device must be one of [sources.modbus].
    Modbus has no authentication, so an accepted reading has the lowest assurance."""

    def __init__(self, device_ids: Iterable[str]) -> None:
        self.device_ids = frozenset(device_ids)

    def check(self, arrival: Arrival) -> AuthMethod:
        if arrival.device_id not in self.device_ids:
            raise RejectedReading(
                "unknown_device", f"{arrival.device_id!r} is not in [sources.modbus] devices"
            )
        return AuthMethod.ALLOWLIST

    def admit(self, arrival: Arrival, auth: AuthMethod) -> None:
        """No budget: the gateway polls a Modbus device at its configured intervals."""


class ModbusSource:
    """The `modbus` Source: one polling task per line, readings offered to the pipeline.

    Modbus is pull: pausing intake simply stops polling (the device keeps its registers), and
    a full pipeline delays the line's next poll until it has room again.
    """

    name = "modbus"

    def __init__(
        self,
        cfg: ModbusSourceConfig,
        *,
        pipeline: Intake,
        metrics: Metrics,
        logger: logging.Logger | None = None,
    ) -> None:
        self.cfg = cfg
        self.pipeline = pipeline
        self.metrics = metrics
        self.log = logger or logging.getLogger("agent.devices.modbus")
        self._rl = RateLimitedLog(self.log)
        self.ready = asyncio.Event()
        self._stopped = asyncio.Event()
        self._intake = asyncio.Event()
        self._intake.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._ending = False  # run() is ending: the line tasks finish
        buses = {b.name: b for b in cfg.buses}
        lines: dict[str, Line] = {}
        for d in cfg.devices:
            fastest = min(r.interval_s for r in d.registers)
            st = DeviceState(
                d,
                poll_groups(d),
                # A first failure is retried at the usual interval (one lost answer is common
                # on RS-485); after that a device that does not answer is asked less often.
                Backoff(fastest, max(fastest, cfg.backoff_max_s), jitter=0.2),
            )
            bus = buses[d.bus] if d.bus is not None else None
            lines.setdefault(d.line, Line(d.line, [], bus)).devices.append(st)
        self.lines = list(lines.values())
        self.devices = {st.cfg.device_id: st for ln in self.lines for st in ln.devices}
        self.registers_read = 0
        self.polls = 0
        metrics.gauge("modbus_registers_read", lambda: float(self.registers_read))

    # -- the Source interface -------------------------------------------------------------
    async def run(self) -> None:
        self._stopped.clear()
        self._ending = False
        self._tasks = [asyncio.create_task(self._run_line(ln)) for ln in self.lines]
        self.ready.set()
        stop = asyncio.create_task(self._stopped.wait())
        try:
            done, _ = await asyncio.wait([*self._tasks, stop], return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t is not stop:
                    t.result()  # a line task only ends by a bug: let the supervisor restart us
        finally:
            # Lines also check the flag: on Python 3.11 a cancellation that arrives as a
            # pymodbus answer completes can be lost inside asyncio.wait_for.
            self._ending = True
            stop.cancel()
            for t in self._tasks:
                t.cancel()
            await asyncio.wait([stop, *self._tasks], timeout=2.0)

    async def stop(self, grace: float) -> None:
        self._stopped.set()
        self._ending = True
        tasks = [t for t in self._tasks if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=grace)

    def pause_intake(self) -> None:
        self._intake.clear()

    def resume_intake(self) -> None:
        self._intake.set()

    def health(self) -> Health:
        parts = {d: self._device_health(st) for d, st in self.devices.items()}
        states = [p.state for p in parts.values()]
        state: State
        if self._stopped.is_set():
            state = "stopped"
        elif all(s == "up" for s in states):
            state = "up"
        elif all(s == "starting" for s in states):
            state = "starting"
        elif all(s == "down" for s in states):
            state = "down"
        else:
            state = "degraded"
        # "configured": the health document's own `devices` counts those heard
        detail: dict[str, Detail] = {
            "configured": len(self.devices),
            "lines_up": sum(ln.connected for ln in self.lines),
            "lines": len(self.lines),
            "polls": self.polls,
            "registers_read": self.registers_read,
            "paused": not self._intake.is_set(),
        }
        return Health(state, detail, parts)

    def _device_health(self, st: DeviceState) -> Health:
        detail: dict[str, Detail] = {
            "line": st.cfg.line,
            "unit": st.cfg.unit,
            "polls": st.polls,
            "last_poll": int(st.last_poll) if st.last_poll is not None else None,
            "errors": sum(st.errors.values()),
        }
        detail.update({f"errors_{k}": v for k, v in sorted(st.errors.items())})
        return Health(st.state, detail)

    async def _run_line(self, line: Line) -> None:
        backoff = Backoff(0.5, LINE_BACKOFF_MAX)
        lost = True  # a loss not yet counted: at start, and after the line worked
        while not self._ending:
            client = open_client(line)
            try:
                if not await client.connect():
                    what = f"cannot open {line.bus.port}" if line.bus else "cannot connect"
                    self._line_down(line, what, backoff.current, count=lost)
                    lost = False  # further failed attempts are the same outage
                else:
                    line.connected = True
                    line.opened += 1
                    self.metrics.inc("modbus_line_opened", line=line.name)
                    event(self.log, "modbus_line_up", line=line.name, devices=len(line.devices))
                    await self._poll_line(line, client)
                    self._line_down(line, "connection lost", backoff.current, count=True)
                    lost = False
            finally:
                line.connected = False
                client.close()
            await backoff.wait()

    def _line_down(self, line: Line, why: str, retry_in: float, *, count: bool) -> None:
        """The port could not be opened or the connection dropped: every device on the line
        counts one `disconnected` fault per outage."""
        self.metrics.inc("modbus_line_down", line=line.name)
        self._rl.event(
            ("line", line.name),
            "modbus_line_down",
            logging.WARNING,
            line=line.name,
            reason=why,
            retry_in=f"{retry_in:.1f}s",
        )
        if not count:
            return
        for st in line.devices:
            self._count(st, "disconnected")
            st.failing = True
            st.partial = False
            st.failed_since = st.failed_since or time.monotonic()

    async def _poll_line(self, line: Line, client: ModbusClient) -> None:
        """Poll the line's devices in order of their next due time until the line is lost."""
        now = time.monotonic()
        for st in line.devices:
            for g in st.groups:
                g.due = max(g.due, now) if g.due else now
        while client.connected and not self._ending:
            if not self._intake.is_set():
                await self._intake.wait()
                continue
            st, group = min(
                ((st, g) for st in line.devices for g in st.groups), key=lambda sg: sg[1].due
            )
            delay = group.due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
                continue  # re-check pause and the line before polling
            await self._poll(line, client, st, group)

    # -- one poll -------------------------------------------------------------------------
    async def _poll(
        self, line: Line, client: ModbusClient, st: DeviceState, group: PollGroup
    ) -> None:
        dev = st.cfg
        got = await read_group(client, line, dev.unit, group)
        for p, err in got.bad:
            self.pipeline.reject("modbus", dev.device_id, err.reason, f"{p.sensor}: {err.detail}")
        self.registers_read += got.registers
        values, fault, answered = got.values, got.fault, got.answered
        st.polls += 1
        self.polls += 1
        st.partial = bool(values) and fault is not None
        room = True
        if values:
            room = self._offer(st, values)
        now = time.monotonic()
        if fault is None:
            if st.failing:
                event(
                    self.log,
                    "modbus_recovered",
                    device=dev.device_id,
                    line=line.name,
                    down_s=f"{now - (st.failed_since or now):.1f}",
                )
            st.failing = False
            st.failed_since = None
            st.backoff.succeeded()
            group.due = next_due(group.due, group.interval_s, now)
        else:
            kind, detail = fault
            self._count(st, kind)
            # A device that answered keeps its schedule (a refused range is a config matter);
            # one that did not is asked less often, so it costs the line less.
            wait = (
                group.interval_s
                if answered and kind != "device_busy"
                else max(group.interval_s, st.backoff.next_delay())
            )
            group.due = now + wait
            fields: dict[str, Any] = {
                "device": dev.device_id,
                "line": line.name,
                "unit": dev.unit,
                "kind": kind,
                "detail": detail,
                "retry_in": f"{wait:.1f}s",
            }
            if not st.failing:
                st.failing = True
                st.failed_since = now
                event(self.log, "modbus_fault", logging.WARNING, **fields)
            else:
                self._rl.event((dev.device_id, kind), "modbus_fault", logging.WARNING, **fields)
        if not room:
            self.metrics.inc("source_paused", source="modbus")
            await self.pipeline.wait_for_space()

    def _count(self, st: DeviceState, kind: str) -> None:
        st.errors[kind] += 1
        self.metrics.inc("modbus_faults", device=st.cfg.device_id, kind=kind)

    def _offer(self, st: DeviceState, values: list[SensorValue]) -> bool:
        device = st.cfg.device_id
        if st.counter < 0:
            key = counter_key(device, Transport.MODBUS, AuthMethod.ALLOWLIST)
            st.counter = self.pipeline.last_counter(key) or 0
        # Modbus has no frame counter: the gateway numbers the polls, in milliseconds of its
        # clock and never backwards (a restart continues above the journaled counter).
        st.counter = max(st.counter + 1, time.time_ns() // 1_000_000)
        wall = time.time()
        st.last_poll = wall
        frame = DeviceFrame(None, st.counter, int(wall), tuple(values), None, b"")
        self.metrics.inc("modbus_polls", device=device)
        return self.pipeline.offer(Arrival(frame, device, Transport.MODBUS, "modbus"))


# pymodbus logs every timeout and stray frame at ERROR; the source logs each fault once, by
# device and kind, so the library's own lines are kept out of the agent's log.
logging.getLogger("pymodbus.logging").setLevel(logging.CRITICAL)

__all__ = ["ModbusGate", "ModbusSource"]
