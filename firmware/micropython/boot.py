# Runs first at every reset. Safe mode (a file named SAFE in flash, or the safe-mode pin held
# low at reset: GPIO0/BOOT on ESP32, GP15 on the Pico W) skips the watchdog and main.py's loop,
# leaving the REPL free for mpremote / `edgence-agent firmware deploy`. Without a valid
# config.json, on a board the firmware does not support, or with a counter in flash that
# cannot be trusted, the watchdog is not armed either: the board says why and waits at the
# REPL (a watchdog would only reset it into the same error, again and again).
# An over-the-air update is switched in (or rolled back) by otaboot first (docs/ota.md); a new
# version that cannot even be imported, or finds no valid config, resets at once and counts a
# boot, one that hangs is reset by the watchdog.
import sys

import machine
import otaboot

otaboot.boot()
try:
    from edgence import config, counter, watchdog
except Exception as exc:
    otaboot.failed(machine, type(exc).__name__)
    raise

try:
    _fw = config.load("config.json").firmware
except config.ConfigError as exc:
    print("edgence event=config_error error=%s" % exc)
    _fw = None

if _fw is not None and not watchdog.board_supported():
    print(
        "edgence event=unsupported_board platform=%s supported=%s"
        % (sys.platform, ",".join(watchdog.SUPPORTED))
    )
    _fw = None

if _fw is not None:
    try:
        counter.BlockCounter(".", 0, 1)  # reads counter.a/.b (and a 0.1 counter.dat): no write
    except counter.CounterError as exc:
        print("edgence event=counter_error error=%s" % exc)
        _fw = None

if _fw is None:
    otaboot.failed(machine, "config")

_pin = (_fw or {}).get("safe_pin")
if _pin is None:
    _pin = 0 if sys.platform == "esp32" else 15
try:
    _safe_pin = machine.Pin(_pin, machine.Pin.IN, machine.Pin.PULL_UP)
except (ValueError, TypeError, AttributeError):
    _safe_pin = None
if watchdog.safe_mode(_safe_pin):
    print("edgence event=safe_mode watchdog=off")
elif _fw is not None:
    watchdog.arm(machine, _fw["watchdog_s"])
