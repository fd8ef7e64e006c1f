"""Writing a file onto a MicroPython board through its raw REPL (over a serial line).

The raw REPL protocol: Ctrl-C interrupts the running program, Ctrl-A enters raw mode (the board
answers "raw REPL; CTRL-B to exit" and ">"), code is sent followed by Ctrl-D, the board answers
"OK", then the program's output, "\\x04", its error output, "\\x04" and ">". Ctrl-B leaves.
"""

from __future__ import annotations

import contextlib
import time

import serial

from agent.errors import AgentError

RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n>"
CHUNK = 256  # bytes per write: boards' USB-serial input buffers are small


class RawReplError(AgentError):
    """The board did not answer as a MicroPython raw REPL does, or the code failed there."""


class RawRepl:
    def __init__(self, port: str, baudrate: int = 115200, timeout: float = 10.0) -> None:
        self.port = port
        self.timeout = timeout
        self._pending = bytearray()
        try:
            self.ser = serial.Serial(port, baudrate=baudrate, timeout=0.1, exclusive=True)
        except (serial.SerialException, OSError) as exc:
            raise RawReplError(f"cannot open {port}: {exc}") from None

    def close(self) -> None:
        self.ser.close()

    def __enter__(self) -> RawRepl:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.exit_raw()
        finally:
            self.close()

    def _read_until(self, marker: bytes, what: str) -> bytes:
        """Bytes up to `marker` (consumed, not returned); what follows stays buffered."""
        deadline = time.monotonic() + self.timeout
        buf = self._pending
        while (i := buf.find(marker)) < 0:
            if time.monotonic() > deadline:
                raise RawReplError(
                    f"{self.port}: no {what} from the board within {self.timeout:g}s "
                    f"(got {bytes(buf[-60:])!r}); is it running MicroPython?"
                )
            buf += self.ser.read(max(1, self.ser.in_waiting))
            if len(buf) > 1 << 20:
                raise RawReplError(f"{self.port}: more than 1 MiB of output waiting for {what}")
        out = bytes(buf[:i])
        del buf[: i + len(marker)]
        return out

    def enter_raw(self) -> None:
        self.ser.write(b"\r\x03\x03")  # stop whatever runs (main.py's loop)
        time.sleep(0.1)
        self.ser.reset_input_buffer()
        self._pending.clear()
        self.ser.write(b"\r\x01")
        self._read_until(RAW_BANNER, "raw REPL banner")

    def exit_raw(self) -> None:
        with contextlib.suppress(serial.SerialException, OSError):
            self.ser.write(b"\r\x02")

    def exec(self, code: str) -> bytes:
        """Run code in raw mode; return its output, or raise with its error output."""
        data = code.encode()
        for i in range(0, len(data), CHUNK):
            self.ser.write(data[i : i + CHUNK])
            self.ser.flush()
        self.ser.write(b"\x04")
        ok = self._read_until(b"OK", "OK after the code")
        if ok.strip(b"\r\n>"):
            raise RawReplError(f"{self.port}: unexpected bytes before OK: {ok[-60:]!r}")
        out = self._read_until(b"\x04", "program output")
        err = self._read_until(b"\x04", "error output")
        self._read_until(b">", "prompt")
        if err.strip():
            text = err.decode(errors="replace").strip().splitlines()
            raise RawReplError(f"{self.port}: the board reported: {text[-1] if text else err!r}")
        return out

    def write_file(self, name: str, content: bytes) -> None:
        """Write `content` to the board's filesystem as `name`, then read its size back."""
        lines = [f"f=open({name!r},'wb')"]
        for i in range(0, len(content), 128):
            lines.append(f"f.write({content[i : i + 128]!r})")
        lines += ["f.close()", f"import os;print(os.stat({name!r})[6])"]
        out = self.exec("\n".join(lines) + "\n")
        if out.strip() != str(len(content)).encode():
            raise RawReplError(
                f"{self.port}: wrote {len(content)} bytes to {name} but the board reports "
                f"{out.strip()[:40]!r}"
            )


def provision_over_serial(port: str, bundle: bytes, name: str = "config.json") -> None:
    """Write the provisioning bundle to a MicroPython board, then soft-reset it (Ctrl-D in the
    normal REPL) so that it starts with its new config."""
    with RawRepl(port) as repl:
        repl.enter_raw()
        repl.write_file(name, bundle)
        repl.exit_raw()
        repl.ser.write(b"\x04")
        repl._read_until(b"soft reboot", "soft reboot after writing the bundle")
