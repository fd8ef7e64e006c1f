"""Safe mode and the watchdog.

boot.py arms the hardware watchdog unless the board starts in safe mode (a `SAFE` file in
flash, or the safe-mode pin held low at reset). The watchdog is fed only while the last
reading that actually went out is recent (`window_s`): a board that has lost its link for
longer than that resets itself, which also recovers a wedged Wi-Fi or network stack. Its
readings meanwhile sit in the outbox in flash and survive the reset.

The hardware timeout is short on some ports (RP2040: at most 8.3 s), so the loop calls
`feed()` often while it sleeps; `feed()` decides from the last delivery, not from being called.
"""

import os

try:
    import utime as time
except ImportError:  # pragma: no cover
    import time

SAFE_FILE = "SAFE"
MAX_HW_TIMEOUT_MS = 8000  # fits every port (RP2040's limit is 8388 ms)


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
        """A reading went out: the device is healthy for another window."""
        self.last = time.ticks_ms()
        self.feed()

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
        # Long enough for a 1 s sleep slice plus a send; never above what every port allows.
        hw_ms = min(MAX_HW_TIMEOUT_MS, max(2000, int(window_s * 1000)))
        wdt = machine.WDT(timeout=hw_ms)
    _current = Watchdog(wdt, window_s)
    return _current


def current():
    return _current
