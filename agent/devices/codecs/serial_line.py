"""Serial framing (docs/device-frame.md, "Over serial"): a byte stream in, checked lines out.

Pure: no I/O. `LineSplitter` cuts a stream of chunks into lines with a bound on line length
(a line without newline cannot eat memory); `frame_payload` checks a frame line's CRC-32 and
finds the frame again after leading garbage; `classify_line` tells frames from NMEA sentences.
"""

from __future__ import annotations

import re
import zlib
from enum import Enum

from agent.errors import FrameError

DEFAULT_MAX_LINE = 4096 + 16  # a maximal frame, '*', 8 hex digits, CR
_CRC_SUFFIX = re.compile(rb"\*([0-9a-f]{8})\Z")  # lowercase only: a flipped case bit is caught
_NMEA_SUFFIX = re.compile(rb"\*[0-9A-Fa-f]{2}\Z")
_MAX_RESYNC = 64  # candidate frame starts tried in one line before it is called garbage


class LineKind(Enum):
    FRAME = "frame"
    NMEA = "nmea"
    GARBAGE = "garbage"


class LineSplitter:
    """Cuts chunks into lines at LF (a CR before it is dropped). A line longer than `max_line`
    is discarded up to its next LF and counted in `overlong`; empty lines are skipped."""

    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        self.max_line = max_line
        self.overlong = 0
        self._tail = b""
        self._discarding = False  # inside an overlong line: drop bytes until the next LF

    def reset(self) -> None:
        """Forget a partial line (the port was closed: what follows is a new stream)."""
        self._tail = b""
        self._discarding = False

    @property
    def pending(self) -> int:
        return len(self._tail)

    def feed(self, chunk: bytes) -> list[bytes]:
        if b"\n" not in chunk:
            if self._discarding:
                return []
            self._tail += chunk
            if len(self._tail) > self.max_line:
                self._tail = b""
                self._discarding = True
                self.overlong += 1
            return []
        parts = (self._tail + chunk).split(b"\n") if self._tail else chunk.split(b"\n")
        tail = parts.pop()
        if self._discarding:
            parts[0] = b""  # the end of the overlong line
            self._discarding = False
        max_line = self.max_line
        lines = []
        for p in parts:
            if len(p) > max_line:
                self.overlong += 1
                continue
            if p.endswith(b"\r"):
                p = p[:-1]
            if p:
                lines.append(p)
        if len(tail) > max_line:
            tail = b""
            self._discarding = True
            self.overlong += 1
        self._tail = tail
        return lines


def classify_line(line: bytes) -> LineKind:
    """FRAME if the line ends in *XXXXXXXX (CRC-32), NMEA if in *hh, GARBAGE otherwise."""
    n = len(line)
    if n >= 10 and line[n - 9] == 0x2A:  # '*'
        return LineKind.FRAME
    if n >= 4 and line[n - 3] == 0x2A and b"$" in line:
        return LineKind.NMEA
    return LineKind.GARBAGE


def frame_payload(line: bytes) -> tuple[bytes, int]:
    """The frame bytes of a frame line whose CRC-32 matches, and how many garbage bytes before
    it were skipped. The CRC covers the frame's bytes from its '{' up to the '*'.

    Garbage glued to the front of a frame (noise, or the rest of a line cut by an unplug) is
    skipped by trying each '{' as the start; only a start whose CRC matches is accepted.
    """
    m = _CRC_SUFFIX.search(line)
    if m is None:
        raise FrameError("no_crc", "a frame line ends in '*' and 8 lowercase hex digits (CRC-32)")
    want = int(m.group(1), 16)
    body = line[: m.start()]
    if body[:1] == b"{" and zlib.crc32(body) == want:  # the common case: one CRC
        return body, 0
    # A frame starts with '{"' (compact JSON); only such places are tried, at most
    # _MAX_RESYNC of them, so a hostile line costs a bounded number of CRCs.
    start = body.find(b'{"', 1)
    for _ in range(_MAX_RESYNC):
        if start < 0:
            break
        if zlib.crc32(body[start:]) == want:
            return body[start:], start
        start = body.find(b'{"', start + 1)
    raise FrameError("bad_crc", f"CRC-32 {want:08x} does not match the line's frame")


def encode_serial_frame(frame: bytes) -> bytes:
    """A frame as one serial line: frame, '*', CRC-32 in 8 lowercase hex digits, CR LF."""
    if b"\n" in frame or b"\r" in frame:
        raise ValueError("a serial frame must be on one line (compact JSON has no newlines)")
    return b"%s*%08x\r\n" % (frame, zlib.crc32(frame))
