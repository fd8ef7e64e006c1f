"""The rules a parsed device frame must meet, as one pure function returning every one it breaks.

The enrollment gate and the pipeline refuse a frame on the first violation this module reports;
`edgence-agent devices check` prints all of them, so a device builder sees what the gateway
would say without running one. Pure: no I/O, no clock of its own (`now` is an argument).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from agent.devices.auth import canonical_bytes, frame_mac
from agent.devices.registry import DeviceRecord, DeviceStatus, KeyKind
from agent.errors import FrameError
from agent.frame import DeviceFrame, Violation
from agent.model import AuthMethod, ClockSkew, Transport
from agent.replaywindow import ReplayWindow, replay_violation

# A Unix time in seconds passes 10^11 in the year 5138; a millisecond time passed it in 1973.
MILLISECONDS_ABOVE = 10**11


DEFAULT_SKEW = ClockSkew()


def canonical_digest(device_id: str, frame: DeviceFrame) -> str:
    """`<length> bytes, sha256 <first 8 hex>` of the canonical bytes: what a device builder
    compares with the bytes their firmware MACs (it reveals neither the key nor the MAC)."""
    data = canonical_bytes(device_id, frame)
    return f"{len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:8]}"


def time_violation(timestamp: int | None, now: float, skew: ClockSkew) -> Violation | None:
    """`bad_time` when the frame's clock is outside the allowed skew (absent `ts`: none)."""
    if timestamp is None:
        return None
    if timestamp >= MILLISECONDS_ABOVE:
        return Violation(
            "bad_time",
            f"ts {timestamp} is far in the future: milliseconds? ts is Unix seconds "
            f"(the gateway's clock reads {int(now)})",
        )
    if timestamp > now + skew.future_s:
        return Violation(
            "bad_time",
            f"ts {timestamp} is {timestamp - int(now)} s ahead of the gateway's clock "
            f"({int(now)}); at most {skew.future_s:g} s allowed (pipeline.max_ts_ahead): "
            f"is the device's clock set?",
        )
    if timestamp < now - skew.past_s:
        return Violation(
            "bad_time",
            f"ts {timestamp} is {int(now) - timestamp} s behind the gateway's clock "
            f"({int(now)}); at most {skew.past_s:g} s allowed (pipeline.max_ts_age): "
            f"is the device's clock set (NTP)?",
        )
    return None


def sensor_violations(frame: DeviceFrame, declared: tuple[tuple[str, str], ...]) -> list[Violation]:
    """`undeclared_sensor` for each value whose (sensor, unit) was not declared at `pair
    --sensor`; a device paired without any `--sensor` may send any sensor."""
    if not declared:
        return []
    out: list[Violation] = []
    for v in frame.values:
        if (v.sensor, v.unit) not in declared:  # a handful of pairs: a tuple scan is fastest
            listed = ", ".join(f"{s}:{u}" for s, u in declared)
            out.append(
                Violation(
                    "undeclared_sensor",
                    f"{v.sensor}:{v.unit} was not declared at pair (declared: {listed}); "
                    f"pair again with --sensor {v.sensor}:{v.unit}",
                )
            )
    return out


def enrollment_violations(
    device_id: str,
    frame: DeviceFrame,
    transport: Transport,
    record: DeviceRecord,
    key: bytes | None,
    verified: AuthMethod | None = None,
) -> list[Violation]:
    """Revoked, wrong transport, missing or wrong MAC, undeclared sensors: what an enrolled
    device's frame can break whatever its counter and the join window."""
    out: list[Violation] = []
    if record.status is DeviceStatus.REVOKED:
        out.append(Violation("revoked", f"device {device_id!r} was revoked"))
    if record.transport != transport:
        out.append(
            Violation(
                "wrong_transport",
                f"device {device_id!r} is enrolled for {record.transport}, frame came over "
                f"{transport}",
            )
        )
    if record.key_kind is KeyKind.BTHOME:
        # The BLE source decrypts with the bindkey; a plaintext advert is a downgrade.
        if verified is not AuthMethod.BTHOME:
            out.append(Violation("bad_mac", f"device {device_id!r} sent no encrypted advert"))
    elif frame.mac is None:
        out.append(Violation("missing_mac", f"device {device_id!r} sent no mac"))
    elif key is None or not hmac.compare_digest(frame_mac(key, device_id, frame), frame.mac):
        out.append(
            Violation(
                "bad_mac",
                f"mac of counter {frame.counter} does not verify over the canonical bytes "
                f"({canonical_digest(device_id, frame)}); compare with the bytes the device MACs",
            )
        )
    out.extend(sensor_violations(frame, record.sensors))
    return out


def frame_violations(
    device_id: str,
    frame: DeviceFrame,
    transport: Transport,
    *,
    record: DeviceRecord | None,
    key: bytes | None,
    allowlisted: bool = False,
    verified: AuthMethod | None = None,
    now: float,
    skew: ClockSkew = DEFAULT_SKEW,
    last_counter: int | None = None,
) -> list[Violation]:
    """Every rule the frame breaks, in the order the gateway checks them (it refuses on the
    first): id, enrollment, MAC, sensors, join window, clock, counter. The per-device rate
    limit is the gate's own state and not checked here."""
    out: list[Violation] = []
    if frame.device_id is not None and frame.device_id != device_id:
        out.append(
            Violation("device_mismatch", f"frame id {frame.device_id!r} arrived as {device_id!r}")
        )
    if record is None:
        if not allowlisted:
            out.append(Violation("unknown_device", f"device {device_id!r} is not enrolled"))
    else:
        out.extend(enrollment_violations(device_id, frame, transport, record, key, verified))
        if record.status is DeviceStatus.PENDING and not record.join_open(now):
            out.append(
                Violation(
                    "not_active",
                    f"device {device_id!r} is pending and its join window has closed; "
                    f"open it again with `edgence-agent pair --reopen {device_id}`",
                )
            )
    late = time_violation(frame.timestamp, now, skew)
    # Only the last counter is known here (a bundle's start, `--last-counter`): every counter
    # up to it counts as spent, as in a journal from before replay windows.
    spent = None if last_counter is None else ReplayWindow.spent_upto(last_counter, 1)
    replay = replay_violation(spent, frame.counter)
    out.extend(v for v in (late, replay) if v is not None)
    return out


