"""Modbus register maps, pure: exact decimal scaling and the grouping of a map into read
requests within the protocol's limits. No I/O. The map's model (tables, data types, word and
byte order, `Point` and its rules) is agent/modbusmap.py, re-exported here.

A point's value is exact: integers keep their bits and get the configured decimal exponent;
a float register becomes a decimal rounded half-even to the stated number of decimals (the
float's exact binary value is rounded once, never printed through repr). RTU's CRC-16 is here
too, so that the source can tell a corrupted frame from silence without parsing of its own.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from agent.errors import FrameError
from agent.frame import SensorValue
from agent.modbusmap import (
    MAX_ADDRESS,
    MAX_READ_BITS,
    MAX_READ_REGISTERS,
    DataType,
    Order,
    Point,
    Table,
    overlap,
    point_problem,
)
from agent.model import INT256_MAX, INT256_MIN


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One read: `count` registers or bits of `table` from `address`, feeding `points`;
    `decoders` holds each point's offset in the answer and its compiled decoder."""

    table: Table
    address: int
    count: int
    points: tuple[Point, ...]
    decoders: tuple[tuple[int, int, Point, Decode], ...] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "decoders",
            tuple((p.address - self.address, p.count, p, decoder(p)) for p in self.points),
        )


# A decoded value is the device frame's own value type: the source builds no copy of it.
Decoded = SensorValue


def plan_requests(
    points: Iterable[Point],
    *,
    max_registers: int = MAX_READ_REGISTERS,
    max_bits: int = MAX_READ_BITS,
    max_gap: int = 0,
) -> list[ReadRequest]:
    """Group points into as few reads as the limits allow: points of one table whose ranges
    touch (or leave at most `max_gap` unused addresses between them) share a read, and no read
    is longer than the protocol (or the device) allows. Deterministic: sorted by table, address.
    """
    out: list[ReadRequest] = []
    by_table: dict[Table, list[Point]] = {}
    for p in points:
        by_table.setdefault(p.table, []).append(p)
    for table in sorted(by_table, key=lambda t: t.function_code):
        limit = max_bits if table.is_bits else max_registers
        group: list[Point] = []
        start = end = 0
        for p in sorted(by_table[table], key=lambda q: (q.address, q.bit or 0)):
            if p.count > limit:
                raise ValueError(f"{p.sensor}: {p.count} registers exceed the read limit {limit}")
            if group and p.address - end <= max_gap and max(end, p.end) - start <= limit:
                group.append(p)
                end = max(end, p.end)
                continue
            if group:
                out.append(ReadRequest(table, start, end - start, tuple(group)))
            group, start, end = [p], p.address, p.end
        if group:
            out.append(ReadRequest(table, start, end - start, tuple(group)))
    return out


def float_to_decimal(x: float, scale: int, decimals: int) -> tuple[int, int]:
    """x * 10**scale rounded half-even to `decimals` places: (value, -decimals). Exact: the
    float is the ratio of two integers (its denominator a power of two), so the rounding is
    done in integers, once, with no intermediate float or decimal context."""
    if not math.isfinite(x):
        raise FrameError("not_finite", f"register value {x!r} is not a finite number")
    num, den = x.as_integer_ratio()
    k = scale + decimals
    if k >= 0:
        num *= 10**k
    else:
        den *= 10**-k
    q, r = divmod(num, den)  # floor division: 0 <= r < den, also for negative values
    if 2 * r > den or (2 * r == den and q & 1):
        q += 1
    if not INT256_MIN <= q <= INT256_MAX:
        raise FrameError("out_of_range", f"{x!r} x 10^{scale} does not fit int256")
    return q, -decimals


Decode = Callable[[Sequence[int]], Decoded]


