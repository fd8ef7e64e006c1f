"""The device frame as CBOR (content-format 60 over CoAP): same fields as the JSON form.

Pure: no I/O. CBOR is decoded strictly (no trailing bytes, no duplicate keys, bounded nesting)
and then checked by the JSON form's validator (agent/frame.py), so both forms accept exactly the
same frames.
"""

from __future__ import annotations

import io
from decimal import Decimal
from typing import Any

import cbor2

from agent.devices.codecs.frame import MAX_DEPTH
from agent.errors import FrameError
from agent.frame import DEFAULT_MAX_BYTES, DEFAULT_MAX_VALUES, DeviceFrame, frame_from_object


def _decimal_fraction(value: Any, immutable: bool) -> Decimal:
    """Tag 4 [exponent, mantissa] as an exact Decimal (cbor2's own would round past 28 digits)."""
    if (
        not isinstance(value, list | tuple)
        or len(value) != 2
        or type(value[0]) is not int
        or type(value[1]) is not int
    ):
        raise FrameError("bad_type", "tag 4 (decimal fraction) must be [exponent, mantissa]")
    exp, mant = value
    if not -1000 <= exp <= 1000:
        raise FrameError("out_of_range", f"decimal fraction exponent {exp} is out of range")
    digits = tuple(int(c) for c in str(abs(mant)))
    return Decimal((1 if mant < 0 else 0, digits, exp))


def _refuse_bigfloat(value: Any, immutable: bool) -> Any:
    raise FrameError("bad_type", "tag 5 (bigfloat) is not exact in decimal; use tag 4 or e")


_SEMANTIC = {4: _decimal_fraction, 5: _refuse_bigfloat}


def parse_cbor_frame(
    payload: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_values: int = DEFAULT_MAX_VALUES,
) -> DeviceFrame:
    """Parse and validate one CBOR device frame. Raises FrameError(reason, detail).

    `mac` may be a 32-byte byte string or 64 hex digits; `v` an integer (with `e`), a decimal
    string or a tag-4 decimal fraction. Floats are refused: they are not exact.
    """
    if len(payload) > max_bytes:
        raise FrameError("oversize", f"{len(payload)} bytes, at most {max_bytes} allowed")
    if not payload:
        raise FrameError("not_cbor", "empty payload")
    fp = io.BytesIO(payload)
    try:
        obj = cbor2.CBORDecoder(
            fp,
            semantic_decoders=_SEMANTIC,
            max_depth=MAX_DEPTH,
            allow_duplicate_keys=False,
            str_errors="strict",
        ).decode()
    except FrameError:
        raise
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise FrameError("not_cbor", f"payload is not CBOR ({str(exc)[:60]})") from None
    if fp.tell() != len(payload):
        raise FrameError("not_cbor", f"{len(payload) - fp.tell()} bytes after the CBOR item")
    if isinstance(obj, dict):
        for k in obj:
            if not isinstance(k, str):
                raise FrameError("bad_type", "map keys must be text strings")
        _check_floats(obj.get("r"))
    return frame_from_object(obj, payload, max_values=max_values)


def _check_floats(entries: Any) -> None:
    if not isinstance(entries, list):
        return
    for i, e in enumerate(entries):
        if isinstance(e, dict):
            if any(not isinstance(k, str) for k in e):
                raise FrameError("bad_type", f"r[{i}]: map keys must be text strings")
            if isinstance(e.get("v"), float):
                raise FrameError("bad_type", f"r[{i}].v is a float; send an integer with e")


def encode_cbor_frame(
    counter: int,
    values: list[tuple[str, int, int, str]],
    *,
    device_id: str | None = None,
    timestamp: int | None = None,
    mac: bytes | None = None,
) -> bytes:
    """Build a CBOR frame (tests, benchmarks, simulator). values: (s, v, e, u)."""
    obj: dict[str, Any] = {"v": 1}
    if device_id is not None:
        obj["id"] = device_id
    obj["n"] = counter
    if timestamp is not None:
        obj["ts"] = timestamp
    obj["r"] = [{"s": s, "v": v, "e": e, "u": u} for s, v, e, u in values]
    if mac is not None:
        obj["mac"] = mac
    return cbor2.dumps(obj)
