"""A Mosquitto broker run as a child process on a loopback port: the embedded default broker of
`edgence-agent demo`, and the real broker the tests start. It can be stopped and started again
on the same port (to cut the link) and says clearly when Mosquitto is not installed.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from agent.errors import AgentError

MOSQUITTO_CANDIDATES = ("mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


class BrokerError(AgentError):
    pass


def find_mosquitto() -> str:
    for c in MOSQUITTO_CANDIDATES:
        path = shutil.which(c) or (c if Path(c).is_file() else None)
        if path:
            return path
    raise BrokerError(
        "mosquitto is not installed",
        fix="sudo apt-get install mosquitto (scripts/demo and scripts/test do this for you)",
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes] | None, grace: float = 5.0) -> None:
    """SIGTERM a child server, SIGKILL it if it is still there after `grace` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class LocalMosquitto:
    """`with LocalMosquitto(dir) as b:` -> b.port. `stop()` / `start()` keep the same port."""

    def __init__(
        self,
        workdir: Path,
        *,
        name: str = "broker",
        port: int | None = None,
        max_queued_messages: int = 0,
        max_inflight_messages: int = 1000,
        persistence: bool = False,
        allow_anonymous: bool = True,
        extra: str = "",
    ) -> None:
        self.workdir = Path(workdir)
        self.name = name
        self.port = port or free_port()
        self.binary = find_mosquitto()
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf = self.workdir / f"{name}.conf"
        self.logfile = self.workdir / f"{name}.log"
        lines = [
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'true' if allow_anonymous else 'false'}",
            # 0 = unlimited: a broker-side drop would be a test artefact, not agent behaviour.
            f"max_queued_messages {max_queued_messages}",
            f"max_inflight_messages {max_inflight_messages}",
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {self.workdir}/",
            f"persistence_file {name}.db",
            "log_dest stderr",
            # As root, Mosquitto drops to the `mosquitto` user before reading its files, and that
            # user cannot enter a private temporary directory: stay root for this private broker.
            "user root" if os.geteuid() == 0 else "",
            "log_type error",
            "log_type warning",
            "log_type notice",
            extra,
        ]
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf.write_text("\n".join(lines) + "\n")

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        with open(self.logfile, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(self.conf)],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerError(
                    f"mosquitto exited with code {self.proc.returncode}; "
                    f"see {self.logfile}: {self.logfile.read_text()[-400:]}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise BrokerError(f"mosquitto did not listen on 127.0.0.1:{self.port} in {timeout}s")

    def reload(self) -> None:
        """SIGHUP: Mosquitto re-reads its password file and ACL."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGHUP)

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def __enter__(self) -> LocalMosquitto:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
