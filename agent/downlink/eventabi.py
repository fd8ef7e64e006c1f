"""A contract event as [[downlink.events]] declares it ("GateOpened(bytes32 indexed device,
uint256 seconds)"): its topic and the decoding of one log into named values. Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_abi.exceptions import DecodingError

from agent.attest.eip712 import keccak256

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
_STATIC = re.compile(
    r"^(u?int(8|16|24|32|40|48|56|64|72|80|88|96|104|112|120|128|136|144|152|160|168|176|184|192|200|208|216|224|232|240|248|256)|address|bool|bytes([1-9]|[12][0-9]|3[0-2]))\Z"
)
_DYNAMIC = {"string", "bytes"}


@dataclass(frozen=True, slots=True)
class EventField:
    name: str
    type: str
    indexed: bool


@dataclass(frozen=True, slots=True)
class EventSpec:
    name: str
    fields: tuple[EventField, ...]

    @classmethod
    def parse(cls, text: str) -> EventSpec:
        m = re.fullmatch(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*\((.*)\)\s*", text)
        if not m:
            raise ValueError(f"{text!r} is not NAME(type name, ...)")
        fields: list[EventField] = []
        body = m.group(2).strip()
        for part in body.split(",") if body else []:
            words = part.split()
            indexed = "indexed" in words[1:-1]
            if len(words) != (3 if indexed else 2) or not _IDENT.match(words[-1]):
                raise ValueError(f"{part.strip()!r}: each field is `type [indexed] name`")
            typ = {"uint": "uint256", "int": "int256"}.get(words[0], words[0])
            if not (_STATIC.match(typ) or typ in _DYNAMIC):
                raise ValueError(f"{typ!r}: only uintN, intN, address, bool, bytesN, bytes, string")
            if indexed and typ in _DYNAMIC:
                raise ValueError(f"{words[-1]}: an indexed {typ} is only its hash; not supported")
            if any(f.name == words[-1] for f in fields):
                raise ValueError(f"{words[-1]!r} twice")
            fields.append(EventField(words[-1], typ, indexed))
        if sum(f.indexed for f in fields) > 3:
            raise ValueError("an event has at most 3 indexed fields")
        return cls(m.group(1), tuple(fields))

    @property
    def signature(self) -> str:
        return f"{self.name}({','.join(f.type for f in self.fields)})"

    @property
    def topic(self) -> str:
        return "0x" + keccak256(self.signature.encode("ascii")).hex()

    def decode(self, log: dict[str, Any]) -> dict[str, Any]:
        """{field: value} of an eth_getLogs log object; raises ValueError when it does not fit.
        Integers and bools are Python values, addresses 0x-lowercase, bytes as bytes."""
        topics = [str(t) for t in log.get("topics") or []]
        if not topics or topics[0].lower() != self.topic:
            raise ValueError("not this event (topic 0 differs)")
        indexed = [f for f in self.fields if f.indexed]
        if len(topics) != 1 + len(indexed):
            raise ValueError(f"{len(topics) - 1} indexed topics, the event declares {len(indexed)}")
        out: dict[str, Any] = {}
        try:
            for f, t in zip(indexed, topics[1:], strict=True):
                out[f.name] = abi_decode([f.type], bytes.fromhex(t[2:]))[0]
            plain = [f for f in self.fields if not f.indexed]
            data = bytes.fromhex(str(log.get("data", "0x"))[2:])
            for f, v in zip(plain, abi_decode([f.type for f in plain], data), strict=True):
                out[f.name] = v
        except (DecodingError, ValueError) as exc:
            raise ValueError(f"the log does not decode as {self.signature}: {exc}") from None
        return {
            k: (v.lower() if isinstance(v, str) and v.startswith("0x") else v)
            for k, v in out.items()
        }


__all__ = ["EventField", "EventSpec"]
