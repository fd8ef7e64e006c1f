"""The enrollment gate against a real registry on disk: every refusal reason, the join window,
activation written back to the registry, the per-device rate limit, BTHome downgrade."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.devices.auth import frame_mac
from agent.devices.codecs.frame import encode_frame, parse_frame
from agent.devices.gate import EnrollmentGate
from agent.devices.registry import DeviceRegistry, DeviceStatus, KeyKind
from agent.errors import RejectedReading
from agent.model import AuthMethod, Transport
from agent.pipeline import Arrival


class FakeClock:
    """Stands in for time.monotonic / time.time so that windows and rates are exact in tests."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def arrival(
    device: str,
    counter: int,
    key: bytes | None,
    transport: Transport = Transport.MQTT,
    verified: AuthMethod | None = None,
) -> Arrival:
    values = [("t", counter, 0, "Cel")]
    mac = None
    if key is not None:
        mac = frame_mac(key, device, parse_frame(encode_frame(counter, values)))
    frame = parse_frame(encode_frame(counter, values, mac=mac))
    return Arrival(frame, device, transport, str(transport), verified=verified)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_gate(
    tmp_path: Path, clock: FakeClock, **kw: object
) -> tuple[EnrollmentGate, DeviceRegistry]:
    reg = DeviceRegistry(tmp_path)
    gate = EnrollmentGate(reg, clock=clock, wall=clock, **kw)  # type: ignore[arg-type]
    return gate, reg


def accept(gate: EnrollmentGate, arr: Arrival) -> AuthMethod:
    """As the pipeline asks: who sent it, (the counter rule,) then the device's budget."""
    auth = gate.check(arr)
    gate.admit(arr, auth)
    return auth


def reason(gate: EnrollmentGate, arr: Arrival) -> str:
    with pytest.raises(RejectedReading) as info:
        accept(gate, arr)
    return info.value.reason


def test_active_device_with_a_good_mac_passes_and_a_forged_one_does_not(
    tmp_path: Path, clock: FakeClock
) -> None:
    gate, reg = make_gate(tmp_path, clock)
    _, key = reg.enroll("dev-1", transport=Transport.MQTT, now=clock.t)
    reg.activate(["dev-1"])
    gate.load()
    assert accept(gate, arrival("dev-1", 1, key)) is AuthMethod.HMAC
    assert reason(gate, arrival("dev-1", 2, bytes(32))) == "bad_mac"
    assert reason(gate, arrival("dev-1", 3, None)) == "missing_mac"


def test_unknown_revoked_and_wrong_transport_are_refused(tmp_path: Path, clock: FakeClock) -> None:
    gate, reg = make_gate(tmp_path, clock)
    _, key = reg.enroll("dev-1", transport=Transport.MQTT, now=clock.t)
    _, key2 = reg.enroll("dev-2", transport=Transport.MQTT, now=clock.t)
    reg.revoke("dev-2")
    gate.load()
    assert reason(gate, arrival("nobody", 1, key)) == "unknown_device"
    assert reason(gate, arrival("dev-2", 1, key2)) == "revoked"
    assert reason(gate, arrival("dev-1", 1, key, Transport.COAP)) == "wrong_transport"


async def test_pending_device_activates_on_first_verified_frame_within_window(
    tmp_path: Path, clock: FakeClock
) -> None:
    gate, reg = make_gate(tmp_path, clock)
    _, key = reg.enroll("dev-1", transport=Transport.MQTT, window_s=60, now=clock.t)
    gate.load()
    assert reason(gate, arrival("dev-1", 1, bytes(32))) == "bad_mac"  # wrong key: still pending
    assert reg.get("dev-1").status is DeviceStatus.PENDING  # type: ignore[union-attr]
    clock.t += 59
    assert accept(gate, arrival("dev-1", 1, key)) is AuthMethod.HMAC
    await gate.flush_activations()
    assert reg.get("dev-1").status is DeviceStatus.ACTIVE  # type: ignore[union-attr]
    clock.t += 3600  # an active device no longer depends on the window
    gate.load()
    assert accept(gate, arrival("dev-1", 2, key)) is AuthMethod.HMAC


