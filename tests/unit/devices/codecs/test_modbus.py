"""The pure Modbus codec: every data type in every word and byte order, exact decimal scaling,
float rounding, request grouping within the protocol's limits, and RTU's CRC.

Registers are built here independently of the codec: struct.pack of the value, cut into
16-bit words, then reordered as a device with that order would send them."""

from __future__ import annotations

import struct
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.devices.codecs.modbus import (
    MAX_READ_BITS,
    MAX_READ_REGISTERS,
    DataType,
    Order,
    Point,
    ReadRequest,
    Table,
    classify_rtu_garbage,
    crc16,
    decode_point,
    decode_response,
    float_to_decimal,
    overlap,
    plan_requests,
    point_problem,
    rtu_frame,
)
from agent.errors import FrameError
from agent.model import INT256_MAX, INT256_MIN

FORMATS = {
    DataType.INT16: ">h",
    DataType.UINT16: ">H",
    DataType.INT32: ">i",
    DataType.UINT32: ">I",
    DataType.INT64: ">q",
    DataType.UINT64: ">Q",
    DataType.FLOAT32: ">f",
    DataType.FLOAT64: ">d",
}


def wire_words(fmt: str, value: int | float, word: Order, byte: Order) -> list[int]:
    """What a device with this word and byte order puts in its registers."""
    raw = struct.pack(fmt, value)
    words = [raw[i : i + 2] for i in range(0, len(raw), 2)]
    if word is Order.LITTLE:
        words.reverse()
    if byte is Order.LITTLE:
        words = [w[::-1] for w in words]
    return [int.from_bytes(w, "big") for w in words]


def pt(dtype: DataType, **kw: object) -> Point:
    args: dict[str, object] = {
        "sensor": "s",
        "table": Table.HOLDING,
        "address": 0,
        "dtype": dtype,
        "unit": "V",
    }
    args.update(kw)
    if dtype.is_float and "decimals" not in kw:
        args["decimals"] = 3
    return Point(**args)  # type: ignore[arg-type]


INT_BOUNDS = {
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
    DataType.INT64: (-(2**63), 2**63 - 1),
    DataType.UINT64: (0, 2**64 - 1),
}
ORDERS = st.sampled_from(list(Order))


@given(
    st.sampled_from(sorted(INT_BOUNDS)).flatmap(
        lambda t: st.tuples(st.just(t), st.integers(*INT_BOUNDS[t]))
    ),
    ORDERS,
    ORDERS,
    st.integers(-60, 60),
)
def test_every_integer_type_decodes_exactly_in_every_order(
    typed: tuple[DataType, int], word: Order, byte: Order, scale: int
) -> None:
    dtype, value = typed
    if dtype.registers == 1:
        word = Order.BIG  # word order does not apply to one register
    p = pt(dtype, word_order=word, byte_order=byte, scale=scale)
    assert point_problem(p) is None
    d = decode_point(p, wire_words(FORMATS[dtype], value, word, byte))
    assert (d.value, d.exponent) == (value, scale)


@given(
    st.floats(
        allow_nan=False, allow_infinity=False, width=32, min_value=-(2.0**100), max_value=2.0**100
    ),
    ORDERS,
    ORDERS,
    st.integers(0, 6),
    st.integers(-3, 3),
)
def test_float32_becomes_the_exact_value_rounded_half_even(
    x: float, word: Order, byte: Order, decimals: int, scale: int
) -> None:
    p = pt(DataType.FLOAT32, word_order=word, byte_order=byte, decimals=decimals, scale=scale)
    d = decode_point(p, wire_words(">f", x, word, byte))
    assert d.exponent == -decimals
    # Independent check with exact rationals: |value - x*10^(scale+decimals)| <= 1/2.
    exact = Fraction(x) * Fraction(10) ** (scale + decimals)
    assert abs(Fraction(d.value) - exact) <= Fraction(1, 2)
    if abs(Fraction(d.value) - exact) == Fraction(1, 2):
        assert d.value % 2 == 0  # ties go to even


