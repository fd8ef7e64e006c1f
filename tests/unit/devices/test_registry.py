"""The device registry on disk: enrollment, join windows, key rotation, revocation, the 0600
key file, and two processes changing it at once."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from agent.devices.registry import (
    DeviceRegistry,
    DeviceStatus,
    KeyKind,
    RegistryError,
)
from agent.errors import KeyFileError
from agent.model import Transport


def test_enroll_records_a_pending_device_with_a_private_key(tmp_path: Path) -> None:
    reg = DeviceRegistry(tmp_path / "devices")
    rec, key = reg.enroll(
        "dev-1", transport=Transport.MQTT, sensors=[("t", "Cel")], window_s=100, now=1000.0
    )
    assert rec.status is DeviceStatus.PENDING and rec.join_until == 1100.0
    assert len(key) == 32 and reg.key_of("dev-1") == key
    assert stat.S_IMODE(os.stat(reg.keys_path).st_mode) == 0o600
    assert key.hex() not in reg.db_path.read_text()  # keys never in the registry file
    assert reg.get("dev-1") == rec
    assert rec.join_open(1099.0) and not rec.join_open(1100.5)


def test_enrolling_an_existing_id_is_refused(tmp_path: Path) -> None:
    reg = DeviceRegistry(tmp_path)
    reg.enroll("dev-1", transport=Transport.MQTT)
    with pytest.raises(RegistryError, match="already enrolled"):
        reg.enroll("dev-1", transport=Transport.MQTT)


@pytest.mark.parametrize("window", [0, 255, 1000])
def test_join_window_is_bounded(tmp_path: Path, window: float) -> None:
    with pytest.raises(RegistryError, match="1 to 254"):
        DeviceRegistry(tmp_path).enroll("d", transport=Transport.MQTT, window_s=window)


def test_bad_ids_and_keys_are_refused(tmp_path: Path) -> None:
    reg = DeviceRegistry(tmp_path)
    with pytest.raises(RegistryError, match="device id"):
        reg.enroll("bad/id", transport=Transport.MQTT)
    with pytest.raises(RegistryError, match="16 bytes"):
        reg.enroll("b", transport=Transport.BLE, key_kind=KeyKind.BTHOME, key=bytes(32))


def test_rotate_key_makes_the_device_pending_with_a_new_key(tmp_path: Path) -> None:
    reg = DeviceRegistry(tmp_path)
    _, old = reg.enroll("dev-1", transport=Transport.MQTT)
    reg.activate(["dev-1"])
    rec, new = reg.rotate_key("dev-1", window_s=30)
    assert new != old and reg.key_of("dev-1") == new
    assert rec.status is DeviceStatus.PENDING and rec.key_epoch == 2


def test_revoke_destroys_the_key(tmp_path: Path) -> None:
    reg = DeviceRegistry(tmp_path)
    reg.enroll("dev-1", transport=Transport.MQTT)
    assert reg.revoke("dev-1").status is DeviceStatus.REVOKED
    assert reg.key_of("dev-1") is None
    with pytest.raises(RegistryError, match="revoked"):
        reg.rotate_key("dev-1")


def test_activate_changes_only_pending_devices(tmp_path: Path) -> None:
    reg = DeviceRegistry(tmp_path)
    reg.enroll("a", transport=Transport.MQTT)
    reg.enroll("b", transport=Transport.MQTT)
    reg.revoke("b")
    assert reg.activate(["a", "b", "missing"]) == ["a"]
    assert reg.get("a").status is DeviceStatus.ACTIVE  # type: ignore[union-attr]
    assert reg.get("b").status is DeviceStatus.REVOKED  # type: ignore[union-attr]


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    reg = DeviceRegistry(tmp_path)
    reg.enroll("dev-1", transport=Transport.MQTT)
    os.chmod(reg.keys_path, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        reg.snapshot()


def test_change_marker_moves_when_the_registry_changes(tmp_path: Path) -> None:
    reg = DeviceRegistry(tmp_path)
    before = reg.change_marker()
    reg.enroll("dev-1", transport=Transport.MQTT)
    after = reg.change_marker()
    assert after != before
    reg.activate(["dev-1"])
    assert reg.change_marker() != after


def _enroll_many(directory: str, prefix: str, n: int) -> None:
    reg = DeviceRegistry(Path(directory))
    for i in range(n):
        reg.enroll(f"{prefix}-{i}", transport=Transport.MQTT)


def test_two_processes_enrolling_at_once_lose_nothing(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_enroll_many, args=(str(tmp_path), p, 40)) for p in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    reg = DeviceRegistry(tmp_path)
    snap = reg.snapshot()
    assert len(snap.records) == 80 and set(snap.keys) == set(snap.records)
    assert len(json.loads(reg.keys_path.read_text())) == 80


def test_enroll_active_imports_many_devices_in_one_write(tmp_path: Path) -> None:
    reg = DeviceRegistry(tmp_path)
    n = reg.enroll_active((f"d{i}", Transport.MQTT, bytes([i]) * 32) for i in range(50))
    snap = reg.snapshot()
    assert n == 50 and len(snap.records) == 50
    assert snap.keys["d7"] == bytes([7]) * 32
    assert all(r.status is DeviceStatus.ACTIVE for r in snap.records.values())
    with pytest.raises(RegistryError, match="already enrolled"):
        reg.enroll_active([("d7", Transport.MQTT, bytes(32))])


@pytest.mark.skipif(os.geteuid() != 0, reason="changing file owners needs root")
def test_as_root_the_registry_files_keep_the_data_dirs_owner(tmp_path: Path) -> None:
    """`sudo edgence-agent pair` must leave files the service user can read."""
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, 4242, 4343)
    reg = DeviceRegistry(data / "devices")
    reg.enroll("dev-1", transport=Transport.MQTT)
    reg.activate(["dev-1"])
    for p in (reg.dir, reg.db_path, reg.keys_path, reg.lock_path):
        st = os.stat(p)
        assert (st.st_uid, st.st_gid) == (4242, 4343), p
    assert stat.S_IMODE(os.stat(reg.keys_path).st_mode) == 0o600


def test_a_revoked_id_is_enrolled_anew_only_with_replace_revoked(tmp_path: Path) -> None:
    reg = DeviceRegistry(tmp_path)
    _, old_key = reg.enroll("dev-1", transport=Transport.MQTT)
    with pytest.raises(RegistryError, match="rotate-key"):
        reg.enroll("dev-1", transport=Transport.MQTT, replace_revoked=True)  # not revoked
    reg.revoke("dev-1")
    with pytest.raises(RegistryError, match="--replace"):
        reg.enroll("dev-1", transport=Transport.MQTT)
    rec, key = reg.enroll("dev-1", transport=Transport.COAP, replace_revoked=True)
    assert rec.status is DeviceStatus.PENDING and rec.transport is Transport.COAP
    assert key != old_key and reg.key_of("dev-1") == key
    assert rec.key_epoch == 2 and rec.key_ref == "keys.json#dev-1@2"
    assert [r.id for r in reg.all()] == ["dev-1"]