def test_pending_device_after_its_window_is_refused_and_stays_pending(
    tmp_path: Path, clock: FakeClock
) -> None:
    gate, reg = make_gate(tmp_path, clock)
    _, key = reg.enroll("dev-1", transport=Transport.MQTT, window_s=10, now=clock.t)
    gate.load()
    clock.t += 11
    assert reason(gate, arrival("dev-1", 1, key)) == "not_active"
    assert reg.get("dev-1").status is DeviceStatus.PENDING  # type: ignore[union-attr]


def test_rotated_key_refuses_frames_under_the_old_one(tmp_path: Path, clock: FakeClock) -> None:
    gate, reg = make_gate(tmp_path, clock)
    _, old = reg.enroll("dev-1", transport=Transport.MQTT, now=clock.t)
    reg.activate(["dev-1"])
    _, new = reg.rotate_key("dev-1", now=clock.t)
    gate.load()
    assert reason(gate, arrival("dev-1", 5, old)) == "bad_mac"
    assert accept(gate, arrival("dev-1", 6, new)) is AuthMethod.HMAC


def test_rate_limit_is_per_device(tmp_path: Path, clock: FakeClock) -> None:
    gate, reg = make_gate(tmp_path, clock, rate=2.0, burst=3.0)
    keys = {d: reg.enroll(d, transport=Transport.MQTT, now=clock.t)[1] for d in ("a", "b")}
    reg.activate(["a", "b"])
    gate.load()
    for n in range(1, 4):
        accept(gate, arrival("a", n, keys["a"]))
    assert reason(gate, arrival("a", 4, keys["a"])) == "rate_limited"
    assert accept(gate, arrival("b", 1, keys["b"])) is AuthMethod.HMAC  # b is not starved
    clock.t += 0.5  # one token back at 2/s
    assert accept(gate, arrival("a", 5, keys["a"])) is AuthMethod.HMAC
    assert reason(gate, arrival("a", 6, keys["a"])) == "rate_limited"


def test_bthome_device_needs_the_sources_decryption(tmp_path: Path, clock: FakeClock) -> None:
    gate, reg = make_gate(tmp_path, clock)
    reg.enroll("ble-1", transport=Transport.BLE, key_kind=KeyKind.BTHOME, now=clock.t)
    reg.activate(["ble-1"])
    gate.load()
    assert reason(gate, arrival("ble-1", 1, None, Transport.BLE)) == "bad_mac"  # plaintext
    ok = arrival("ble-1", 2, None, Transport.BLE, verified=AuthMethod.BTHOME)
    assert accept(gate, ok) is AuthMethod.BTHOME


def test_allowlisted_devices_pass_unauthenticated_and_are_marked_so(
    tmp_path: Path, clock: FakeClock
) -> None:
    gate, _ = make_gate(tmp_path, clock, allowlists={Transport.MQTT: ["sim-1"]})
    gate.load()
    assert accept(gate, arrival("sim-1", 1, None)) is AuthMethod.ALLOWLIST


async def test_registry_changes_from_another_writer_are_picked_up(
    tmp_path: Path, clock: FakeClock
) -> None:
    import asyncio

    gate, _ = make_gate(tmp_path, clock)
    gate.load()
    _, key = DeviceRegistry(tmp_path).enroll("late", transport=Transport.MQTT, now=clock.t)
    task = asyncio.create_task(gate.run(poll=0.01))
    try:
        for _ in range(500):
            if "late" in gate._records:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
    assert accept(gate, arrival("late", 1, key)) is AuthMethod.HMAC


