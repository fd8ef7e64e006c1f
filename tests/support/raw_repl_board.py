"""A simulated MicroPython board behind a real pseudo-terminal: it speaks the raw REPL protocol
(Ctrl-A banner, code until Ctrl-D, "OK", output, \\x04, errors, \\x04, ">") and runs the code it
is sent with CPython against a directory standing in for the board's flash.

A fake, because no board is attached here: it stands in for the board only; the serial line
(pty) and the agent's pyserial code are real. Asked for `sys.implementation`, it answers as the
MicroPython it simulates (`runtime`, default 1.27.0 with .mpy v6, what the WebAssembly port in
the tests runs).
"""

from __future__ import annotations

import builtins
import contextlib
import io
import os
import sys
import threading
import traceback
import tty
from pathlib import Path
from types import SimpleNamespace
from typing import Any

MICROPYTHON_1_27 = SimpleNamespace(name="micropython", version=(1, 27, 0, ""), _mpy=0x306)


class RawReplBoard:
    def __init__(self, flash: Path, runtime: SimpleNamespace = MICROPYTHON_1_27) -> None:
        self.flash = flash
        self.board_sys = SimpleNamespace(**{**vars(sys), "implementation": runtime})
        self.flash.mkdir(parents=True, exist_ok=True)
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.port = os.ttyname(self.slave)
        self.soft_resets = 0
        self.executed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> RawReplBoard:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        os.close(self.slave)
        self._thread.join(5)
        os.close(self.master)

    def _write(self, data: bytes) -> None:
        os.write(self.master, data)

    def _path(self, name: str) -> Path:
        """A board path (relative or from /) inside the flash directory, never outside it."""
        p = (self.flash / name.lstrip("/")).resolve()
        if p != self.flash.resolve() and self.flash.resolve() not in p.parents:
            raise OSError(2, "ENOENT")
        return p

    def _open(self, name: str, mode: str = "r") -> Any:
        return open(self._path(name), mode)

    def _board_os(self) -> Any:
        """The part of MicroPython's `os` the raw-REPL tools use, on the flash directory."""
        path = self._path

        class BoardOs:
            stat = staticmethod(lambda n: os.stat(path(n)))
            mkdir = staticmethod(lambda n: os.mkdir(path(n)))
            remove = staticmethod(lambda n: os.remove(path(n)))
            rename = staticmethod(lambda a, b: os.rename(path(a), path(b)))
            listdir = staticmethod(lambda n="": os.listdir(path(n)))

        return BoardOs

    def _run(self, code: str) -> tuple[bytes, bytes]:
        out, err = io.StringIO(), io.StringIO()
        board_os = self._board_os()

        def board_import(name: str, *args: Any, **kw: Any) -> Any:
            if name in ("os", "uos"):
                return board_os
            if name == "sys":
                return self.board_sys
            return builtins.__import__(name, *args, **kw)

        env: dict[str, Any] = {
            "open": self._open,
            "__name__": "__main__",
            "__builtins__": dict(vars(builtins), __import__=board_import, open=self._open),
        }
        try:
            with contextlib.redirect_stdout(out):
                exec(compile(code, "<stdin>", "exec"), env)
        except Exception:
            err.write(traceback.format_exc(limit=0))
        return out.getvalue().encode(), err.getvalue().encode()

    def _serve(self) -> None:
        raw = False
        buf = bytearray()
        while not self._stop.is_set():
            try:
                data = os.read(self.master, 4096)
            except OSError:
                return
            for b in data:
                c = bytes([b])
                if not raw:
                    if c == b"\x01":
                        raw = True
                        buf.clear()
                        self._write(b"raw REPL; CTRL-B to exit\r\n>")
                    elif c == b"\x03":
                        self._write(b"\r\n>>> ")
                    elif c == b"\x04":
                        self.soft_resets += 1
                        self._write(b"MPY: soft reboot\r\n>>> ")
                    continue
                if c == b"\x02":
                    raw = False
                    self._write(b"\r\nMicroPython (simulated board)\r\n>>> ")
                elif c == b"\x03":
                    buf.clear()
                elif c == b"\x04":
                    code = buf.decode()
                    buf.clear()
                    self.executed.append(code)
                    self._write(b"OK")
                    out, err = self._run(code)
                    self._write(out + b"\x04" + err + b"\x04>")
                elif c != b"\x01":
                    buf += c
