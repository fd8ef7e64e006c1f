"""Checks a rig file against the machine it runs on, before any field test: the gateway address
exists here and its ports are free, Mosquitto and `gpioset` are installed, the serial ports and
GPIO chip exist and are accessible, the Wi-Fi password file is private, the boards answer as
MicroPython. Each finding says what is missing in words and what to do.

    python -m tests.hil.preflight --rig hardware/rigs/pi4-esp32.toml

The hil test session runs the same checks and stops with their words (tests/hil/conftest.py).
"""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import socket
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from agent.errors import AgentError
from tests.hil.rig import BoardSpec, Rig, load_rig

GUIDE = "hardware/README.md"


@dataclass(frozen=True)
class Finding:
    ok: bool
    what: str
    fix: str = ""

    def line(self) -> str:
        return (
            f"ok       {self.what}" if self.ok else f"MISSING  {self.what}\n         -> {self.fix}"
        )


def _bind_problem(host: str, port: int, kind: socket.SocketKind) -> OSError | None:
    """Try to bind (host, port) as the gateway will; None when it works."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc
    return None


def check_gateway(rig: Rig) -> list[Finding]:
    out: list[Finding] = []
    host = rig.gateway_host
    exc = _bind_problem(host, 0, socket.SOCK_STREAM)
    if exc is not None and exc.errno == errno.EADDRNOTAVAIL:
        return [
            Finding(
                False,
                f"gateway.host {host} is not an address of this machine (no interface has it)",
                f"the boards reach the gateway at {host}: run the tests on the gateway of this "
                f"rig, with its access point up and {host} on its Wi-Fi interface "
                f"({GUIDE}, 'Access point'); `ip -brief addr` lists this machine's addresses",
            )
        ]
    if exc is not None:
        return [Finding(False, f"gateway.host {host} cannot be bound: {exc}", "check the address")]
    out.append(Finding(True, f"gateway.host {host} is an address of this machine"))
    for key, port, kind, proto in (
        ("mqtt_port", rig.gateway_mqtt_port, socket.SOCK_STREAM, "TCP"),
        ("coap_port", rig.gateway_coap_port, socket.SOCK_DGRAM, "UDP"),
    ):
        if port is None:
            continue
        exc = _bind_problem(host, port, kind)
        if exc is None:
            out.append(Finding(True, f"gateway.{key} {proto} {host}:{port} is free"))
        else:
            out.append(
                Finding(
                    False,
                    f"gateway.{key} {proto} {host}:{port} cannot be opened ({exc.strerror})",
                    f"stop what listens there (`ss -lntup | grep {port}`: a Mosquitto or agent "
                    f"of an earlier run?) or choose another gateway.{key}",
                )
            )
    return out


def check_programs(rig: Rig, path: str | None) -> list[Finding]:
    out = []
    mosquitto = shutil.which("mosquitto", path=path) or (
        "/usr/sbin/mosquitto" if path is None and os.path.exists("/usr/sbin/mosquitto") else None
    )
    out.append(
        Finding(True, f"mosquitto installed ({mosquitto})")
        if mosquitto
        else Finding(
            False,
            "mosquitto is not installed (the gateway side of every field test runs it)",
            "sudo apt install mosquitto; then `sudo systemctl disable --now mosquitto` so that "
            "the tests' own brokers get the ports",
        )
    )
    if any(b.power_relay_gpio is not None for b in rig.boards):
        gpioset = shutil.which("gpioset", path=path)
        out.append(
            Finding(True, f"gpioset installed ({gpioset})")
            if gpioset
            else Finding(
                False,
                "gpioset is not installed (it switches the power relay: power_relay_gpio)",
                "sudo apt install gpiod",
            )
        )
    return out


def _device(what: str, path: str, fix_access: str, fix_missing: str) -> Finding:
    if not os.path.exists(path):
        return Finding(False, f"{what} {path} does not exist", fix_missing)
    if not os.access(path, os.R_OK | os.W_OK):
        return Finding(False, f"{what} {path} exists but this user cannot open it", fix_access)
    return Finding(True, f"{what} {path} exists and is accessible")


def check_password_file(b: BoardSpec) -> Finding:
    key = f"board {b.name}: wifi_password_file"
    path = b.wifi_password_file
    assert path is not None
    try:
        st = os.stat(path)
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return Finding(
            False,
            f"{key} {path} does not exist",
            f"write the access point's passphrase on one line: `sudo install -m 600 -o $USER "
            f"/dev/null {path}` then put the passphrase in it ({GUIDE}, 'Wi-Fi password file')",
        )
    except (OSError, UnicodeDecodeError) as exc:
        return Finding(False, f"{key} {path} cannot be read: {exc}", f"chown $USER {path}")
    if stat.S_IMODE(st.st_mode) & 0o077:
        return Finding(
            False,
            f"{key} {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o})",
            f"chmod 600 {path}",
        )
    lines = [x for x in text.splitlines() if x.strip()]
    if len(lines) != 1 or not 8 <= len(lines[0].strip()) <= 63:
        return Finding(
            False,
            f"{key} {path} must hold one line, the WPA2 passphrase (8 to 63 characters)",
            f"write the passphrase of hostapd.conf's wpa_passphrase alone into {path}",
        )
    return Finding(True, f"{key} {path} holds one passphrase, mode 0600")


def check_micropython(b: BoardSpec, timeout: float = 5.0) -> Finding:
    """Enter the board's raw REPL and ask which Python it runs (it interrupts main.py)."""
    from agent.cli.rawrepl import RawRepl

    assert b.port is not None
    try:
        with RawRepl(b.port, timeout=timeout) as repl:
            repl.enter_raw()
            out = repl.exec("import sys;print(sys.implementation.name, sys.version)\n")
    except AgentError as exc:
        return Finding(
            False,
            f"board {b.name}: no MicroPython raw REPL on {b.port} ({exc})",
            f"flash MicroPython onto the board ({GUIDE}, 'Flashing MicroPython'), and close any "
            f"other program holding {b.port} (a terminal, mpremote, a running agent)",
        )
    return Finding(True, f"board {b.name}: raw REPL answers on {b.port}: {out.decode().strip()}")