async def test_registry_loaded_is_logged_when_enrollment_changes_not_on_every_rewrite(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Last-seen times and the gate's own activations rewrite the registry file too; only an
    operator's change (a device enrolled, revoked, re-keyed) is a `registry_loaded` line."""
    import asyncio
    import logging

    gate, reg = make_gate(tmp_path, clock)
    _, key = reg.enroll("dev-a", transport=Transport.MQTT, now=clock.t)
    gate.load()

    async def settle() -> None:  # until the gate has read the file as it is now
        for _ in range(500):
            if gate._marker == reg.change_marker():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the gate did not reload the registry")

    def loaded() -> int:
        return sum("event=registry_loaded" in r.getMessage() for r in caplog.records)

    caplog.set_level(logging.INFO, logger="agent.devices.gate")
    task = asyncio.create_task(gate.run(poll=0.01))
    try:
        assert accept(gate, arrival("dev-a", 1, key)) is AuthMethod.HMAC  # activates dev-a
        for _ in range(500):
            if reg.get("dev-a").status is DeviceStatus.ACTIVE:  # type: ignore[union-attr]
                break
            await asyncio.sleep(0.01)
        await settle()
        for t in range(3):
            reg.touch({"dev-a": 2000 + t})
            await settle()
        assert loaded() == 0
        reg.enroll("dev-b", transport=Transport.MQTT, now=clock.t)
        await settle()
        assert loaded() == 1
        reg.revoke("dev-b")
        await settle()
        assert loaded() == 2
    finally:
        task.cancel()


def test_the_gate_refuses_a_millisecond_timestamp_even_from_an_allowlisted_device(
    tmp_path: Path, clock: FakeClock
) -> None:
    clock.t = 1_764_000_000
    gate, _ = make_gate(tmp_path, clock, allowlists={Transport.MQTT: ["sim-1"]})
    gate.load()
    ms = parse_frame(encode_frame(1, [("t", 1, 0, "Cel")], timestamp=1_764_000_000_000))
    with pytest.raises(RejectedReading, match="milliseconds") as info:
        accept(gate, Arrival(ms, "sim-1", Transport.MQTT, "mqtt"))
    assert info.value.reason == "bad_time"
    ok = parse_frame(encode_frame(2, [("t", 1, 0, "Cel")], timestamp=1_764_000_000))
    assert accept(gate, Arrival(ok, "sim-1", Transport.MQTT, "mqtt")) is AuthMethod.ALLOWLIST


def test_the_gate_refuses_a_sensor_not_declared_at_pair(tmp_path: Path, clock: FakeClock) -> None:
    gate, reg = make_gate(tmp_path, clock)
    _, key = reg.enroll("dev-1", transport=Transport.MQTT, sensors=[("t", "Cel")], now=clock.t)
    reg.activate(["dev-1"])
    gate.load()
    assert accept(gate, arrival("dev-1", 1, key)) is AuthMethod.HMAC
    values = [("pressure", 1, 0, "hPa")]
    mac = frame_mac(key, "dev-1", parse_frame(encode_frame(2, values)))
    frame = parse_frame(encode_frame(2, values, mac=mac))
    with pytest.raises(RejectedReading, match="--sensor pressure:hPa") as info:
        accept(gate, Arrival(frame, "dev-1", Transport.MQTT, "mqtt"))
    assert info.value.reason == "undeclared_sensor"


def test_an_allowlisted_id_is_accepted_on_its_own_transport_only(
    tmp_path: Path, clock: FakeClock
) -> None:
    gate, _ = make_gate(
        tmp_path,
        clock,
        allowlists={Transport.MQTT: ["mq-1"], Transport.SERIAL: ["ser-1"]},
    )
    assert accept(gate, arrival("mq-1", 1, None)) is AuthMethod.ALLOWLIST
    assert accept(gate, arrival("ser-1", 1, None, Transport.SERIAL)) is AuthMethod.ALLOWLIST
    with pytest.raises(RejectedReading) as info:
        accept(gate, arrival("ser-1", 2, None, Transport.MQTT))
    assert info.value.reason == "unknown_device"
    assert "allowlisted for serial only" in info.value.detail
    assert reason(gate, arrival("mq-1", 2, None, Transport.COAP)) == "unknown_device"


def test_checking_a_frame_costs_the_device_nothing_only_admitting_does(
    tmp_path: Path, clock: FakeClock
) -> None:
    gate, reg = make_gate(tmp_path, clock, rate=1, burst=2)
    _, key = reg.enroll("dev-1", transport=Transport.MQTT, now=clock.t)
    gate.load()
    captured = arrival("dev-1", 1, key)
    for _ in range(100):  # what the pipeline does with a replay: check, then refuse the counter
        assert gate.check(captured) is AuthMethod.HMAC
    assert reg.get("dev-1").status is DeviceStatus.PENDING  # type: ignore[union-attr]
    assert accept(gate, arrival("dev-1", 2, key)) is AuthMethod.HMAC
    assert accept(gate, arrival("dev-1", 3, key)) is AuthMethod.HMAC
    assert reason(gate, arrival("dev-1", 4, key)) == "rate_limited"
