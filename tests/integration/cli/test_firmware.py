"""`edgence-agent firmware deploy` over a real pseudo-terminal to a simulated MicroPython board
(tests/support/raw_repl_board.py): every firmware file (the library compiled to .mpy for the
board's MicroPython by the real mpy-cross, or sources with --sources) and the bundle land in its
flash, with progress, in safe mode while copying, and the board soft-resets at the end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from agent.cli.firmware import default_source, firmware_files
from agent.fwbuild import firmware_sources
from tests.support.raw_repl_board import RawReplBoard

BUNDLE = {
    "edgence": 1,
    "device_id": "esp-1",
    "name": "esp-1",
    "transport": "mqtt",
    "key_kind": "hmac",
    "key": "00" * 32,
    "counter_start": 0,
    "sensors": [["temperature", "Cel"]],
    "mqtt": {"host": "192.0.2.1", "port": 1883, "topic": "devices/esp-1/up"},
}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_deploy_copies_firmware_and_bundle_with_progress_and_resets(tmp_path: Path) -> None:
    bundle = tmp_path / "esp-1.json"
    bundle.write_text(json.dumps(BUNDLE))
    flash = tmp_path / "flash"
    (flash / "lib" / "edgence").mkdir(parents=True)
    (flash / "lib" / "edgence" / "app.py").write_text("# an older firmware's source\n")
    with RawReplBoard(flash) as board:
        r = cli(
            "firmware", "deploy", "--port", board.port, "--bundle", str(bundle),
            "--setting", "interval_s=5", "--setting", 'sensors=[["bme280",{"sda":21}]]',
        )  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        assert board.soft_resets == 1
    assert "compiled for micropython 1.27.0 (.mpy v6) with mpy-cross" in r.stdout
    files = firmware_sources(default_source())
    for path in files:
        if path.startswith("lib/"):
            mpy = (flash / path).with_suffix(".mpy").read_bytes()
            assert mpy[:2] == b"M\x06", path  # .mpy bytecode v6, what MicroPython 1.27 loads
            assert not (flash / path).exists(), path  # no source left to shadow it
        else:
            assert (flash / path).read_bytes() == (default_source() / path).read_bytes()
    progress = [line for line in r.stdout.splitlines() if line.startswith("[")]
    assert len(progress) == len(files) + 1  # + config.json
    assert progress[-1].startswith(f"[{len(files) + 1}/{len(files) + 1}] main.py")
    on_board = json.loads((flash / "config.json").read_text())
    assert on_board["firmware"] == {"interval_s": 5, "sensors": [["bme280", {"sda": 21}]]}
    assert {k: v for k, v in on_board.items() if k != "firmware"} == BUNDLE
    assert not (flash / "SAFE").exists()


def test_sources_are_deployed_as_they_are_with_sources(tmp_path: Path) -> None:
    flash = tmp_path / "flash"
    (flash / "lib" / "edgence").mkdir(parents=True)
    (flash / "lib" / "edgence" / "app.mpy").write_bytes(b"M\x06\x00\x1f")  # a compiled one
    with RawReplBoard(flash) as board:
        r = cli("firmware", "deploy", "--port", board.port, "--sources")
        assert r.returncode == 0, r.stdout + r.stderr
    for f in firmware_files(default_source()):
        assert (flash / f.path).read_bytes() == f.content, f.path
    assert not (flash / "lib" / "edgence" / "app.mpy").exists()


def test_a_board_that_fails_mid_copy_is_left_in_safe_mode(tmp_path: Path) -> None:
    flash = tmp_path / "flash"
    (flash / "lib").mkdir(parents=True)
    (flash / "lib" / "edgence").write_text("a file where the package directory must go")
    with RawReplBoard(flash) as board:
        r = cli("firmware", "deploy", "--port", board.port, "--sources")
    assert r.returncode == 2
    assert "left in safe mode (file SAFE)" in r.stderr and "fix: run the deploy again" in r.stderr
    assert (flash / "SAFE").exists()


def test_settings_without_a_bundle_and_a_non_bundle_are_refused(tmp_path: Path) -> None:
    r = cli("firmware", "deploy", "--port", "/dev/null", "--setting", "interval_s=5")
    assert r.returncode == 2 and "--setting needs --bundle" in r.stderr
    bad = tmp_path / "b.json"
    bad.write_text('{"device_id": "x"}')
    r = cli("firmware", "deploy", "--port", "/dev/null", "--bundle", str(bad))
    assert r.returncode == 2 and "not an edgence provisioning bundle" in r.stderr
    r = cli("firmware", "deploy", "--port", "/dev/null", "--source", str(tmp_path))
    assert r.returncode == 2 and "is not the MicroPython firmware" in r.stderr
