"""Stands in for MicroPython's `machine` on the host (no microcontroller here).

The watchdog is real in effect: a timer thread that, when not fed in time, restarts the
firmware process as the chip would reset. Deep sleep waits, then restarts the process with
reset cause DEEPSLEEP_RESET. RTC memory lives in a file of the emulated flash that survives
those restarts but not a power cycle (firmware_host removes it on a cold start). Pins read
high unless EDGENCE_SAFE_PIN_LOW is set (the safe-mode button held). UART(n) writes to the
serial device named by EDGENCE_UART<n>, or to the inherited descriptor EDGENCE_UART<n>_FD (the
board's end of a pty pair, whose other end the host reads). There is no I2C bus or ADC here.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

PWRON_RESET, HARD_RESET, WDT_RESET, DEEPSLEEP_RESET, SOFT_RESET = 1, 2, 3, 4, 5
_CAUSES = {"pwron": PWRON_RESET, "hard": HARD_RESET, "wdt": WDT_RESET, "deepsleep": DEEPSLEEP_RESET}
RTC_FILE = ".rtc-memory"
WDT_ARMED = False  # firmware_host keeps a crashed firmware's process while a watchdog runs


def _restart(cause: str) -> None:
    """The chip resets: this process is replaced by a fresh firmware_host run."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(
        sys.executable,
        [sys.executable, "-u", "-m", "tests.support.firmware_host", os.getcwd(), cause],
    )


def reset_cause() -> int:
    return _CAUSES.get(os.environ.get("EDGENCE_RESET_CAUSE", "pwron"), PWRON_RESET)


def reset() -> None:
    _restart("hard")


def deepsleep(ms: int = 0) -> None:
    time.sleep(ms / 1000)
    _restart("deepsleep")


def unique_id() -> bytes:
    return os.getcwd().encode()[-6:]


class WDT:
    """Restarts the process unless fed within `timeout` ms; cannot be stopped (as on ESP32)."""

    def __init__(self, id: int = 0, timeout: int = 5000) -> None:
        global WDT_ARMED
        WDT_ARMED = True
        self.timeout = timeout / 1000
        self.deadline = time.monotonic() + self.timeout
        threading.Thread(target=self._watch, daemon=True).start()

    def feed(self) -> None:
        self.deadline = time.monotonic() + self.timeout

    def _watch(self) -> None:
        while time.monotonic() < self.deadline:
            time.sleep(0.05)
        print("edgence event=watchdog_reset", flush=True)
        _restart("wdt")


class Pin:
    IN, OUT = 0, 1
    PULL_UP, PULL_DOWN = 1, 2

    def __init__(self, id: Any, mode: int = -1, pull: int = -1) -> None:
        self.id = id

    def value(self, v: int | None = None) -> int:
        if v is not None:  # an output: the level set is appended to .pins in the flash dir
            with open(".pins", "a") as f:
                f.write(f"{self.id}={int(v)}\n")
            return int(v)
        return 0 if os.environ.get("EDGENCE_SAFE_PIN_LOW") else 1


class RTC:
    def memory(self, data: bytes | None = None) -> bytes:
        if data is None:
            try:
                with open(RTC_FILE, "rb") as f:
                    return f.read()
            except OSError:
                return b""
        with open(RTC_FILE, "wb") as f:
            f.write(bytes(data))
        return b""


class UART:
    def __init__(self, id: int, baudrate: int = 115200, **kw: Any) -> None:
        fd = os.environ.get(f"EDGENCE_UART{id}_FD")
        if fd is not None:
            self.fd = int(fd)  # a pty master has no path: passed down open, kept across resets
            return
        path = os.environ.get(f"EDGENCE_UART{id}")
        if not path:
            raise OSError(19, f"no UART {id} on this host (set EDGENCE_UART{id})")
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY)

    def write(self, data: bytes) -> int:
        return os.write(self.fd, data)


class I2C:
    def __init__(self, *a: Any, **kw: Any) -> None:
        raise OSError(19, "no I2C bus on the host: use the simulated sensor")


class ADC:
    def __init__(self, *a: Any, **kw: Any) -> None:
        raise OSError(19, "no ADC on the host: use the simulated sensor")
