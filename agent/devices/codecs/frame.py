"""The device frame's JSON form (docs/device-frame.md): bytes in, a validated DeviceFrame out.

Pure: no I/O. Numbers are parsed exactly (Decimal), never through float; NaN and Infinity
are refused. Every failure is a FrameError whose `reason` is a short, stable counter label.
DeviceFrame and the validator shared with the CBOR form live below, in agent/frame.py.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from agent.errors import FrameError
from agent.frame import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_VALUES,
    FRAME_VERSION,
    DeviceFrame,
    frame_from_object,
)


def _reject_constant(name: str) -> Any:
    raise FrameError("not_finite", f"{name} is not a finite number")


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are unique, as the CBOR form demands: `{"n":9,"n":1}` read
    last-wins by one parser and first-wins by another could mean two frames under one MAC."""
    obj: dict[str, Any] = {}
    for k, v in pairs:
        if k in obj:
            raise FrameError("not_json", f"key {k[:20]!r} appears twice in one object")
        obj[k] = v
    return obj


# One decoder for every frame: json.loads(...) with hooks would build a new one per call.
_DECODER = json.JSONDecoder(
    parse_float=Decimal,
    parse_constant=_reject_constant,
    object_pairs_hook=_object_without_duplicates,
)
# A valid frame nests 3 deep ({"r":[{...}]}); anything past this is refused before parsing,
# so hostile nesting cannot exhaust the parser's stack.
MAX_DEPTH = 8


def _nesting_depth(text: str) -> int:
    """Deepest [ / { nesting outside of strings."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def parse_frame(
    payload: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_values: int = DEFAULT_MAX_VALUES,
) -> DeviceFrame:
    """Parse and validate one JSON device frame. Raises FrameError(reason, detail)."""
    if len(payload) > max_bytes:
        raise FrameError("oversize", f"{len(payload)} bytes, at most {max_bytes} allowed")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError("not_utf8", "payload is not UTF-8 text") from None
    # Only frames with many brackets can be deep; the scan costs nothing for ordinary ones.
    if text.count("[") + text.count("{") > MAX_DEPTH and _nesting_depth(text) > MAX_DEPTH:
        raise FrameError("not_json", f"JSON nested deeper than {MAX_DEPTH} levels")
    try:
        obj = _DECODER.decode(text)
    except FrameError:
        raise
    except (ValueError, RecursionError) as exc:
        raise FrameError("not_json", f"payload is not JSON ({str(exc)[:60]})") from None
    return frame_from_object(obj, payload, max_values=max_values)


def encode_frame(
    counter: int,
    values: list[tuple[str, int, int, str]],
    *,
    device_id: str | None = None,
    timestamp: int | None = None,
    mac: bytes | None = None,
) -> bytes:
    """Build a frame (used by the simulator, tests and benchmarks). values: (s, v, e, u)."""
    obj: dict[str, Any] = {"v": FRAME_VERSION}
    if device_id is not None:
        obj["id"] = device_id
    obj["n"] = counter
    if timestamp is not None:
        obj["ts"] = timestamp
    obj["r"] = [{"s": s, "v": v, "e": e, "u": u} for s, v, e, u in values]
    if mac is not None:
        obj["mac"] = mac.hex()
    return json.dumps(obj, separators=(",", ":")).encode()
