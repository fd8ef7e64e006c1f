"""The Modbus register map, pure: the four data tables, the data types and word/byte orders, a
map's `Point` and the rules one point obeys. Below the sources (the config package reads maps
with it; agent/devices/codecs/modbus.py decodes by it). No I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

MAX_ADDRESS = 0xFFFF
MAX_READ_REGISTERS = 125  # function codes 3 and 4 (Modbus Application Protocol 1.1b3, 6.3/6.4)
MAX_READ_BITS = 2000  # function codes 1 and 2 (6.1/6.2)


class Table(StrEnum):
    """The four Modbus data tables, named as in the config."""

    COIL = "coil"  # function code 1, read/write bits
    DISCRETE = "discrete"  # function code 2, read-only bits
    HOLDING = "holding"  # function code 3, read/write registers
    INPUT = "input"  # function code 4, read-only registers

    @property
    def is_bits(self) -> bool:
        return self in (Table.COIL, Table.DISCRETE)

    @property
    def function_code(self) -> int:
        return {Table.COIL: 1, Table.DISCRETE: 2, Table.HOLDING: 3, Table.INPUT: 4}[self]


class DataType(StrEnum):
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    BOOL = "bool"

    @property
    def registers(self) -> int:
        """Registers one value takes (a bool: one coil, or one bit of one register)."""
        return _REGISTERS[self]

    @property
    def is_float(self) -> bool:
        return self in (DataType.FLOAT32, DataType.FLOAT64)

    @property
    def signed(self) -> bool:
        return self in (DataType.INT16, DataType.INT32, DataType.INT64)


_REGISTERS = {
    DataType.INT16: 1,
    DataType.UINT16: 1,
    DataType.INT32: 2,
    DataType.UINT32: 2,
    DataType.INT64: 4,
    DataType.UINT64: 4,
    DataType.FLOAT32: 2,
    DataType.FLOAT64: 4,
    DataType.BOOL: 1,
}


class Order(StrEnum):
    """Word order (which register comes first) or byte order (within each register)."""

    BIG = "big"  # most significant first: the Modbus default (ABCD)
    LITTLE = "little"  # least significant first (word: CDAB; byte: BADC; both: DCBA)


@dataclass(frozen=True, slots=True)
class Point:
    """One value in a device's register map.

    `scale` is a decimal exponent: an int16 of 2301 with scale -1 is 230.1 exactly. A float is
    multiplied by 10**scale and rounded to `decimals` places (required for floats). `bit`
    picks one bit (0 = least significant) of a holding/input register for a bool.
    """

    sensor: str
    table: Table
    address: int
    dtype: DataType
    unit: str
    scale: int = 0
    decimals: int | None = None
    word_order: Order = Order.BIG
    byte_order: Order = Order.BIG
    bit: int | None = None

    @property
    def count(self) -> int:
        """Registers (or bits, in the bit tables) this point occupies."""
        return self.dtype.registers

    @property
    def end(self) -> int:
        """One past the last address the point occupies."""
        return self.address + self.count


def point_problem(p: Point) -> tuple[str, str] | None:
    """What is wrong with a point, as (field, problem), or None. The config reader names the
    key; this is the one place the rules live."""
    if p.table.is_bits and p.dtype is not DataType.BOOL:
        return "type", f"a {p.table} holds single bits: the type must be bool, got {p.dtype}"
    if p.dtype is DataType.BOOL:
        if not p.table.is_bits and p.bit is None:
            return "bit", f"a bool in a {p.table} register needs bit = 0..15 (which bit)"
        if p.table.is_bits and p.bit is not None:
            return "bit", f"is for bools in holding/input registers; a {p.table} is one bit"
        if p.scale != 0 or p.decimals is not None:
            return "scale", "a bool is 0 or 1: scale and decimals do not apply"
    elif p.bit is not None:
        return "bit", f"is for bools only, not {p.dtype}"
    if p.bit is not None and not 0 <= p.bit <= 15:
        return "bit", f"must be 0..15, got {p.bit}"
    if p.dtype.is_float:
        if p.decimals is None:
            return "decimals", f"is required for {p.dtype}: the decimal places kept (0..18)"
        if not 0 <= p.decimals <= 18:
            return "decimals", f"must be 0..18, got {p.decimals}"
    elif p.decimals is not None:
        return "decimals", f"is for float types; {p.dtype} is exact (use scale)"
    if not -60 <= p.scale <= 60:
        return "scale", f"must be a decimal exponent from -60 to 60, got {p.scale}"
    if not 0 <= p.address <= MAX_ADDRESS:
        return "address", f"must be 0..{MAX_ADDRESS} (the protocol address), got {p.address}"
    if p.end - 1 > MAX_ADDRESS:
        return (
            "address",
            f"{p.dtype} at {p.address} takes {p.count} registers and would end at "
            f"{p.end - 1}, past {MAX_ADDRESS}",
        )
    if p.dtype.registers == 1 and (p.word_order is not Order.BIG) and p.dtype is not DataType.BOOL:
        return "word_order", f"{p.dtype} is one register: word order does not apply"
    return None


def overlap(a: Point, b: Point) -> bool:
    """True when two points of one device read the same register or bit (two bools on
    different bits of one register do not overlap)."""
    if a.table is not b.table or a.address >= b.end or b.address >= a.end:
        return False
    return not (a.bit is not None and b.bit is not None and a.bit != b.bit)


__all__ = [
    "MAX_ADDRESS",
    "MAX_READ_BITS",
    "MAX_READ_REGISTERS",
    "DataType",
    "Order",
    "Point",
    "Table",
    "overlap",
    "point_problem",
]