def decoder(p: Point) -> Decode:
    """A function decoding `p` from its own registers (or its one bit), with everything that
    depends only on the point worked out once (the hot path runs it for every value read)."""
    sensor, unit, scale, n = p.sensor, p.unit, p.scale, p.count

    def check(words: Sequence[int]) -> None:
        if len(words) != n:
            raise FrameError("short_response", f"{sensor}: {len(words)} of {n} registers")

    if p.dtype is DataType.BOOL:
        bit = p.bit

        def dec_bool(words: Sequence[int]) -> Decoded:
            check(words)
            v = (words[0] >> bit) & 1 if bit is not None else int(bool(words[0]))
            return Decoded(sensor, v, 0, unit)

        return dec_bool
    # Byte order within a register is the packing of each word; word order is the list's.
    pack = struct.Struct(("<" if p.byte_order is Order.LITTLE else ">") + f"{n}H").pack
    reverse = p.word_order is Order.LITTLE
    if p.dtype.is_float:
        unpack = struct.Struct(">f" if p.dtype is DataType.FLOAT32 else ">d").unpack
        decimals = p.decimals if p.decimals is not None else 0

        def dec_float(words: Sequence[int]) -> Decoded:
            check(words)
            x = unpack(pack(*(reversed(words) if reverse else words)))[0]
            v, e = float_to_decimal(x, scale, decimals)
            return Decoded(sensor, v, e, unit)

        return dec_float
    signed = p.dtype.signed

    def dec_int(words: Sequence[int]) -> Decoded:
        check(words)
        raw = pack(*(reversed(words) if reverse else words))
        return Decoded(sensor, int.from_bytes(raw, "big", signed=signed), scale, unit)

    return dec_int


def decode_point(p: Point, words: Sequence[int]) -> Decoded:
    """The value of `p` from its own registers (`p.count` of them), or its bit (one 0/1)."""
    return decoder(p)(words)


def decode_response(
    req: ReadRequest, values: Sequence[int] | Sequence[bool]
) -> tuple[list[Decoded], list[tuple[Point, FrameError]]]:
    """Every point of a request from the registers (or bits) the device answered, and the
    points that had no valid value (a NaN float...) with why. A response of the wrong length is
    refused whole (FrameError): bit responses are padded to a byte, so extra bits there are
    ignored, but extra registers mean the device answered another question."""
    n = len(values)
    if n < req.count or (not req.table.is_bits and n != req.count):
        kind = "short_response" if n < req.count else "long_response"
        raise FrameError(kind, f"{req.table} {req.address}+{req.count}: got {n} values")
    out: list[Decoded] = []
    bad: list[tuple[Point, FrameError]] = []
    words = [int(v) for v in values]
    for lo, n, p, dec in req.decoders:
        try:
            out.append(dec(words[lo : lo + n]))
        except FrameError as exc:
            bad.append((p, exc))
    return out, bad


def crc16(data: bytes) -> int:
    """Modbus RTU CRC-16 (polynomial 0xA001 reflected, initial 0xFFFF), as the integer whose
    little-endian bytes end the frame."""
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def rtu_frame(unit: int, pdu: bytes) -> bytes:
    """An RTU frame: unit id, PDU, CRC (low byte first)."""
    body = bytes([unit]) + pdu
    return body + crc16(body).to_bytes(2, "little")


def classify_rtu_garbage(received: bytes, unit: int) -> str:
    """Why bytes that came back produced no answer: `crc` (the frame's check failed),
    `wrong_unit` (a valid frame from another unit id), or `bad_response`."""
    if len(received) < 4:
        return "bad_response"
    if crc16(received[:-2]).to_bytes(2, "little") != received[-2:]:
        return "crc"
    if received[0] != unit:
        return "wrong_unit"
    return "bad_response"


__all__ = [
    "MAX_ADDRESS",
    "MAX_READ_BITS",
    "MAX_READ_REGISTERS",
    "DataType",
    "Decoded",
    "Order",
    "Point",
    "ReadRequest",
    "Table",
    "classify_rtu_garbage",
    "crc16",
    "decode_point",
    "decode_response",
    "decoder",
    "float_to_decimal",
    "overlap",
    "plan_requests",
    "point_problem",
    "rtu_frame",
]
