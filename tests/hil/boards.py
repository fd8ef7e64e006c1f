"""The boards of a rig as the field tests drive them: deploy firmware + bundle, power on,
power-cycle, read the console, and the host's end of the board's UART.

`EmulatedBoard` runs the deployed flash directory on CPython (tests/support/firmware_host.py)
and is deployed over a pty to the simulated raw-REPL board; `SerialBoard` is a real ESP32 or
Pico W on a serial port (deploy and console over its USB serial, power through a relay on a
host GPIO when the rig has one).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
import tty
from pathlib import Path
from typing import Protocol

from agent.cli.firmware import BoardFile, default_source, deploy, firmware_files
from tests.conftest import ROOT
from tests.hil.rig import BoardSpec
from tests.support.raw_repl_board import RawReplBoard


class UartEnd:
    """The host's end of a board's UART: one line at a time."""

    def __init__(self, fd: int, owns: bool) -> None:
        self.fd, self.owns = fd, owns
        self.buf = b""

    def read_line(self, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line on the UART within {timeout}s: {self.buf[-80:]!r}")
            if select.select([self.fd], [], [], left)[0]:
                self.buf += os.read(self.fd, 4096)
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def close(self) -> None:
        if self.owns:
            os.close(self.fd)


def relay_argv(spec: BoardSpec, on: bool) -> list[str]:
    """The `gpioset` command (libgpiod 1.6, Debian bookworm's `gpiod` package) that switches
    the board's power relay on or off, honouring the rig's `power_relay_active_low`."""
    assert spec.power_relay_gpio is not None, f"{spec.name}: rig has no power_relay_gpio"
    level = int(on) ^ int(spec.power_relay_active_low)
    return ["gpioset", "gpiochip0", f"{spec.power_relay_gpio}={level}"]


class Board(Protocol):
    spec: BoardSpec

    def deploy(self, bundle: bytes) -> None: ...
    def power_on(self) -> None: ...
    def power_cycle(self) -> None: ...
    def power_off(self) -> None: ...
    def console(self) -> str: ...
    def uart(self) -> UartEnd: ...
    def uart_path(self) -> str: ...


def _files(bundle: bytes) -> list[BoardFile]:
    return [BoardFile("config.json", bundle), *firmware_files(default_source())]


class EmulatedBoard:
    def __init__(self, spec: BoardSpec, workdir: Path) -> None:
        self.spec = spec
        self.flash = workdir / "flash"
        self.flash.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "console.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._uart: tuple[int, int, str] | None = None
        self.deployed_files = 0

    def deploy(self, bundle: bytes) -> None:
        files = _files(bundle)
        with RawReplBoard(self.flash) as board:
            deploy(board.port, files, progress=lambda i, n, p, s: None)
        self.deployed_files = len(files)

    def _uart_pair(self) -> tuple[int, int, str]:
        """(master, slave, slave's path): the board writes into the master, the host's end is
        the slave, a path as /dev/ttyAMA0 is on a real rig."""
        if self._uart is None:
            master, slave = os.openpty()
            tty.setraw(slave)
            self._uart = (master, slave, os.ttyname(slave))
        return self._uart

    def power_on(self, cause: str = "pwron") -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        fds: tuple[int, ...] = ()
        if "uart_loopback" in self.spec.fixtures:
            fds = (self._uart_pair()[0],)
            env["EDGENCE_UART1_FD"] = str(fds[0])
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-u", "-m", "tests.support.firmware_host", str(self.flash), cause],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                pass_fds=fds,
            )

    def power_off(self) -> None:
        """Power cut: SIGKILL, nothing flushed or saved beyond what already is in flash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def power_cycle(self) -> None:
        self.power_off()
        self.power_on()

    def console(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def uart(self) -> UartEnd:
        return UartEnd(os.dup(self._uart_pair()[1]), owns=True)

    def uart_path(self) -> str:
        return self._uart_pair()[2]

    def close(self) -> None:
        self.power_off()
        if self._uart is not None:
            os.close(self._uart[0])
            os.close(self._uart[1])


class SerialBoard:
    """A real board. Deploy and console go over `spec.port`; power_cycle switches the relay on
    `spec.power_relay_gpio` (via the Linux GPIO character device tool `gpioset`) or, without
    one, resets the chip through the REPL (`machine.reset()`), which keeps RTC memory."""

    def __init__(self, spec: BoardSpec, workdir: Path) -> None:
        assert spec.port is not None
        self.spec = spec
        self.log = workdir / "console.log"
        self._reader: threading.Thread | None = None
        self._stop = threading.Event()

    def deploy(self, bundle: bytes) -> None:
        assert self.spec.port is not None
        deploy(self.spec.port, _files(bundle), progress=lambda i, n, p, s: None, reset=False)

    def _read_console(self) -> None:
        import serial

        with serial.Serial(self.spec.port, 115200, timeout=0.2) as s, open(self.log, "ab") as out:
            s.write(b"\x04")  # soft reset from the REPL: boot.py, main.py
            while not self._stop.is_set():
                out.write(s.read(4096))
                out.flush()

    def power_on(self) -> None:
        if self.spec.power_relay_gpio is not None:
            self._relay(True)
        self._stop.clear()
        self._reader = threading.Thread(target=self._read_console, daemon=True)
        self._reader.start()

    def _relay(self, on: bool) -> None:
        subprocess.run(relay_argv(self.spec, on), check=True)

    def power_off(self) -> None:
        self._stop.set()
        if self._reader is not None:
            self._reader.join(5)
        if self.spec.power_relay_gpio is not None:
            self._relay(False)
            time.sleep(1)

    def power_cycle(self) -> None:
        if self.spec.power_relay_gpio is None:
            from agent.cli.rawrepl import RawRepl

            self.power_off()
            assert self.spec.port is not None
            with RawRepl(self.spec.port) as repl:
                repl.enter_raw()
                repl.ser.write(b"import machine\nmachine.reset()\n\x04")
            time.sleep(3)
        else:
            self.power_off()
        self.power_on()

    def console(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def uart(self) -> UartEnd:
        import serial

        assert self.spec.uart_port is not None, f"{self.spec.name}: rig has no uart_port"
        s = serial.Serial(self.spec.uart_port, 115200)
        return UartEnd(os.dup(s.fileno()), owns=True)

    def uart_path(self) -> str:
        assert self.spec.uart_port is not None, f"{self.spec.name}: rig has no uart_port"
        return self.spec.uart_port

    def close(self) -> None:
        self.power_off()
