"""An over-the-air update as commands (docs/ota.md): the manifest (version, block size, boots
allowed, each file's path, size and SHA-256), its MAC under the device key bound to the device
id and the session (the downlink counter of the device's `ota_begin`), and the blocks as
command arguments. Pure: no I/O; the firmware's side is firmware/micropython/lib/edgence/ota.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterator
from dataclasses import dataclass

from agent.downlink.codec import ArgValue
from agent.model import NAME_RE

PREFIX = b"EDGENCE-OTA-1\n"
MAX_FILES = 32
MAX_FILE = 65536
MAX_TOTAL = 262144
PIECE = 64  # one command argument: 64 base64 characters = 48 bytes
PIECES = 5
MAX_BLOCK = PIECES * PIECE * 3 // 4  # 240 bytes
MAX_BOOTS = 10
# What an update may not replace: the switch and rollback, and the device's provisioning.
FIXED = frozenset({"boot.py", "lib/otaboot.py", "lib/otaboot.mpy", "config.json"})
_PART_RE = re.compile(r"^[A-Za-z0-9_.-]+\Z")


class OtaError(ValueError):
    """An update that breaks the rules; `reason` is a stable label, `detail` says why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def path_refusal(path: str) -> str | None:
    """Why `path` cannot be in an update (None if it can)."""
    if len(path) > 64:
        return "longer than 64 characters"
    if path in FIXED:
        return "boot.py, lib/otaboot and config.json are never replaced over the air"
    parts = path.split("/")
    if path.startswith("ota/") or any(p in ("", ".", "..") or not _PART_RE.match(p) for p in parts):
        return "a relative path of A-Z a-z 0-9 _ . - parts, outside ota/"
    if not path.endswith((".py", ".mpy")):
        return "only .py and .mpy files are updated"
    return None


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: str
    size: int
    sha256: str  # lowercase hex


@dataclass(frozen=True, slots=True)
class Manifest:
    version: str
    block_size: int
    boots: int
    files: tuple[FileEntry, ...]

    def __post_init__(self) -> None:
        if not NAME_RE.match(self.version):
            raise OtaError("bad_version", f"{self.version!r}: 1-32 of A-Z a-z 0-9 _ . : -")
        if not 16 <= self.block_size <= MAX_BLOCK:
            raise OtaError("oversize", f"block size {self.block_size}: 16..{MAX_BLOCK} bytes")
        if not 1 <= self.boots <= MAX_BOOTS:
            raise OtaError("bad_args", f"boots {self.boots}: 1..{MAX_BOOTS}")
        if not 1 <= len(self.files) <= MAX_FILES:
            raise OtaError("oversize", f"{len(self.files)} files: 1..{MAX_FILES}")
        total = 0
        for f in self.files:
            why = path_refusal(f.path)
            if why is not None:
                raise OtaError("bad_path", f"{f.path!r}: {why}")
            if not 0 <= f.size <= MAX_FILE:
                raise OtaError("oversize", f"{f.path}: {f.size} bytes, at most {MAX_FILE}")
            total += f.size
        if total > MAX_TOTAL:
            raise OtaError("oversize", f"{total} bytes in all, at most {MAX_TOTAL}")
        if len({f.path for f in self.files}) != len(self.files):
            raise OtaError("bad_path", "a path is listed twice")

    def body(self) -> bytes:
        """<version>\\n<block size>\\n<boots>\\n then <path>\\t<size>\\t<sha256>\\n per file."""
        text = f"{self.version}\n{self.block_size}\n{self.boots}\n"
        text += "".join(f"{f.path}\t{f.size}\t{f.sha256}\n" for f in self.files)
        return text.encode("ascii")

    def digest(self) -> str:
        """What the device reports (`mh`) for the manifest it holds: resuming needs a match."""
        return hashlib.sha256(self.body()).hexdigest()

    def blocks_in(self, k: int) -> int:
        return -(-self.files[k].size // self.block_size)


def build_manifest(
    version: str, files: list[tuple[str, bytes]], block_size: int = MAX_BLOCK, boots: int = 3
) -> Manifest:
    entries = tuple(FileEntry(p, len(c), hashlib.sha256(c).hexdigest()) for p, c in sorted(files))
    return Manifest(version, block_size, boots, entries)


def manifest_canonical(device_id: str, session: int, m: Manifest) -> bytes:
    """EDGENCE-OTA-1\\n<device>\\n<session>\\n + the manifest's body."""
    return PREFIX + f"{device_id}\n{session}\n".encode("ascii") + m.body()


def manifest_mac(key: bytes, device_id: str, session: int, m: Manifest) -> str:
    return hmac.digest(key, manifest_canonical(device_id, session, m), "sha256").hex()


def begin_args(m: Manifest) -> dict[str, ArgValue]:
    return {"v": m.version, "bs": m.block_size, "count": len(m.files), "boots": m.boots}


def file_args(m: Manifest, k: int) -> dict[str, ArgValue]:
    f = m.files[k]
    return {"k": k, "p": f.path, "s": f.size, "h": f.sha256}


def block_args(k: int, i: int, data: bytes) -> dict[str, ArgValue]:
    """File k, block i: its SHA-256 and its bytes as base64 in pieces d0..d4."""
    if len(data) > MAX_BLOCK:
        raise OtaError("oversize", f"block of {len(data)} bytes, at most {MAX_BLOCK}")
    text = base64.b64encode(data).decode("ascii")
    args: dict[str, ArgValue] = {"k": k, "i": i, "h": hashlib.sha256(data).hexdigest()}
    for j in range(0, len(text), PIECE):
        args[f"d{j // PIECE}"] = text[j : j + PIECE]
    return args


def blocks(
    m: Manifest, contents: dict[str, bytes], k: int = 0, i: int = 0
) -> Iterator[tuple[int, int, bytes]]:
    """(file, block, bytes) from file k block i on, in the order the device takes them."""
    bs = m.block_size
    for kk in range(k, len(m.files)):
        data = contents[m.files[kk].path]
        for ii in range(i if kk == k else 0, m.blocks_in(kk)):
            yield kk, ii, data[ii * bs : (ii + 1) * bs]


__all__ = [
    "FIXED",
    "MAX_BLOCK",
    "FileEntry",
    "Manifest",
    "OtaError",
    "begin_args",
    "block_args",
    "blocks",
    "build_manifest",
    "file_args",
    "manifest_canonical",
    "manifest_mac",
    "path_refusal",
]
