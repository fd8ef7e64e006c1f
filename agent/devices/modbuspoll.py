"""One Modbus poll: the schedule of a device's reads (poll groups), the state the source keeps
per device and per line, and the read of one group of registers over a line, with the fault (if
any) classified. I/O through pymodbus; decoding is the pure codec's (codecs/modbus.py).
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU

from agent.backoff import Backoff
from agent.component import State
from agent.config.sources.modbus import ModbusBusConfig, ModbusDeviceConfig
from agent.devices.codecs.modbus import (
    Point,
    ReadRequest,
    Table,
    classify_rtu_garbage,
    decode_response,
    plan_requests,
)
from agent.errors import FrameError
from agent.frame import SensorValue

# Exception responses by code (Modbus Application Protocol 1.1b3, section 7), as fault kinds.
EXCEPTION_KINDS = {
    1: "illegal_function",
    2: "illegal_address",
    3: "illegal_value",
    4: "device_failure",
    5: "acknowledge",
    6: "device_busy",
    8: "memory_parity",
    10: "gateway_path_unavailable",
    11: "gateway_no_response",
}
RTU_QUIET_CHARS = 3.5  # the standard's inter-frame silence, in character times
RTU_QUIET_S = 0.02  # plus USB adapters' and the kernel's own latency

ModbusClient = AsyncModbusSerialClient | AsyncModbusTcpClient


@dataclass
class PollGroup:
    """The reads of one device that share a poll interval."""

    interval_s: float
    requests: list[ReadRequest]
    due: float = 0.0  # monotonic


@dataclass
class DeviceState:
    cfg: ModbusDeviceConfig
    groups: list[PollGroup]
    backoff: Backoff
    polls: int = 0
    failing: bool = False
    partial: bool = False  # the last poll read some values and failed on others
    last_poll: float | None = None  # unix time of the last poll that read something
    failed_since: float | None = None
    counter: int = -1  # the last counter given to a frame (gateway milliseconds)
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def state(self) -> State:
        if self.failing:
            return "degraded" if self.partial else "down"
        return "up" if self.last_poll is not None else "starting"


@dataclass
class Line:
    """An RS-485 bus or a TCP endpoint, and the devices polled over it, one at a time."""

    name: str
    devices: list[DeviceState]
    bus: ModbusBusConfig | None = None
    connected: bool = False
    opened: int = 0
    received: list[bytes] = field(default_factory=list)  # bytes since the last request


def poll_groups(dev: ModbusDeviceConfig) -> list[PollGroup]:
    """The device's reads, grouped by interval, each group planned within the read limits."""
    points: dict[float, list[Point]] = {}
    for r in dev.registers:
        points.setdefault(r.interval_s, []).append(r.point)
    return [
        PollGroup(
            interval, plan_requests(pts, max_registers=dev.max_registers, max_gap=dev.max_gap)
        )
        for interval, pts in sorted(points.items())
    ]


def next_due(due: float, interval: float, now: float) -> float:
    """The next slot of a schedule started at `due`, skipping the ones already missed (a slow
    line keeps each device's phase instead of polling it back to back to catch up)."""
    return due + interval * max(1, math.ceil((now - due) / interval))


def open_client(line: Line) -> ModbusClient:
    """A pymodbus client for the line (not yet connected) that records what comes back."""

    def trace(sending: bool, data: bytes) -> bytes:
        if not sending:
            line.received.append(bytes(data))  # what came back (pymodbus keeps no record)
        return data

    if line.bus is not None:
        b = line.bus
        return AsyncModbusSerialClient(
            str(b.port),
            framer=FramerType.RTU,
            baudrate=b.baud,
            bytesize=b.bytesize,
            parity=b.parity,
            stopbits=b.stopbits,
            timeout=b.timeout_s,
            retries=0,  # the source retries on its own schedule
            reconnect_delay=0,  # and reopens the line itself, with its backoff
            trace_packet=trace,
            name=line.name,
        )
    d = line.devices[0].cfg
    assert d.host is not None
    return AsyncModbusTcpClient(
        d.host,
        port=d.port,
        timeout=max(st.cfg.timeout_s for st in line.devices),
        retries=0,
        reconnect_delay=0,
        trace_packet=trace,
        name=line.name,
    )


