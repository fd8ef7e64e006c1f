"""The firmware under real MicroPython (WebAssembly port, 1.27) on a fixed 64 KB heap: the
library compiled to .mpy by the real mpy-cross (as `firmware deploy` does), the loop driven one
cycle per call (firmware/micropython/tests/run_steps.mjs) through a 24-hour outage of one
reading a minute, four readings per frame, and back. The port collects only between calls, so
a cycle must fit the heap without a collection inside it, stricter than a board, where the
collector also runs mid-cycle. Fragmentation is not modelled by this port (it would add a heap
area instead of failing), which is why the outbox never needs a buffer proportional to the
backlog: the largest block a cycle asks for is one frame.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agent import fwbuild
from tests.firmware.conftest import MP_TESTS, run_micropython

HEAP = 64 * 1024  # the budget hardware/README.md states for the firmware
OUTAGE = 24 * 60  # cycles: 24 h at interval_s 60


def compiled_lib(dest: Path) -> Path:
    runtime = fwbuild.BoardRuntime("micropython", (1, 27, 0), 0x306)
    for path, content in fwbuild.compiled_files(fwbuild.CHECKOUT, runtime):
        if path.startswith("lib/"):
            target = dest / path.removeprefix("lib/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
    return dest


def run_steps(
    lib: Path, script: Path, steps: int, heap: int = HEAP, extra: tuple[str, ...] = ()
) -> Any:
    node = shutil.which("node")
    assert node is not None, "node is needed to run MicroPython (wasm)"
    r = subprocess.run(
        [
            node,
            str(MP_TESTS / "run_steps.mjs"),
            str(heap),
            str(lib),
            str(script),
            str(steps),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=MP_TESTS,
    )
    assert r.returncode == 0, f"MicroPython failed:\n{r.stderr}\n{r.stdout[-2000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def day_outage(tmp_path_factory: pytest.TempPathFactory) -> Any:
    lib = compiled_lib(tmp_path_factory.mktemp("mpy"))
    return run_steps(lib, MP_TESTS / "mp_field.py", 10 + OUTAGE + 40)


def test_a_24_hour_outage_fits_a_fixed_64_kb_heap_from_boot_to_recovery(day_outage: Any) -> None:
    r = day_outage
    assert r["heap"] == HEAP - 1536  # the port's own figure for a 64 KB heap (its table aside)
    assert r["boot_peak_grew"] == 0 and r["grew"] == 0  # never needed more than 64 KB
    assert r["cycle_peak"] < r["heap"]
    # What stays alive between cycles does not grow with the backlog.
    assert r["live_after"] < r["boot_live"] + 4096
    assert r["outage_cycles"] == OUTAGE


def test_the_outage_writes_one_record_per_frame_and_drops_the_oldest_at_the_budget(
    day_outage: Any,
) -> None:
    r = day_outage
    assert r["outbox_records_written"] == OUTAGE + 16  # one per buffered frame, nothing more
    assert r["buffered_max"] == 256 and r["left"] == 0
    # Every frame taken is delivered in order (the UART stand-in refuses a counter that does
    # not rise) or counted as dropped, and the gateway heard the final count.
    assert r["delivered"] + r["dropped"] == r["next"]
    assert r["reported_drops"] == r["dropped"] > 0


def test_a_signed_4_reading_frame_allocates_at_most_1_5_kb() -> None:
    r = json.loads(run_micropython(MP_TESTS / "mp_alloc.py").strip().splitlines()[-1])
    assert r["frame"] <= 1536, r
    assert r["advert_plain"] <= 1536, r
    # Encrypted adverts here use the pure-Python AES (this port has no cryptolib).
    assert r["advert_encrypted"] <= 8192, r


def test_an_update_fits_the_64_kb_heap_beside_the_command_handling(tmp_path: Path) -> None:
    """Boot with the command handling, the manifest, then one block per call and the apply,
    each on the fixed heap: the staging code is imported at the first ota_* command and a block
    is appended to flash as it comes (never the whole file in RAM)."""
    from agent.downlink.codec import Command, encode_command
    from agent.downlink.ota import begin_args, block_args, build_manifest, file_args, manifest_mac

    key, dev = bytes(range(32)), "dev-1"
    data = bytes(range(256)) * 40  # 10 KB: 43 blocks of 240
    m = build_manifest("0.2.0", [("lib/edgence/app.py", data)])
    steps: list[tuple[str, Any]] = [
        ("ota_status", {}),
        ("ota_begin", dict(begin_args(m))),
        ("ota_file", dict(file_args(m, 0))),
        ("ota_manifest", {"mac": manifest_mac(key, dev, 2, m)}),
    ]
    steps += [
        ("ota_block", dict(block_args(0, i, data[i * 240 : (i + 1) * 240]))) for i in range(43)
    ]
    steps.append(("ota_apply", {}))
    files = []
    for n, (a, args) in enumerate(steps, 1):
        p = tmp_path / f"p{n}"
        p.write_bytes(encode_command(key, Command(f"c{n}", dev, a, args, 2**40, n)))
        files.append(f"{p}:/flash/p{n}")
    lib = compiled_lib(tmp_path / "mpy")
    r = run_steps(lib, MP_TESTS / "mp_ota_heap.py", len(steps) - 4, extra=tuple(files))
    assert r["statuses"] == ["ok"] * len(steps), r["statuses"]
    assert r["resets"] == 1  # restarted after the apply was answered
    assert r["heap"] == HEAP - 1536 and r["boot_grew"] == 0 and r["grew"] == 0
    assert r["step_peak"] < r["heap"]
    # What stays alive with the staging code imported (28.8 KB measured): under half the heap.
    assert r["live_after"] < HEAP // 2
