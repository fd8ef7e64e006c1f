"""Runs the firmware deployed in a flash directory on CPython, as a board would at reset:
boot.py, then main.py, with the host shims (tests/support/mpshims) standing in for `machine`,
`network` and `utime`. Used by the emulated hardware-in-the-loop rig.

    python -m tests.support.firmware_host FLASH_DIR [pwron|deepsleep|wdt|hard]

A cold start (pwron) clears the RTC memory, as a power cut does.
"""

from __future__ import annotations

import os
import runpy
import sys
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
    for name in ("boot.py", "main.py"):
        if (flash / name).exists():
            runpy.run_path(str(flash / name), run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