@dataclass
class PollResult:
    """What one poll of a group read: the values, the points without a valid value, how many
    registers (or bits) were read, whether the device answered at all, and the fault (kind,
    detail) that ended or spoiled the poll."""

    values: list[SensorValue] = field(default_factory=list)
    bad: list[tuple[Point, FrameError]] = field(default_factory=list)
    registers: int = 0
    answered: bool = False
    fault: tuple[str, str] | None = None


async def _read(client: ModbusClient, req: ReadRequest, unit: int) -> ModbusPDU:
    if req.table is Table.HOLDING:
        call = client.read_holding_registers(req.address, count=req.count, device_id=unit)
    elif req.table is Table.INPUT:
        call = client.read_input_registers(req.address, count=req.count, device_id=unit)
    elif req.table is Table.COIL:
        call = client.read_coils(req.address, count=req.count, device_id=unit)
    else:
        call = client.read_discrete_inputs(req.address, count=req.count, device_id=unit)
    return await call


def _silence(line: Line, unit: int) -> str:
    """Why a request got no valid answer: nothing came back (`timeout`), or what did."""
    got = line.received[-1] if line.received else b""
    if not got:
        return "timeout"
    if line.bus is not None:
        return classify_rtu_garbage(got, unit)
    # Modbus TCP: the unit id is the 7th byte of the MBAP header.
    return "wrong_unit" if len(got) >= 7 and got[6] != unit else "bad_response"


async def read_group(client: ModbusClient, line: Line, unit: int, group: PollGroup) -> PollResult:
    """Send the group's read requests to device `unit` in turn. A request with no valid answer
    ends the poll (later ones would fare no better); an exception response or an undecodable
    one spoils only its own request."""
    out = PollResult()
    for req in group.requests:
        where = f"{req.table} {req.address}+{req.count}"
        line.received.clear()
        try:
            rr = await _read(client, req, unit)
        except ConnectionException as exc:
            out.fault = ("disconnected", str(exc)[:120])
            break
        except ModbusException:
            # No valid answer in time: the device is silent, or what came back was
            # corrupt or someone else's. Later reads of this poll would fare no better.
            out.fault = (_silence(line, unit), where)
            if line.bus is not None:
                # Let a late or babbling answer end before the next request, so that
                # its tail is discarded instead of corrupting another device's answer.
                await asyncio.sleep(RTU_QUIET_CHARS * 11 / line.bus.baud + RTU_QUIET_S)
            break
        except Exception as exc:  # a hostile answer that pymodbus could not take apart
            out.fault = ("bad_response", f"{where}: {type(exc).__name__}")
            break
        finally:
            line.received.clear()
        out.answered = True
        if rr.isError():
            code = rr.exception_code
            out.fault = (
                EXCEPTION_KINDS.get(code, f"exception_{code}"),
                f"{where}: exception {code}",
            )
            continue
        if rr.function_code != req.table.function_code:
            out.fault = ("bad_response", f"{where}: answered function {rr.function_code}")
            continue
        data: Sequence[int] | Sequence[bool] = rr.bits if req.table.is_bits else rr.registers
        try:
            decoded, bad = decode_response(req, data)
        except FrameError as exc:
            out.fault = (exc.reason, exc.detail)
            continue
        out.bad.extend(bad)
        out.values.extend(decoded)
        out.registers += req.count
    return out


__all__ = [
    "EXCEPTION_KINDS",
    "DeviceState",
    "Line",
    "PollGroup",
    "PollResult",
    "next_due",
    "open_client",
    "poll_groups",
    "read_group",
]
