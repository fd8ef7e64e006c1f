"""The firmware's memory and flash cost, before and after a change, measured in the same run:
bytes allocated per signed 4-reading frame and per BTHome advert, and the peak heap at boot and
through a 1,000-frame outage, under MicroPython 1.27 (WebAssembly port, library compiled to
.mpy by mpy-cross as `firmware deploy` does); flash bytes written per frame through the same
outage and its recovery (CPython, every write the firmware makes counted). "before" is the
firmware of a git revision (default: the last commit before the field-hardening work), "after"
this checkout; the ratio after/before is what counts. Also: signed frames per second under
MicroPython and CPython against the agent's own encoder (a ratio), and the counter's flash
writes per 1,000 frames for several block sizes.

Run: python -m bench.firmware_bench [--before REV]   (about a minute; needs node and `npm ci`
in firmware/micropython/tests, which scripts/test does)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware" / "micropython"
MP_TESTS = FIRMWARE / "tests"
sys.path.insert(0, str(FIRMWARE / "lib"))

from edgence import frame as fw_frame  # noqa: E402
from edgence.counter import BlockCounter  # noqa: E402

from agent import fwbuild  # noqa: E402
from agent.devices.auth import encode_signed_frame  # noqa: E402

BEFORE = "4daae3e"  # main before issue 24 (firmware 0.1)
KEY = bytes(range(32))
READINGS = [("temperature", 2137, -2, "Cel"), ("humidity", 45500, -3, "%")]
N = 20000
OUTAGE = 1000
CAPACITY = 256
HEAP = 64 * 1024
RUNTIME = fwbuild.BoardRuntime("micropython", (1, 27, 0), 0x306)

# Runs the outage on CPython with the given lib and counts every byte the firmware writes.
FLASH_PROBE = r"""
import builtins, json, sys, tempfile
sys.path[:0] = [sys.argv[1], sys.argv[2]]
written = [0]
real_open = builtins.open
class Counted:
    def __init__(self, f): self.f = f
    def write(self, b):
        written[0] += len(b)
        return self.f.write(b)
    def __enter__(self): return self
    def __exit__(self, *a): self.f.close()
    def __getattr__(self, n): return getattr(self.f, n)
def counting_open(path, mode="r", *a, **k):
    f = real_open(path, mode, *a, **k)
    return Counted(f) if ("w" in mode or "a" in mode or "+" in mode) else f
from edgence import app, config
from edgence.app import Node
from edgence.counter import BlockCounter
from edgence.outbox import Outbox
from edgence.serialline import UartLink
app.log = lambda event, **kv: None
class Uart:
    up = True
    def write(self, d): return len(d) if self.up else 0
class Sensor:
    k = 0
    def read(self):
        self.k += 1
        return [("temperature", 2100 + self.k % 50, -2, "Cel"), ("humidity", 45000, -3, "%"),
                ("pressure", 101325, -2, "hPa"), ("battery", 3700, -3, "V")]
flash = tempfile.mkdtemp()
cfg = config.parse(json.dumps({"edgence": 1, "device_id": "field-0001", "transport": "serial",
    "key": "0f" * 32, "counter_start": 0, "serial": {}, "firmware": {"outbox": int(sys.argv[4])}}))
uart = Uart()
node = Node(cfg, UartLink(uart), [Sensor()], BlockCounter(flash, 0, 64),
            Outbox(flash, int(sys.argv[4])), clock=lambda: 1764000000)
builtins.open = counting_open
uart.up = False
for _ in range(int(sys.argv[3])):
    node.step()
outage = written[0]
uart.up = True
steps = 0
while len(node.outbox) and steps < 1000:
    node.step()
    steps += 1
