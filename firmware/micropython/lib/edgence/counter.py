"""The frame counter, kept across reboots with few flash writes.

Counters are reserved in blocks: flash holds only the end of the reserved block and is written
once per `block` frames. After a reboot the device continues from the stored end (the rest of
the old block is skipped), so a counter is never reused even if power fails mid-block.
Between deep sleeps (ESP32) the exact counter also sits in RTC memory, which survives deep
sleep but not power loss; it is read once after waking and used only inside the reserved block.
"""

import os

FILE = "counter.dat"
_RTC_MAGIC = b"EDGC"


class CounterError(Exception):
    """The stored counter is unreadable: the device must be re-provisioned (rotate-key)."""


def _read_int(path, strict=True):
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    try:
        return int(text)
    except ValueError:
        if not strict:
            return None  # a temporary file cut short by a power loss
        raise CounterError(
            "%s holds %r, not a counter: re-pair the device" % (path, text[:20])
        ) from None


def read_stored(path):
    """The stored block end: the larger of the file and a complete temporary copy (a power cut
    between the two steps of a write on a filesystem without atomic rename leaves either)."""
    values = [v for v in (_read_int(path), _read_int(path + ".tmp", strict=False)) if v is not None]
    return max(values) if values else None


def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "wb" if isinstance(text, bytes) else "w") as f:
        f.write(text)
    try:
        os.rename(tmp, path)  # littlefs (ESP32, RP2 defaults) replaces atomically
    except OSError:
        # FAT refuses to rename onto an existing file: drop the old one first; the complete
        # .tmp is what read_stored() finds if power fails in between.
        os.remove(path)
        os.rename(tmp, path)


class BlockCounter:
    """next() gives strictly increasing counters; `writes` counts flash writes made."""

    def __init__(self, directory, start=0, block=64, rtc=None):
        if block < 1:
            raise ValueError("block must be at least 1")
        self.path = directory.rstrip("/") + "/" + FILE
        self.block = block
        self.rtc = rtc
        self.writes = 0
        stored = read_stored(self.path)
        # counter_start from a (new) bundle wins when it is ahead: rotate-key continues there.
        self._end = max(start, stored if stored is not None else 0)
        self._next = self._end
        retained = self._from_rtc()
        if retained is not None and start <= retained < self._end:
            self._next = retained

    def _from_rtc(self):
        if self.rtc is None:
            return None
        mem = bytes(self.rtc.memory())
        if len(mem) != 12 or mem[:4] != _RTC_MAGIC:
            return None
        # Used once: RTC memory also survives a watchdog or reset-button reset, after which the
        # counter it holds may already have gone out. Only retain() just before deep sleep
        # makes it valid again.
        self.rtc.memory(bytes(12))
        return int.from_bytes(mem[4:], "little")

    def peek(self):
        return self._next

    def next(self):
        n = self._next
        if n >= self._end:
            self._end = n + self.block
            write_atomic(self.path, "%d\n" % self._end)
            self.writes += 1
        self._next = n + 1
        return n

    def retain(self):
        """Before deep sleep: keep the exact next counter in RTC memory (no flash write)."""
        if self.rtc is not None:
            self.rtc.memory(_RTC_MAGIC + self._next.to_bytes(8, "little"))
