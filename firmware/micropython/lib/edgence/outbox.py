"""The frames taken while the link was down, kept in flash in append-only segment files.

Each frame is appended once as a record (2-byte length, the frame, CRC-32) to the newest
segment `ob.<seq>`; a segment holds at most `SEG` records and a new file starts after it, so
wear moves through the filesystem instead of rewriting one file. Delivery reads one record
at a time from the oldest segment; a fully delivered segment is deleted, and the position in
a partly delivered one is kept by commit() (once per round of deliveries, in two small
alternating files, edgence.slots): after a reset mid-round, that round's frames go again and
the gateway refuses them as replays, which loses nothing. When more than `capacity` frames
wait, the oldest segment is deleted whole and its frames counted in `dropped` (the loop reports
the total to the gateway). Memory use is one frame and a few integers, whatever the backlog; an
empty outbox costs no flash writes at all. A record cut short by a power cut, or one whose CRC
fails, is skipped and counted as dropped.
"""

import os

from edgence.serialline import crc32
from edgence.slots import Slots

PREFIX = "ob."
HEAD = "ob-head"
LEGACY = "outbox.txt"  # firmware 0.1: one frame per line
SEG_MAX = 16  # records per segment file (fewer for a small capacity, so drops stay fine)


def _u16(b):
    return (b[0] << 8) | b[1]