print(json.dumps({"outage": outage, "recovery": written[0] - outage}))
"""


def materialize(rev: str | None, dest: Path) -> Path:
    """firmware/micropython of `rev` (or of this checkout) under dest; returns its root."""
    if rev is None:
        return FIRMWARE
    tar = subprocess.run(
        ["git", "archive", rev, "firmware/micropython"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(tar)) as t:
        t.extractall(dest, filter="data")
    return dest / "firmware" / "micropython"


def compile_lib(root: Path, dest: Path) -> Path:
    for path, content in fwbuild.compiled_files(root, RUNTIME):
        if path.startswith("lib/"):
            target = dest / path.removeprefix("lib/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
    return dest


def node_json(args: list[str]) -> Any:
    r = subprocess.run(["node", *args], capture_output=True, text=True, cwd=MP_TESTS)
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["failed"])[-1][:80]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def measure(root: Path, work: Path) -> dict[str, Any]:
    mpy = compile_lib(root, work / "mpy")
    alloc_script = work / "mp_alloc.py"
    alloc_script.write_text((MP_TESTS / "mp_alloc.py").read_text())
    field = work / "mp_field.py"
    field.write_text(
        f"PLAN = (10, {OUTAGE}, {CAPACITY})\n" + (MP_TESTS / "mp_field.py").read_text()
    )
    steps = str(10 + OUTAGE + 40)
    out: dict[str, Any] = {}
    out["alloc"] = node_json(["run_steps.mjs", str(HEAP), str(mpy), str(alloc_script), "0"])
    out["field_mpy"] = node_json(["run_steps.mjs", str(HEAP), str(mpy), str(field), steps])
    out["field_py"] = node_json(["run_steps.mjs", str(HEAP), str(root / "lib"), str(field), "1"])
    probe = subprocess.run(
        [sys.executable, "-c", FLASH_PROBE, str(root / "lib"), str(ROOT / "tests" / "support"
         / "mpshims"), str(OUTAGE), str(CAPACITY)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    out["flash"] = json.loads(probe.strip().splitlines()[-1])
    return out


def rate(fn: Callable[[int], bytes]) -> float:
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        for n in range(N):
            fn(n)
        best = max(best, N / (time.perf_counter() - t0))
    return best


def micropython_rate() -> float:
    r = node_json(["run.mjs", str(MP_TESTS / "mp_bench.py")])
    return float(r["frames"]) / (max(int(r["ms"]), 1) / 1000)


def flash_writes(block: int, frames: int = 1000) -> int:
    with tempfile.TemporaryDirectory() as d:
        c = BlockCounter(d, 0, block)
        for _ in range(frames):
            c.next()
        return int(c.writes)


def row(label: str, before: Any, after: Any) -> str:
    if isinstance(before, int | float) and isinstance(after, int | float) and before:
        return f"| {label} | {before:,} | {after:,} | {after / before:.2f} |"
    return f"| {label} | {before} | {after} | |"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", default=BEFORE, help=f"git revision of 'before' ({BEFORE})")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "b").mkdir()
        (work / "a").mkdir()
        before = measure(materialize(args.before, work / "b"), work / "b")
        after = measure(materialize(None, work / "a"), work / "a")

    def get(m: dict[str, Any], *path: str) -> Any:
        v: Any = m
        for k in path:
            if not isinstance(v, dict) or k not in v:
                return (v or {}).get("error", "n/a") if isinstance(v, dict) else "n/a"
            v = v[k]
        return v

    fb, fa = before["flash"], after["flash"]
    print(f"MicroPython 1.27 (wasm), library as .mpy; outage {OUTAGE} frames, outbox {CAPACITY};")
    print(f"before = {args.before}, after = this checkout")
    print()
    print("| measure | before | after | after/before |")
    print("|---|---:|---:|---:|")
    print(row("bytes allocated per signed 4-reading frame", get(before, "alloc", "frame"),
              get(after, "alloc", "frame")))  # fmt: skip
    print(row("bytes allocated per plain advert (4 readings)", get(before, "alloc",
              "advert_plain"), get(after, "alloc", "advert_plain")))  # fmt: skip
    print(row("bytes allocated per encrypted advert (pure-Python AES)", get(before, "alloc",
              "advert_encrypted"), get(after, "alloc", "advert_encrypted")))  # fmt: skip
    print(row("heap in use after boot, .mpy", get(before, "field_mpy", "boot_live"),
              get(after, "field_mpy", "boot_live")))  # fmt: skip
    print(row("heap added at boot from .py sources beyond 64 KB", get(before, "field_py",
              "boot_peak_grew"), get(after, "field_py", "boot_peak_grew")))  # fmt: skip
    print(row(f"peak heap in use through the {OUTAGE}-frame outage and recovery (1)", get(
        before, "field_mpy", "cycle_peak"), get(after, "field_mpy", "cycle_peak")))  # fmt: skip
    print(row("bytes allocated by the costliest cycle (1)", get(before, "field_mpy",
              "cycle_alloc"), get(after, "field_mpy", "cycle_alloc")))  # fmt: skip
    print(row("heap in use between cycles, at most", get(before, "field_mpy", "live_after"),
              get(after, "field_mpy", "live_after")))  # fmt: skip
    print(row("cycles that needed more than a 64 KB heap", get(before, "field_mpy", "grew"),
              get(after, "field_mpy", "grew")))  # fmt: skip
    print(row("flash bytes written per buffered frame (outage)",
              round(fb["outage"] / OUTAGE), round(fa["outage"] / OUTAGE)))  # fmt: skip
    print(row("flash bytes written in the recovery", fb["recovery"], fa["recovery"]))
    print()
    print("(1) This port collects only between cycles (one runPython call each): a cycle's")
    print("allocations all count until it ends. On a board the collector also runs inside a")
    print("cycle, so (1) is what a cycle asks of the heap with no collection to help, not what")
    print("a board would hold at once. 'before' delivered its whole backlog in one cycle,")
    print("rewriting the outbox file after each frame; 'after' sends at most 16 a cycle.")
    print()
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
