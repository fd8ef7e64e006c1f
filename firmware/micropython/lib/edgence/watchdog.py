"""Safe mode and the watchdog.

boot.py arms the hardware watchdog unless the board starts in safe mode (a `SAFE` file in
flash, or the safe-mode pin held low at reset). The watchdog is fed only while the last
reading that actually went out is recent (`window_s`): a board that has lost its link for
longer than that resets itself, which also recovers a wedged Wi-Fi or network stack. Its
readings meanwhile sit in the outbox in flash and survive the reset.

The hardware timeout is short on some ports (RP2040: at most 8.3 s), so every wait of the
firmware (sleep slices, Wi-Fi association, connect, socket reads) is cut into slices of at most
a second and calls `feed()` between them through one idle hook (Node.idle); `feed()` decides
from the last delivery, not from being called. A loop that hangs outside such a wait stops
feeding, and the board resets.

Supported boards (`SUPPORTED`, by sys.platform): ESP32 (esp32) and Raspberry Pi Pico W (rp2).
The ESP8266 is not: its 38 KB heap does not hold the firmware, and its watchdog takes only a
5000 ms timeout; boot.py refuses it with a line saying so.
"""

import os
import sys

try:
    import utime as time
except ImportError:  # pragma: no cover
    import time

SAFE_FILE = "SAFE"
MAX_HW_TIMEOUT_MS = 8000  # the longest timeout used on any board
# The longest hardware watchdog timeout each port accepts, where below MAX_HW_TIMEOUT_MS.
HW_LIMIT_MS = {"rp2": 8388, "esp8266": 5000}
SUPPORTED = ("esp32", "rp2")


def board_supported(platform=None):
    """True on the supported boards, and on a host (CPython) running the firmware emulated."""
    p = sys.platform if platform is None else platform
    return p in SUPPORTED or p in ("linux", "darwin", "win32", "webassembly")


def hw_timeout_ms(window_s, platform=None):
    p = sys.platform if platform is None else platform
    ms = min(MAX_HW_TIMEOUT_MS, HW_LIMIT_MS.get(p, MAX_HW_TIMEOUT_MS))
    return min(ms, max(2000, int(window_s * 1000)))


def safe_mode(pin=None):
    try:
        os.stat(SAFE_FILE)
        return True
    except OSError:
        pass
    return pin is not None and pin.value() == 0


class Watchdog:
    def __init__(self, wdt, window_s):
        self.wdt = wdt  # machine.WDT, or None in safe mode
        self.window_ms = int(window_s * 1000)
        self.last = time.ticks_ms()
        self.feeds = 0

    def delivered(self):
        """A reading went out: the device is healthy for another window. Fed at once, without
        asking the clock again (a short window could end between the two readings of it)."""
        self.last = time.ticks_ms()
        if self.wdt is not None:
            self.wdt.feed()
            self.feeds += 1

    def healthy(self):
        return time.ticks_diff(time.ticks_ms(), self.last) < self.window_ms

    def feed(self):
        if self.wdt is not None and self.healthy():
            self.wdt.feed()
            self.feeds += 1


_current = None


def arm(machine, window_s, safe_pin=None):
    """Called from boot.py. Returns the Watchdog main.py keeps using (also via current())."""
    global _current
    wdt = None
    if not safe_mode(safe_pin):
        # Long enough for a 1 s wait slice; never above what the port allows.
        wdt = machine.WDT(timeout=hw_timeout_ms(window_s))
    _current = Watchdog(wdt, window_s)
    return _current


def current():
    return _current
