"""`python -m tests.hil.preflight`: a rig file checked against this machine, with what is
missing said in words; and the relay polarity setting the power relay's command honours."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tty
from pathlib import Path

from tests.conftest import ROOT
from tests.hil.boards import relay_argv
from tests.hil.preflight import check_micropython, check_password_file, preflight
from tests.hil.rig import load_rig
from tests.support.raw_repl_board import RawReplBoard

RIGS = ROOT / "hardware" / "rigs"


def rig_file(tmp_path: Path, gateway: str, board: str) -> Path:
    path = tmp_path / "rig.toml"
    path.write_text(f'[rig]\nname = "t"\n\n[gateway]\n{gateway}\n\n[[board]]\n{board}\n')
    return path


def test_the_emulated_rig_passes_on_this_machine() -> None:
    findings = preflight(load_rig(RIGS / "emulated.toml"))
    assert [f.what for f in findings if not f.ok] == []
    assert any("mosquitto installed" in f.what for f in findings)


def test_a_real_rig_off_its_machine_is_told_what_is_missing_in_words(tmp_path: Path) -> None:
    # 192.0.2.1 is TEST-NET-1 (RFC 5737): no machine has it.
    path = rig_file(
        tmp_path,
        'host = "192.0.2.1"\nmqtt_port = 18830',
        'name = "esp"\nkind = "esp32"\nport = "/dev/serial/by-id/no-such-board"\n'
        'fixtures = ["power_cycle"]\npower_relay_gpio = 17',
    )
    empty = tmp_path / "bin"
    empty.mkdir()
    out = subprocess.run(
        [sys.executable, "-m", "tests.hil.preflight", "--rig", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=dict(os.environ, PATH=str(empty)),
    )
    assert out.returncode == 1, out.stdout + out.stderr
    text = out.stdout
    assert "MISSING  gateway.host 192.0.2.1 is not an address of this machine" in text
    assert "Cannot assign requested address" not in text
    assert "MISSING  gpioset is not installed" in text and "sudo apt install gpiod" in text
    assert "MISSING  board esp: port /dev/serial/by-id/no-such-board does not exist" in text
    assert "ls -l /dev/serial/by-id/" in text


def test_a_port_already_taken_is_named_with_its_key(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = rig_file(
            tmp_path, f'host = "127.0.0.1"\nmqtt_port = {port}', 'name = "e"\nkind = "emulated"'
        )
        (bad,) = [f for f in preflight(load_rig(path)) if not f.ok]
    assert bad.what.startswith(f"gateway.mqtt_port TCP 127.0.0.1:{port} cannot be opened")


def test_the_wifi_password_file_must_be_private_and_one_passphrase(tmp_path: Path) -> None:
    pw = tmp_path / "hil-wifi.pass"
    spec = load_rig(
        rig_file(
            tmp_path,
            "",
            f'name = "e"\nkind = "emulated"\nwifi_ssid = "edgence-hil"\n'
            f'wifi_password_file = "{pw}"',
        )
    ).boards[0]
    assert "does not exist" in check_password_file(spec).what
    pw.write_text("correct horse battery\n")
    pw.chmod(0o644)
    f = check_password_file(spec)
    assert not f.ok and "mode 0644" in f.what and f.fix == f"chmod 600 {pw}"
    pw.chmod(0o600)
    assert check_password_file(spec).ok
    pw.write_text("ssid=edgence-hil\npsk=correct horse battery\n")
    assert "one line" in check_password_file(spec).what


def test_the_board_probe_finds_a_raw_repl_and_names_a_silent_port(tmp_path: Path) -> None:
    with RawReplBoard(tmp_path / "flash") as board:
        spec = load_rig(
            rig_file(tmp_path, "", f'name = "b"\nkind = "esp32"\nport = "{board.port}"')
        ).boards[0]
        found = check_micropython(spec)
    assert found.ok and "raw REPL answers on" in found.what
    master, slave = os.openpty()  # a serial line nobody answers on
    tty.setraw(slave)
    try:
        path = rig_file(tmp_path, "", f'name = "b"\nkind = "esp32"\nport = "{os.ttyname(slave)}"')
        silent = check_micropython(load_rig(path).boards[0], timeout=0.5)
    finally:
        os.close(slave)
        os.close(master)
    assert not silent.ok and "no MicroPython raw REPL" in silent.what
    assert "Flashing MicroPython" in silent.fix


def test_the_relay_command_honours_active_low(tmp_path: Path) -> None:
    board = 'name = "b"\nkind = "esp32"\nport = "/dev/ttyUSB0"\npower_relay_gpio = 17'
    high = load_rig(rig_file(tmp_path, "", board)).boards[0]
    low = load_rig(rig_file(tmp_path, "", board + "\npower_relay_active_low = true")).boards[0]
    assert relay_argv(high, True) == ["gpioset", "gpiochip0", "17=1"]
    assert relay_argv(high, False)[-1] == "17=0"
    assert relay_argv(low, True)[-1] == "17=0"
    assert relay_argv(low, False)[-1] == "17=1"


def test_the_emulated_board_starts_on_a_pty_takes_a_bundle_and_starts_its_firmware(
    tmp_path: Path,
) -> None:
    from agent.cli.rawrepl import provision_over_serial

    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.hil.emulated_board", "--flash", str(tmp_path / "flash")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("emulated board: REPL on /dev/pts/"), first
        port = first.split()[4]
        provision_over_serial(port, b'{"edgence":1}\n')
        assert (tmp_path / "flash" / "config.json").read_bytes() == b'{"edgence":1}\n'
        lines = [proc.stdout.readline() for _ in range(4)]
        assert any(line.startswith("soft reset: starting the firmware") for line in lines), lines
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert "emulated board stopped" in out
