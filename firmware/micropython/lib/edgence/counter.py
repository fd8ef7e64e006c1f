"""The frame counter, kept across reboots with few flash writes.

Counters are reserved in blocks: flash holds only the end of the reserved block, written once
per `block` frames into two alternating files with a CRC (edgence.slots), so a power cut
mid-write on littlefs or FAT leaves the previous end readable. After a reboot the device
continues from the stored end (the rest of the old block is skipped): a counter is never reused.
Where the board has RTC memory (ESP32), it holds the next unused counter, written at every
next() before that counter is handed out: it survives deep sleep and watchdog or soft resets
(not power loss), so after those the board continues at the exact counter instead of skipping
to the end of the block. It names a counter that never went out, so it cannot cause reuse,
and it is used only inside the reserved block.
"""

import os

from edgence.slots import Slots

FILE = "counter"  # counter.a / counter.b (edgence.slots)
LEGACY = "counter.dat"
_RTC_MAGIC = b"EDGC"


class CounterError(Exception):
    """No stored counter can be trusted: the device must be re-paired (devices rotate-key)."""


def _read_legacy(path):
    """counter.dat (and its .tmp) as firmware 0.1 wrote them: the larger complete value, None
    if neither exists; a counter.dat that is there but unreadable is an error."""
    best, bad = None, False
    for p in (path, path + ".tmp"):
        try:
            with open(p) as f:
                text = f.read(32)
        except OSError:
            continue
        try:
            v = int(text.strip())
        except ValueError:
            bad = bad or p == path  # a torn .tmp is a cut write; a torn counter.dat is not
            continue
        best = v if best is None or v > best else best
    if best is None and bad:
        raise CounterError("%s is unreadable: re-pair the device (devices rotate-key)" % path)
    return best


class BlockCounter:
    """next() gives strictly increasing counters; `writes` counts flash writes made."""

    def __init__(self, directory, start=0, block=64, rtc=None):
        if block < 1:
            raise ValueError("block must be at least 1")
        base = directory.rstrip("/") + "/"
        self.slots = Slots(base + FILE)
        self.legacy = base + LEGACY
        self.block = block
        self.rtc = rtc
        self.writes = 0
        got = self.slots.read()
        if got is None and self.slots.corrupt():
            raise CounterError(
                "%s.a and .b are both unreadable: re-pair the device (devices rotate-key)"
                % (base + FILE)
            )
        stored = got[0] if got else None
        old = _read_legacy(self.legacy)
        if old is not None and (stored is None or old > stored):
            stored = old
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
        return int.from_bytes(mem[4:], "little")

    def peek(self):
        return self._next

    def next(self):
        n = self._next
        if n >= self._end:
            self._end = n + self.block
            self.slots.write((self._end,))
            self.writes += 1
            if self.writes == 1:
                for p in (self.legacy, self.legacy + ".tmp"):  # migrated: the slots hold it
                    try:
                        os.remove(p)
                    except OSError:
                        pass
        self._next = n + 1
        self.retain()  # before n goes out: RTC memory names a counter never used
        return n

    def retain(self):
        """Keep the exact next counter in RTC memory (no flash write); next() calls it."""
        if self.rtc is not None:
            self.rtc.memory(_RTC_MAGIC + self._next.to_bytes(8, "little"))
