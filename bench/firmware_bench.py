"""The firmware's cost per reading: signed frames per second of the firmware's own encoder
(HMAC on hashlib.sha256) under MicroPython (WebAssembly port) and under CPython, against the
agent's encode_signed_frame on CPython measured in the same run (the ratio is what counts);
and flash writes per 1,000 frames of the block counter for several block sizes (counted).

Run: python -m bench.firmware_bench   (about 10 s; needs node and `npm ci` in
firmware/micropython/tests, which scripts/test does)
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MP_TESTS = ROOT / "firmware" / "micropython" / "tests"
sys.path.insert(0, str(ROOT / "firmware" / "micropython" / "lib"))

from edgence import frame as fw_frame  # noqa: E402
from edgence.counter import BlockCounter  # noqa: E402

from agent.devices.auth import encode_signed_frame  # noqa: E402

KEY = bytes(range(32))
READINGS = [("temperature", 2137, -2, "Cel"), ("humidity", 45500, -3, "%")]
N = 20000


def rate(fn: Callable[[int], bytes]) -> float:
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        for n in range(N):
            fn(n)
        best = max(best, N / (time.perf_counter() - t0))
    return best


def micropython_rate() -> float:
    out = subprocess.run(
        ["node", str(MP_TESTS / "run.mjs"), str(MP_TESTS / "mp_bench.py")],
        capture_output=True,
        text=True,
        check=True,
        cwd=MP_TESTS,
    ).stdout
    r = json.loads(out.strip().splitlines()[-1])
    return float(r["frames"]) / (max(int(r["ms"]), 1) / 1000)


def flash_writes(block: int, frames: int = 1000) -> int:
    with tempfile.TemporaryDirectory() as d:
        c = BlockCounter(d, 0, block)
        for _ in range(frames):
            c.next()
        return int(c.writes)


def main() -> int:
    agent = rate(lambda n: encode_signed_frame(KEY, "dev-1", n, READINGS, timestamp=1764000000))
    cpy = rate(
        lambda n: fw_frame.encode_signed_frame(KEY, "dev-1", n, READINGS, timestamp=1764000000)
    )
    mpy = micropython_rate()
    print("| signed frame, 2 readings | frames/s | ratio to agent (CPython) |")
    print("|---|---:|---:|")
    print(f"| agent encode_signed_frame, CPython (baseline) | {agent:,.0f} | 1.00 |")
    print(f"| firmware, CPython | {cpy:,.0f} | {cpy / agent:.2f} |")
    print(f"| firmware, MicroPython 1.27 (wasm, node) | {mpy:,.0f} | {mpy / agent:.2f} |")
    print()
    print("| counter_block | flash writes per 1,000 frames |")
    print("|---:|---:|")
    for block in (1, 16, 64, 256):
        print(f"| {block} | {flash_writes(block)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