class Outbox:
    def __init__(self, directory=None, capacity=32):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.seg = min(SEG_MAX, max(1, capacity // 4))
        self.dropped = 0  # frames lost since boot (budget reached, or a corrupt record)
        self.writes = 0  # records appended (flash writes of whole records)
        self.dir = None if directory is None else directory.rstrip("/") + "/"
        self._mem = []  # no flash (tests, BLE): frames kept in RAM, same rules
        self._count = 0
        # oldest segment and the byte offset / index of its next record; newest segment and
        # how many records it holds
        self._hseq = self._hoff = self._hidx = self._hn = 0
        self._tseq = self._tn = 0
        self._peeked = None
        self._head = None
        self._committed = None
        if self.dir is not None:
            self._head = Slots(self.dir + HEAD)
            self._load()
            self._migrate()

    # -- flash layout --------------------------------------------------------------------

    def _path(self, seq):
        return "%s%s%d" % (self.dir, PREFIX, seq)

    def _segments(self):
        seqs = []
        for name in os.listdir(self.dir.rstrip("/") or "/"):
            if name.startswith(PREFIX):
                try:
                    seqs.append(int(name[len(PREFIX) :]))
                except ValueError:
                    pass
        seqs.sort()
        return seqs

    def _scan(self, seq, start=0):
        """Records from byte `start` of a segment that are complete (a torn tail is not)."""
        n = 0
        try:
            size = os.stat(self._path(seq))[6]
            with open(self._path(seq), "rb") as f:
                pos = start
                while pos + 2 <= size:
                    f.seek(pos)
                    end = pos + 2 + _u16(f.read(2)) + 4
                    if end > size:
                        break
                    n += 1
                    pos = end
        except OSError:
            pass
        return n

    def _load(self):
        seqs = self._segments()
        head = self._head.read()
        hseq, hoff = (head[0], head[1]) if head else (-1, 0)
        while seqs and seqs[0] < hseq:  # delivered, deleted late (power cut): gone now
            self._remove(seqs.pop(0))
        if not seqs:
            self._hseq = self._tseq = max(hseq, 0) + 1
            self._tn = self.seg  # full: the next put opens a new segment
            return
        self._hseq, self._tseq = seqs[0], seqs[-1]
        self._hoff = hoff if hseq == seqs[0] else 0
        for s in seqs:
            n = self._scan(s, self._hoff if s == self._hseq else 0)
            self._count += n
            if s == self._hseq:
                self._hn = n
            if s == self._tseq:
                self._tn = n + (self._hidx_base(s))
        self._trim()

    def _migrate(self):
        """Frames a 0.1 firmware left in outbox.txt join the queue, one line at a time."""
        path = self.dir + LEGACY
        try:
            os.stat(path)
        except OSError:
            return
        with open(path, "rb") as f:
            while True:
                line = f.readline()
                if not line:
                    break
                line = line.rstrip(b"\n")
                if line.startswith(b"{") and line.endswith(b"}"):  # a cut line is not a frame
                    self.put(line)
        os.remove(path)

    def _hidx_base(self, s):
        # Records of the newest segment before the head (it is also the oldest): they count
        # towards its fill level, not the backlog.
        if s != self._hseq or not self._hoff:
            return 0
        n = self._scan(s)
        return n - self._hn

    def _remove(self, seq):
        try:
            os.remove(self._path(seq))
        except OSError:
            pass

    # -- the queue -----------------------------------------------------------------------

    def __len__(self):
        return len(self._mem) if self.dir is None else self._count

    def _drop(self, n):
        self.dropped += n

    def put(self, frame):
        if self.dir is None:
            self._mem.append(frame)
            if len(self._mem) > self.capacity:
                self._mem.pop(0)
                self._drop(1)
            return
        if self._tn >= self.seg:
            self._tseq += 1
            self._tn = 0
            if self._count == 0:
                self._hseq, self._hoff, self._hidx, self._hn = self._tseq, 0, 0, 0
        try:
            self._append(frame)
        except OSError:
            # Flash full (or failing): a torn record may now end this segment, so the frame
            # goes to a new file, after making room by dropping the oldest segment (once).
            if self._hseq >= self._tseq:
                self._tn = self.seg
                raise
            self._drop(self._hn - self._hidx)
            self._count -= self._hn - self._hidx
            self._remove(self._hseq)
            self._next_segment()
            self._tseq += 1
            self._tn = 0
            try:
                self._append(frame)
            except OSError:
                self._tn = self.seg
                raise
        self.writes += 1
        self._tn += 1
        self._count += 1
        if self._hseq == self._tseq:
            self._hn += 1
        self._trim()

    def _append(self, frame):
        rec = bytearray(2)
        rec[0], rec[1] = len(frame) >> 8, len(frame) & 0xFF
        with open(self._path(self._tseq), "ab") as f:
            f.write(rec)
            f.write(frame)
            f.write(crc32(frame).to_bytes(4, "big"))

    def _trim(self):
        # Over budget: the whole oldest segment goes (one file deleted, no rewrite).
        while self._count > self.capacity and self._hseq < self._tseq:
            self._drop(self._hn - self._hidx)
            self._count -= self._hn - self._hidx
            self._remove(self._hseq)
            self._next_segment()
        self._peeked = None

    def _next_segment(self):
        self._hseq += 1
        self._hoff = self._hidx = 0
        self._hn = self._tn if self._hseq == self._tseq else self._scan(self._hseq)

    def peek(self):
        """The oldest frame (read from flash), or None when empty."""
        if self.dir is None:
            return self._mem[0] if self._mem else None
        while self._count:
            if self._peeked is not None:
                return self._peeked[0]
            try:
                with open(self._path(self._hseq), "rb") as f:
                    f.seek(self._hoff)
                    n = _u16(f.read(2))
                    frame = f.read(n)
                    tail = f.read(4)
            except OSError:
                frame, tail, n = b"", b"", 0
            if len(frame) == n and len(tail) == 4 and int.from_bytes(tail, "big") == crc32(frame):
                self._peeked = (frame, 2 + n + 4)
                return frame
            self._drop(1)  # corrupt: skip it
            self._advance(2 + n + 4)
        return None

    def pop(self):
        """The oldest frame was delivered: forget it."""
        if self.dir is None:
            return self._mem.pop(0)
        fr = self.peek()
        if fr is not None:
            self._advance(self._peeked[1])
        return fr

    def _advance(self, size):
        self._peeked = None
        self._count -= 1
        self._hidx += 1
        self._hoff += size
        if self._hidx < self._hn:
            return
        self._remove(self._hseq)  # fully delivered: the file goes, the next one is the head
        if self._hseq < self._tseq:
            self._next_segment()
        else:
            self._tn = self.seg
            self._hoff = self._hidx = self._hn = 0

    def commit(self):
        """Keep in flash where delivery resumes (a few bytes; nothing if it did not move or
        the oldest segment was deleted whole)."""
        if self.dir is None or self._hoff == 0:
            return
        pos = (self._hseq, self._hoff)
        if pos != self._committed:
            self._head.write(pos)
            self._committed = pos

    def frames(self):
        """Every waiting frame, oldest first (tests and tools; the loop reads one at a time)."""
        if self.dir is None:
            return list(self._mem)
        out = []
        seq, off = self._hseq, self._hoff
        while seq <= self._tseq:
            try:
                with open(self._path(seq), "rb") as f:
                    f.seek(off)
                    while True:
                        h = f.read(2)
                        if len(h) < 2:
                            break
                        fr = f.read(_u16(h))
                        if int.from_bytes(f.read(4), "big") == crc32(fr):
                            out.append(fr)
            except OSError:
                pass
            seq, off = seq + 1, 0
        return out
