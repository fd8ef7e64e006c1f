"""The device registry: which devices are enrolled, how they talk, their status and keys.

Device records live in a tinydb file, device keys in a separate 0600 file. Both are rewritten
atomically (temporary file, fsync, rename) under an advisory lock, because the `pair` command
and the running agent change them from different processes. Per-frame counters are NOT here:
they are kept in the journal, in the same transaction as the frame's observations.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import time
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from tinydb import Query, TinyDB
from tinydb.storages import Storage

from agent.atomicfile import atomic_write, owner_to_keep
from agent.devices.auth import KEY_BYTES
from agent.errors import AgentError
from agent.model import NAME_RE, UNIT_RE, Transport
from agent.secrets import check_secret_mode

MAX_JOIN_WINDOW_S = 254  # as Zigbee's permit_join: a window, never permanent
DEFAULT_JOIN_WINDOW_S = 120


class RegistryError(AgentError):
    """The registry cannot be read or changed (unknown device, bad argument, I/O error)."""


class DeviceStatus(StrEnum):
    PENDING = "pending"  # enrolled, waiting for a first frame that verifies with its key
    ACTIVE = "active"
    REVOKED = "revoked"


class KeyKind(StrEnum):
    HMAC = "hmac"  # 32-byte key, HMAC-SHA256 over the frame's canonical bytes
    BTHOME = "bthome"  # 16-byte BTHome v2 bindkey (AES-CCM); the BLE source verifies


@dataclass(frozen=True)
class DeviceRecord:
    id: str
    name: str
    transport: Transport
    address: str
    key_kind: KeyKind
    status: DeviceStatus
    created: int
    sensors: tuple[tuple[str, str], ...] = ()
    last_seen: int | None = None
    join_until: float | None = None
    key_epoch: int = 1  # incremented by rotate-key

    @property
    def key_ref(self) -> str:
        return f"keys.json#{self.id}@{self.key_epoch}"

    def join_open(self, now: float) -> bool:
        return self.status is DeviceStatus.PENDING and (self.join_until or 0.0) > now

    def to_doc(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["transport"] = str(self.transport)
        doc["key_kind"] = str(self.key_kind)
        doc["status"] = str(self.status)
        doc["sensors"] = [list(s) for s in self.sensors]
        return doc

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> DeviceRecord:
        return cls(
            id=str(doc["id"]),
            name=str(doc.get("name", doc["id"])),
            transport=Transport(doc["transport"]),
            address=str(doc.get("address", "")),
            key_kind=KeyKind(doc.get("key_kind", "hmac")),
            status=DeviceStatus(doc["status"]),
            created=int(doc.get("created", 0)),
            sensors=tuple((str(s), str(u)) for s, u in doc.get("sensors", ())),
            last_seen=doc.get("last_seen"),
            join_until=doc.get("join_until"),
            key_epoch=int(doc.get("key_epoch", 1)),
        )


class AtomicJSONStorage(Storage):
    """tinydb storage that never leaves a half-written file: readers in another process see
    the old or the new registry, nothing in between (tinydb's JSONStorage truncates in place)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def read(self) -> dict[str, dict[str, Any]] | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        if not raw.strip():
            return None
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise RegistryError(f"{self.path}: not a readable registry ({exc})") from None
        if not isinstance(data, dict):
            raise RegistryError(f"{self.path}: not a readable registry")
        return data

    def write(self, data: dict[str, dict[str, Any]]) -> None:
        atomic_write(self.path, json.dumps(data, sort_keys=True, indent=1).encode())

    def close(self) -> None:
        pass


def validate_device_id(device_id: str) -> str:
    if not NAME_RE.match(device_id):
        raise RegistryError(
            f"device id {device_id!r} must be 1-32 characters of A-Z a-z 0-9 _ . : -"
        )
    return device_id


@dataclass
class RegistrySnapshot:
    """What the agent's gate needs, read in one go: records and their keys."""

    records: dict[str, DeviceRecord] = field(default_factory=dict)
    keys: dict[str, bytes] = field(default_factory=dict)


class DeviceRegistry:
    """`DeviceRegistry(dir)`: registry.json (records), keys.json (0600, device keys)."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.db_path = self.dir / "registry.json"
        self.keys_path = self.dir / "keys.json"
        self.lock_path = self.dir / "registry.lock"

    # -- plumbing --------------------------------------------------------------------------
    def _ensure_dir(self) -> None:
        if not self.dir.exists():
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            owner = owner_to_keep(self.dir.parent)  # the data dir's owner, when run as root
            if owner is not None:
                os.chown(self.dir, *owner)

    @contextmanager
    def _locked(self, exclusive: bool = True) -> Iterator[TinyDB]:
        self._ensure_dir()
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            owner = owner_to_keep(self.dir)
            if owner is not None:
                os.fchown(fd, *owner)
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            db = TinyDB(str(self.db_path), storage=AtomicJSONStorage)
            try:
                yield db
            finally:
                db.close()
        finally:
            os.close(fd)  # closing drops the lock

    def _read_keys(self) -> dict[str, str]:
        if not self.keys_path.exists():
            return {}
        check_secret_mode(self.keys_path)
        try:
            data = json.loads(self.keys_path.read_bytes())
        except ValueError as exc:
            raise RegistryError(f"{self.keys_path}: not a readable key file ({exc})") from None
        if not isinstance(data, dict):
            raise RegistryError(f"{self.keys_path}: not a readable key file")
        return {str(k): str(v) for k, v in data.items()}

    def _write_keys(self, keys: Mapping[str, str]) -> None:
        atomic_write(self.keys_path, json.dumps(dict(keys), sort_keys=True).encode(), 0o600)

    def _get(self, db: TinyDB, device_id: str) -> DeviceRecord:
        doc = db.get(Query().id == device_id)
        if doc is None or isinstance(doc, list):
            raise RegistryError(f"no device {device_id!r} in {self.db_path}")
        return DeviceRecord.from_doc(doc)

    def _put(self, db: TinyDB, rec: DeviceRecord) -> None:
        db.upsert(rec.to_doc(), Query().id == rec.id)

    def change_marker(self) -> tuple[int, ...]:
        """Changes whenever either file is replaced: cheap to poll (two stat calls)."""
        out: list[int] = []
        for p in (self.db_path, self.keys_path):
            try:
                st = p.stat()
                out += [st.st_ino, st.st_mtime_ns, st.st_size]
            except FileNotFoundError:
                out += [0, 0, 0]
        return tuple(out)

    # -- queries ---------------------------------------------------------------------------
    def get(self, device_id: str) -> DeviceRecord | None:
        with self._locked(exclusive=False) as db:
            doc = db.get(Query().id == device_id)
        return None if doc is None or isinstance(doc, list) else DeviceRecord.from_doc(doc)

    def all(self) -> list[DeviceRecord]:
        with self._locked(exclusive=False) as db:
            docs = db.all()
        return sorted((DeviceRecord.from_doc(d) for d in docs), key=lambda r: r.id)

    def key_of(self, device_id: str) -> bytes | None:
        with self._locked(exclusive=False):
            k = self._read_keys().get(device_id)
        return None if k is None else bytes.fromhex(k)

    def snapshot(self) -> RegistrySnapshot:
        with self._locked(exclusive=False) as db:
            docs = db.all()
            keys = self._read_keys()
        records = {r.id: r for r in map(DeviceRecord.from_doc, docs)}
        return RegistrySnapshot(
            records, {d: bytes.fromhex(k) for d, k in keys.items() if d in records}
        )

    # -- changes ---------------------------------------------------------------------------
    def enroll(
        self,
        device_id: str,
        *,
        transport: Transport,
        name: str | None = None,
        address: str = "",
        sensors: Iterable[tuple[str, str]] = (),
        key: bytes | None = None,
        key_kind: KeyKind = KeyKind.HMAC,
        window_s: float = DEFAULT_JOIN_WINDOW_S,
        now: float | None = None,
        replace_revoked: bool = False,
    ) -> tuple[DeviceRecord, bytes]:
        """Record a new device as pending with a fresh (or the given) key and open its join
        window. Refuses an id that is already enrolled (use reopen or rotate_key), except a
        revoked one with `replace_revoked` (`pair --replace`): the id is enrolled anew, with a key
        epoch above the revoked one's."""
        validate_device_id(device_id)
        _check_window(window_s)
        sensors = tuple(sensors)
        for s, u in sensors:
            if not NAME_RE.match(s) or not UNIT_RE.match(u):
                raise RegistryError(f"sensor {s!r} / unit {u!r}: not a valid name and unit")
        key = _check_key(key, key_kind)
        now = time.time() if now is None else now
        rec = DeviceRecord(
            id=device_id,
            name=name or device_id,
            transport=transport,
            address=address,
            key_kind=key_kind,
            status=DeviceStatus.PENDING,
            created=int(now),
            sensors=sensors,
            join_until=now + window_s,
        )
        with self._locked() as db:
            if db.contains(Query().id == device_id):
                old = self._get(db, device_id)
                if old.status is not DeviceStatus.REVOKED:
                    raise RegistryError(
                        f"device {device_id!r} is already enrolled ({old.status}); use "
                        f"`devices rotate-key {device_id}` for a new key, or `devices revoke "
                        f"{device_id}` and then `pair {device_id} --replace`"
                    )
                if not replace_revoked:
                    raise RegistryError(
                        f"device {device_id!r} was revoked; enroll it anew with "
                        f"`pair {device_id} --replace`"
                    )
                rec = replace(rec, key_epoch=old.key_epoch + 1)
            keys = self._read_keys()
            keys[device_id] = key.hex()
            self._write_keys(keys)  # the key first: a record never points at no key
            self._put(db, rec)
        return rec, key

    def enroll_active(
        self, devices: Iterable[tuple[str, Transport, bytes]], now: float | None = None
    ) -> int:
        """Record many devices as active with known keys in one write (a fleet migrated from
        another gateway, benchmarks); ids already enrolled are refused."""
        now = time.time() if now is None else now
        recs, new_keys = [], {}
        for device_id, transport, key in devices:
            validate_device_id(device_id)
            new_keys[device_id] = _check_key(key, KeyKind.HMAC).hex()
            recs.append(
                DeviceRecord(
                    id=device_id,
                    name=device_id,
                    transport=transport,
                    address="",
                    key_kind=KeyKind.HMAC,
                    status=DeviceStatus.ACTIVE,
                    created=int(now),
                )
            )
        with self._locked() as db:
            existing = {d["id"] for d in db.all()} & set(new_keys)
            if existing or len(new_keys) != len(recs):
                raise RegistryError(f"already enrolled or repeated: {sorted(existing)[:5]}")
            keys = self._read_keys() | new_keys
            self._write_keys(keys)
            db.insert_multiple(r.to_doc() for r in recs)
        return len(recs)

    def reopen(self, device_id: str, window_s: float, now: float | None = None) -> DeviceRecord:
        """Open the join window of a pending device again (its key stays)."""
        _check_window(window_s)
        now = time.time() if now is None else now
        with self._locked() as db:
            rec = self._get(db, device_id)
            if rec.status is not DeviceStatus.PENDING:
                raise RegistryError(f"device {device_id!r} is {rec.status}, not pending")
            rec = replace(rec, join_until=now + window_s)
            self._put(db, rec)
        return rec

    def rotate_key(
        self,
        device_id: str,
        *,
        key: bytes | None = None,
        window_s: float = DEFAULT_JOIN_WINDOW_S,
        now: float | None = None,
    ) -> tuple[DeviceRecord, bytes]:
        """A new key: frames under the old one are refused from now on; the device is pending
        until a frame under the new key verifies (within the window)."""
        _check_window(window_s)
        now = time.time() if now is None else now
        with self._locked() as db:
            rec = self._get(db, device_id)
            if rec.status is DeviceStatus.REVOKED:
                raise RegistryError(f"device {device_id!r} is revoked; enroll it anew")
            key = _check_key(key, rec.key_kind)
            keys = self._read_keys()
            keys[device_id] = key.hex()
            rec = replace(
                rec,
                status=DeviceStatus.PENDING,
                join_until=now + window_s,
                key_epoch=rec.key_epoch + 1,
            )
            self._write_keys(keys)
            self._put(db, rec)
        return rec, key

    def revoke(self, device_id: str) -> DeviceRecord:
        """Refuse the device's frames from now on; its key is destroyed."""
        with self._locked() as db:
            rec = replace(self._get(db, device_id), status=DeviceStatus.REVOKED, join_until=None)
            keys = self._read_keys()
            if keys.pop(device_id, None) is not None:
                self._write_keys(keys)
            self._put(db, rec)
        return rec

    def activate(self, device_ids: Iterable[str], now: float | None = None) -> list[str]:
        """Pending -> active for devices whose first frame verified; returns those changed."""
        now = time.time() if now is None else now
        changed = []
        with self._locked() as db:
            for d in device_ids:
                doc = db.get(Query().id == d)
                if doc is None or isinstance(doc, list):
                    continue
                rec = DeviceRecord.from_doc(doc)
                if rec.status is DeviceStatus.PENDING:
                    self._put(
                        db,
                        replace(
                            rec, status=DeviceStatus.ACTIVE, join_until=None, last_seen=int(now)
                        ),
                    )
                    changed.append(d)
        return changed

    def touch(self, last_seen: MutableMapping[str, int]) -> None:
        """Record when devices were last heard of (batched by the agent: one write a minute)."""
        if not last_seen:
            return
        with self._locked() as db:
            for d, t in last_seen.items():
                db.update({"last_seen": t}, Query().id == d)


def _check_window(window_s: float) -> None:
    if not 1 <= window_s <= MAX_JOIN_WINDOW_S:
        raise RegistryError(
            f"join window {window_s:g}s: must be 1 to {MAX_JOIN_WINDOW_S} seconds "
            "(pairing is a short window, never permanent)"
        )


def _check_key(key: bytes | None, kind: KeyKind) -> bytes:
    size = KEY_BYTES if kind is KeyKind.HMAC else 16
    if key is None:
        return secrets.token_bytes(size)
    if len(key) != size:
        raise RegistryError(f"a {kind} key is {size} bytes; got {len(key)}")
    return key