# -- `edgence-agent devices check`: the same rules, rendered for a device builder ---------------


def record_from_bundle(bundle: Mapping[str, Any]) -> tuple[DeviceRecord, bytes, int]:
    """The device as the gateway enrolled it, from its provisioning bundle: (record, key,
    counter_start). Raises ValueError naming the bundle field that is wrong."""
    if not isinstance(bundle, Mapping) or bundle.get("edgence") != 1:
        raise ValueError('not a provisioning bundle (no "edgence": 1)')
    try:
        device_id = str(bundle["device_id"])
        transport = Transport(bundle.get("transport", "mqtt"))
        key_kind = KeyKind(bundle.get("key_kind", "hmac"))
        key = bytes.fromhex(str(bundle["key"]))
        counter_start = int(bundle.get("counter_start", 0))
        sensors = tuple((str(s), str(u)) for s, u in bundle.get("sensors", ()))
    except KeyError as exc:
        raise ValueError(f"the bundle has no {exc.args[0]!r}") from None
    except (ValueError, TypeError) as exc:
        raise ValueError(f"the bundle has a malformed field ({exc})") from None
    record = DeviceRecord(
        id=device_id,
        name=str(bundle.get("name", device_id)),
        transport=transport,
        address="",
        key_kind=key_kind,
        status=DeviceStatus.ACTIVE,
        created=0,
        sensors=sensors,
    )
    return record, key, counter_start


def parse_any_frame(payload: bytes) -> tuple[str, DeviceFrame]:
    """A frame as a device builder has it: JSON text, CBOR as hex digits, or raw CBOR.
    Returns the form's name and the frame; raises FrameError as the gateway would."""
    from agent.devices.codecs.cbor_frame import parse_cbor_frame
    from agent.devices.codecs.frame import parse_frame

    text = payload.strip()
    if text.startswith(b"{"):
        return "json", parse_frame(text)
    if text and all(c in b"0123456789abcdefABCDEF" for c in text) and len(text) % 2 == 0:
        return "cbor (hex)", parse_cbor_frame(bytes.fromhex(text.decode()))
    return "cbor", parse_cbor_frame(payload)


def _shown(line: bytes) -> str:
    return line.decode("ascii").replace("\t", "\\t").replace("\n", "\\n")


def check_report(
    bundle: Mapping[str, Any],
    payload: bytes,
    *,
    now: float,
    skew: ClockSkew = DEFAULT_SKEW,
    last_counter: int | None = None,
) -> tuple[list[str], list[Violation]]:
    """The lines `devices check` prints for one frame, and the violations they list."""
    record, key, counter_start = record_from_bundle(bundle)
    device = record.id
    sensors = ", ".join(f"{s}:{u}" for s, u in record.sensors) or "any (none declared)"
    lines = [f"device        {device} over {record.transport}; declared sensors: {sensors}"]
    try:
        form, frame = parse_any_frame(payload)
    except FrameError as exc:
        lines.append(f"frame         cannot be parsed: {exc.reason}: {exc.detail}")
        return lines, [Violation(exc.reason, exc.detail)]
    ts = "none (the gateway stamps it on receipt)" if frame.timestamp is None else frame.timestamp
    lines.append(
        f"frame         {form}, counter {frame.counter}, ts {ts}, {len(frame.values)} reading(s)"
    )
    canonical = canonical_bytes(device, frame)
    lines.append(f"canonical     {canonical_digest(device, frame)}; the bytes the mac covers:")
    lines.extend(f"                {_shown(part)}" for part in canonical.splitlines(keepends=True))
    if record.key_kind is KeyKind.HMAC:
        lines.append(f"expected mac  {frame_mac(key, device, frame).hex()}")
        lines.append(f"frame mac     {frame.mac.hex() if frame.mac is not None else '(none)'}")
    if last_counter is None and counter_start > 0:
        last_counter = counter_start - 1
    problems = frame_violations(
        device,
        frame,
        record.transport,
        record=record,
        key=key,
        now=now,
        skew=skew,
        last_counter=last_counter,
    )
    counter_rule = (
        f"above {last_counter}" if last_counter is not None else "any (none accepted yet)"
    )
    lines += [
        f"clock         gateway {int(now)}; ts allowed from {int(now - skew.past_s)} to "
        f"{int(now + skew.future_s)}",
        f"counter       {counter_rule}",
        "not checked   the gateway's rate limit; counters it accepted after the bundle",
    ]
    if not problems:
        lines.append("result        accepted: the gateway would sign this frame")
    else:
        lines.append(
            f"result        refused: {len(problems)} rule(s) broken (the gateway counts the "
            f"first under frames_rejected)"
        )
        lines.extend(f"  {v.reason:<18} {v.detail}" for v in problems)
    return lines, problems