@given(st.floats(allow_nan=False, allow_infinity=False), ORDERS, ORDERS)
def test_float64_in_every_order_rounds_like_decimal(x: float, word: Order, byte: Order) -> None:
    p = pt(DataType.FLOAT64, word_order=word, byte_order=byte, decimals=2)
    words = wire_words(">d", x, word, byte)
    with localcontext() as ctx:
        ctx.prec = 1000
        expected = int(Decimal(x).scaleb(2).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
    if not INT256_MIN <= expected <= INT256_MAX:
        with pytest.raises(FrameError) as exc:
            decode_point(p, words)
        assert exc.value.reason == "out_of_range"
        return
    d = decode_point(p, words)
    assert (d.value, d.exponent) == (expected, -2)


def test_a_meter_voltage_keeps_the_stated_places_and_no_float_artefacts() -> None:
    # 230.1 is 230.09999084472656 as a float32: two places give 230.10, not 230.09.
    p = pt(DataType.FLOAT32, decimals=2, unit="V")
    d = decode_point(p, wire_words(">f", 230.1, Order.BIG, Order.BIG))
    assert (d.value, d.exponent) == (23010, -2)
    assert float_to_decimal(0.125, 0, 2) == (12, -2)  # a tie: half-even
    assert float_to_decimal(0.375, 0, 2) == (38, -2)
    assert float_to_decimal(-1.5, 3, 0) == (-1500, 0)  # scale: kV -> V


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_infinity_are_refused_not_signed(bad: float) -> None:
    with pytest.raises(FrameError) as exc:
        decode_point(pt(DataType.FLOAT32), wire_words(">f", bad, Order.BIG, Order.BIG))
    assert exc.value.reason == "not_finite"


def test_the_four_orders_of_one_float32_are_the_known_byte_layouts() -> None:
    # 0x4049 0x0FDB is 3.1415927 (ABCD); the other three are its usual shuffles.
    layouts = {
        (Order.BIG, Order.BIG): [0x4049, 0x0FDB],  # ABCD
        (Order.LITTLE, Order.BIG): [0x0FDB, 0x4049],  # CDAB
        (Order.BIG, Order.LITTLE): [0x4940, 0xDB0F],  # BADC
        (Order.LITTLE, Order.LITTLE): [0xDB0F, 0x4940],  # DCBA
    }
    for (word, byte), words in layouts.items():
        d = decode_point(pt(DataType.FLOAT32, word_order=word, byte_order=byte, decimals=6), words)
        assert (d.value, d.exponent) == (3141593, -6), (word, byte)


def test_bools_from_coils_and_from_bits_of_a_register() -> None:
    coil = pt(DataType.BOOL, table=Table.COIL)
    assert decode_point(coil, [1]).value == 1 and decode_point(coil, [0]).value == 0
    for bit in range(16):
        p = pt(DataType.BOOL, bit=bit)
        assert decode_point(p, [1 << bit]).value == 1
        assert decode_point(p, [0xFFFF ^ (1 << bit)]).value == 0


@pytest.mark.parametrize(
    ("point", "field", "words"),
    [
        (pt(DataType.FLOAT32, table=Table.COIL), "type", "holds single bits"),
        (pt(DataType.BOOL), "bit", "needs bit"),
        (pt(DataType.BOOL, table=Table.DISCRETE, bit=3), "bit", "is one bit"),
        (pt(DataType.BOOL, bit=16), "bit", "0..15"),
        (pt(DataType.INT16, bit=1), "bit", "bools only"),
        (pt(DataType.BOOL, table=Table.COIL, scale=1), "scale", "0 or 1"),
        (pt(DataType.FLOAT32, decimals=None), "decimals", "is required"),
        (pt(DataType.FLOAT64, decimals=19), "decimals", "0..18"),
        (pt(DataType.INT32, decimals=1), "decimals", "use scale"),
        (pt(DataType.INT16, scale=61), "scale", "-60 to 60"),
        (pt(DataType.UINT16, address=65536), "address", "0..65535"),
        (pt(DataType.FLOAT64, address=65533), "address", "past 65535"),
        (pt(DataType.INT16, word_order=Order.LITTLE), "word_order", "does not apply"),
    ],
)
def test_point_problems_name_the_field(point: Point, field: str, words: str) -> None:
    problem = point_problem(point)
    assert problem is not None
    assert problem[0] == field and words in problem[1]


def test_overlap_is_per_table_and_bits_of_one_register_may_share_it() -> None:
    a = pt(DataType.FLOAT32, address=10)  # 10-11
    assert overlap(a, pt(DataType.INT16, address=11))
    assert not overlap(a, pt(DataType.INT16, address=12))
    assert not overlap(a, pt(DataType.INT16, address=11, table=Table.INPUT))
    assert not overlap(pt(DataType.BOOL, address=5, bit=0), pt(DataType.BOOL, address=5, bit=1))
    assert overlap(pt(DataType.BOOL, address=5, bit=2), pt(DataType.BOOL, address=5, bit=2))
    assert overlap(pt(DataType.BOOL, address=5, bit=2), pt(DataType.UINT16, address=5))


def test_contiguous_points_share_one_read_and_gaps_split_reads() -> None:
    pts = [
        pt(DataType.FLOAT32, sensor="a", address=0),
        pt(DataType.FLOAT32, sensor="b", address=2),
        pt(DataType.INT16, sensor="c", address=4),
        pt(DataType.INT16, sensor="d", address=6),  # a hole at 5
        pt(DataType.FLOAT32, sensor="e", address=0, table=Table.INPUT),
        pt(DataType.BOOL, sensor="f", address=3, table=Table.COIL),
    ]
    reqs = plan_requests(pts)
    assert [(r.table, r.address, r.count, [p.sensor for p in r.points]) for r in reqs] == [
        (Table.COIL, 3, 1, ["f"]),
        (Table.HOLDING, 0, 5, ["a", "b", "c"]),
        (Table.HOLDING, 6, 1, ["d"]),
        (Table.INPUT, 0, 2, ["e"]),
    ]
    # Reading across a one-register hole when the device allows it.
    assert [r.count for r in plan_requests(pts[:4], max_gap=1)] == [7]


@given(
    st.lists(
        st.tuples(
            st.sampled_from(list(Table)), st.integers(0, 3000), st.sampled_from(list(DataType))
        ),
        min_size=1,
        max_size=60,
    ),
    st.integers(1, MAX_READ_REGISTERS),
    st.integers(0, 5),
)
def test_plans_cover_every_point_once_and_stay_within_the_limits(
    spec: list[tuple[Table, int, DataType]], max_registers: int, gap: int
) -> None:
    pts: list[Point] = []
    for i, (table, address, dtype) in enumerate(spec):
        if table.is_bits:
            dtype = DataType.BOOL
        p = pt(dtype, sensor=f"s{i}", table=table, address=address, bit=None)
        if dtype is DataType.BOOL and not table.is_bits:
            p = pt(dtype, sensor=f"s{i}", table=table, address=address, bit=i % 16)
        if p.count <= max_registers and not any(overlap(p, q) for q in pts):
            pts.append(p)
    reqs = plan_requests(pts, max_registers=max_registers, max_gap=gap)
    seen = [p.sensor for r in reqs for p in r.points]
    assert sorted(seen) == sorted(p.sensor for p in pts)
    for r in reqs:
        assert 1 <= r.count <= (MAX_READ_BITS if r.table.is_bits else max_registers)
        for p in r.points:
            assert p.table is r.table and r.address <= p.address and p.end <= r.address + r.count


def test_a_long_map_is_cut_at_125_registers_and_2000_coils() -> None:
    regs = [pt(DataType.FLOAT32, sensor=f"r{i}", address=2 * i) for i in range(100)]  # 200 regs
    assert [r.count for r in plan_requests(regs)] == [124, 76]  # 62 floats fit in 125
    coils = [pt(DataType.BOOL, sensor=f"c{i}", table=Table.COIL, address=i) for i in range(2500)]
    assert [r.count for r in plan_requests(coils)] == [2000, 500]


def test_responses_of_the_wrong_length_are_refused() -> None:
    p = pt(DataType.FLOAT32, address=10)
    req = ReadRequest(Table.HOLDING, 10, 2, (p,))
    with pytest.raises(FrameError) as short:
        decode_response(req, [1])
    assert short.value.reason == "short_response"
    with pytest.raises(FrameError) as long:
        decode_response(req, [1, 2, 3])
    assert long.value.reason == "long_response"
    # Bits come padded to whole bytes: the padding is ignored.
    coil = pt(DataType.BOOL, table=Table.COIL, address=0)
    got, bad = decode_response(ReadRequest(Table.COIL, 0, 1, (coil,)), [True] + [False] * 7)
    assert got[0].value == 1 and bad == []


def test_one_nan_in_a_read_spoils_only_its_own_point() -> None:
    a = pt(DataType.FLOAT32, sensor="a", address=0)
    b = pt(DataType.INT16, sensor="b", address=2, scale=-1)
    words = [*wire_words(">f", float("nan"), Order.BIG, Order.BIG), 0xFFFE]
    got, bad = decode_response(ReadRequest(Table.HOLDING, 0, 3, (a, b)), words)
    assert [(d.sensor, d.value, d.exponent) for d in got] == [("b", -2, -1)]
    assert [(p.sensor, e.reason) for p, e in bad] == [("a", "not_finite")]


def test_crc16_matches_the_specifications_example_and_classifies_garbage() -> None:
    # Modbus over serial line v1.02, 6.2.2: the CRC of 02 07 is 0x1241, sent as 41 12.
    assert rtu_frame(2, b"\x07") == bytes.fromhex("02074112")
    assert crc16(bytes.fromhex("0103000000 0a".replace(" ", ""))) == 0xCDC5
    good = rtu_frame(1, bytes.fromhex("03020001"))
    assert classify_rtu_garbage(good, 1) == "bad_response"
    assert classify_rtu_garbage(good, 2) == "wrong_unit"
    flipped = bytearray(good)
    flipped[3] ^= 0x10
    assert classify_rtu_garbage(bytes(flipped), 1) == "crc"
    assert classify_rtu_garbage(b"\x01\x03", 1) == "bad_response"
