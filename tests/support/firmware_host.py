"""Runs the firmware deployed in a flash directory on CPython, as a board would at reset:
boot.py, then main.py, with the host shims (tests/support/mpshims) standing in for `machine`,
`network` and `utime`. Used by the emulated hardware-in-the-loop rig.

    python -m tests.support.firmware_host FLASH_DIR [pwron|deepsleep|wdt|hard]

A cold start (pwron) clears the RTC memory, as a power cut does. An exception in boot.py or
main.py is printed and the next file still runs, as on a board; after one, the process stays
(the board at its REPL) while a watchdog armed by the firmware is running, so it resets it.
"""

from __future__ import annotations

import os
import runpy
import sys
import time
import traceback
from pathlib import Path

SHIMS = Path(__file__).resolve().parent / "mpshims"


def main(argv: list[str]) -> int:
    flash = Path(argv[0]).resolve()
    cause = argv[1] if len(argv) > 1 else "pwron"
    os.environ["EDGENCE_RESET_CAUSE"] = cause
    os.chdir(flash)
    if cause == "pwron":
        (flash / ".rtc-memory").unlink(missing_ok=True)
    sys.path[:0] = [str(SHIMS), str(flash / "lib")]
    print(f"edgence event=reset cause={cause}", flush=True)
    crashed = False
    for name in ("boot.py", "main.py"):
        if (flash / name).exists():
            try:
                runpy.run_path(str(flash / name), run_name="__main__")
            except Exception:
                traceback.print_exc(file=sys.stdout)
                crashed = True
    machine = sys.modules.get("machine")
    while crashed and machine is not None and getattr(machine, "WDT_ARMED", False):
        time.sleep(1)  # the watchdog's thread resets the board (restarts this process)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