def check_board(b: BoardSpec, *, probe: bool) -> list[Finding]:
    out: list[Finding] = []
    dialout = (
        "add this user to the group that owns it: sudo usermod -aG dialout $USER, log in again"
    )
    if b.port is not None:
        port = _device(
            f"board {b.name}: port",
            b.port,
            dialout,
            "plug the board's USB cable in (a data cable); `ls -l /dev/serial/by-id/` shows its "
            "name: put that path in the rig file's port",
        )
        out.append(port)
        if port.ok and probe:
            out.append(check_micropython(b))
    if b.uart_port is not None and "uart_loopback" in b.fixtures:
        out.append(
            _device(
                f"board {b.name}: uart_port",
                b.uart_port,
                dialout,
                "enable the Pi's UART on GPIO14/15 with its serial console off (raspi-config, "
                "Interface Options, Serial Port: login shell no, hardware yes), then reboot",
            )
        )
    if b.power_relay_gpio is not None:
        out.append(
            _device(
                f"board {b.name}: GPIO chip for power_relay_gpio {b.power_relay_gpio}",
                "/dev/gpiochip0",
                "sudo usermod -aG gpio $USER, log in again",
                "this machine has no GPIO chip: run the rig on the Pi its relay is wired to",
            )
        )
    if b.wifi_ssid is not None:
        if b.wifi_password_file is None:
            out.append(
                Finding(
                    False,
                    f"board {b.name}: wifi_ssid is set but wifi_password_file is not",
                    "add wifi_password_file to the rig file",
                )
            )
        else:
            out.append(check_password_file(b))
    if "ble" in b.fixtures:
        has_hci = os.path.isdir("/sys/class/bluetooth") and bool(os.listdir("/sys/class/bluetooth"))
        out.append(
            Finding(True, f"board {b.name}: a Bluetooth controller is present")
            if has_hci
            else Finding(
                False,
                f"board {b.name}: fixture ble, but this machine has no Bluetooth controller",
                "sudo apt install bluez; `bluetoothctl show` must list a controller",
            )
        )
    return out


def preflight(rig: Rig, *, path: str | None = None, probe: bool = True) -> list[Finding]:
    """Every check for this rig on this machine. `path` replaces $PATH for finding programs;
    `probe=False` skips talking to the boards."""
    out = check_gateway(rig) + check_programs(rig, path)
    for b in rig.boards:
        out += check_board(b, probe=probe)
    return out


def report(rig: Rig, findings: list[Finding]) -> str:
    missing = [f for f in findings if not f.ok]
    head = f"rig {rig.name} ({rig.path}) on this machine: "
    head += f"{len(missing)} thing(s) missing" if missing else "everything in place"
    return "\n".join([head, *(f.line() for f in findings)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.hil.preflight", description=__doc__)
    ap.add_argument("--rig", type=Path, required=True, help="the rig file, hardware/rigs/*.toml")
    ap.add_argument("--no-probe", action="store_true", help="do not talk to the boards")
    args = ap.parse_args(argv)
    try:
        rig = load_rig(args.rig)
    except AgentError as exc:
        print(exc, file=sys.stderr)
        return 2
    findings = preflight(rig, probe=not args.no_probe)
    print(report(rig, findings))
    return 0 if all(f.ok for f in findings) else 1


if __name__ == "__main__":
    raise SystemExit(main())
