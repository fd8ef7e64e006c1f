"""Value types that flow through the agent: Reading (what a device said) and Observation
(a Reading signed by the gateway). They validate themselves so bad values never reach signing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

INT256_MIN = -(2**255)
INT256_MAX = 2**255 - 1
UINT64_MAX = 2**64 - 1
# Short ASCII labels that fit a Solidity bytes32 (left-aligned, zero-padded). Device ids and
# sensor names become MQTT topic levels, so they exclude "/", "+", "#" and spaces.
NAME_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,32}\Z")
UNIT_RE = re.compile(r"^[!-~]{1,32}\Z")  # printable ASCII without space: UCUM codes like m/s, [ppm]


class Transport(StrEnum):
    MQTT = "mqtt"
    COAP = "coap"
    BLE = "ble"
    SERIAL = "serial"
    MODBUS = "modbus"
    SIMULATED = "sim"


class AuthMethod(StrEnum):
    """How the frame's origin was established before the gateway vouched for it."""

    ALLOWLIST = "allowlist"  # device id listed in the config (before enrollment exists)
    OSCORE = "oscore"  # the CoAP transport's OSCORE security context
    BROKER_ACL = "broker-acl"  # a broker login bound to the device id by the broker's ACL
    HMAC = "hmac"  # device key from pairing, HMAC-SHA256 + counter
    BTHOME = "bthome"  # BTHome v2 AES-CCM bindkey + counter

    @property
    def assurance(self) -> int:
        """The signed trust level: 0 unauthenticated, 1 the transport authenticated the
        device, 2 the device authenticated the frame itself (MAC + counter)."""
        return ASSURANCE[self]


ASSURANCE: dict[AuthMethod, int] = {
    AuthMethod.ALLOWLIST: 0,
    AuthMethod.OSCORE: 1,
    AuthMethod.BROKER_ACL: 1,
    AuthMethod.HMAC: 2,
    AuthMethod.BTHOME: 2,
}
ASSURANCE_NAMES = ("unauthenticated", "transport-authenticated", "device-authenticated")
# The signed transport codes (0 reserved: the simulator, which no real link carries).
TRANSPORT_CODES: dict[str, int] = {
    "sim": 0,
    "mqtt": 1,
    "coap": 2,
    "ble": 3,
    "serial": 4,
    "modbus": 5,
}


def transport_code(transport: Transport) -> int:
    return TRANSPORT_CODES[transport.value]


def label_bytes32(label: str, what: str) -> bytes:
    """Encode a short ASCII label as Solidity bytes32 (left-aligned, zero-padded).

    `what` is "unit" for units (printable ASCII) and anything else for names (A-Z a-z 0-9 _ . : -).
    """
    if what == "unit":
        if not UNIT_RE.match(label):
            raise ValueError(f"unit {label!r} must be 1-32 printable ASCII characters, no space")
    elif not NAME_RE.match(label):
        raise ValueError(f"{what} {label!r} must be 1-32 characters of A-Z a-z 0-9 _ . : -")
    return label.encode("ascii").ljust(32, b"\0")


def bytes32_label(raw: bytes) -> str:
    """Inverse of label_bytes32."""
    return raw.rstrip(b"\0").decode("ascii")


def decimal_string(value: int, exponent: int) -> str:
    """The exact decimal text of value * 10**exponent (no float anywhere)."""
    return format(Decimal(value).scaleb(exponent), "f")


@dataclass(frozen=True, slots=True)
class ClockSkew:
    """How far a frame's `ts` may be from the gateway's clock: `past_s` behind, `future_s`
    ahead (config `pipeline.max_ts_age`, `pipeline.max_ts_ahead`; a frame outside is
    refused as `bad_time`)."""

    past_s: float = 86_400.0
    future_s: float = 300.0


@dataclass(frozen=True, slots=True)
class Reading:
    """One sensor value as a device reported it. The value is exact: value * 10**exponent."""

    device_id: str
    sensor: str
    value: int
    exponent: int
    unit: str
    timestamp: int  # unix seconds: the device's clock, or the gateway's on receipt
    counter: int  # the device's monotonic frame counter
    transport: Transport
    auth: AuthMethod

    def __post_init__(self) -> None:
        label_bytes32(self.device_id, "device id")
        label_bytes32(self.sensor, "sensor")
        label_bytes32(self.unit, "unit")
        if type(self.value) is not int or not INT256_MIN <= self.value <= INT256_MAX:
            raise ValueError(f"value {self.value!r} must be an integer in int256")
        if type(self.exponent) is not int or not -128 <= self.exponent <= 127:
            raise ValueError(f"exponent {self.exponent!r} must be an integer in int8")
        for name in ("timestamp", "counter"):
            v = getattr(self, name)
            if type(v) is not int or not 0 <= v <= UINT64_MAX:
                raise ValueError(f"{name} {v!r} must be an integer in uint64")

    @property
    def decimal(self) -> str:
        return decimal_string(self.value, self.exponent)


@dataclass(frozen=True, slots=True)
class Eip712Domain:
    """The EIP-712 domain every observation of this gateway is signed under."""

    name: str
    version: str
    chain_id: int
    verifying_contract: str  # 0x-prefixed 20-byte hex address

    def __post_init__(self) -> None:
        if not re.fullmatch(r"0x[0-9a-fA-F]{40}", self.verifying_contract):
            raise ValueError(
                f"verifying contract {self.verifying_contract!r} must be 0x and 40 hex digits"
            )
        if not 0 < self.chain_id < 2**256:
            raise ValueError(f"chain id {self.chain_id!r} must be a positive uint256")


@dataclass(frozen=True, slots=True)
class Observation:
    """A Reading signed by the gateway: EIP-712 digest and 65-byte r||s||v signature.

    `envelope` is the JSON transport form (UTF-8 bytes) that sinks deliver unchanged; it is
    not what is signed: the digest is recomputed from its fields when verifying.
    """

    reading: Reading
    gateway_sequence: int
    gateway: str  # 0x-prefixed lowercase address of the signing key
    digest: bytes
    signature: bytes
    envelope: bytes
