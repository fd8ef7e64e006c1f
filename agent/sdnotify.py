"""systemd's notify protocol (sd_notify): READY=1, STATUS=..., WATCHDOG=1, STOPPING=1.

One datagram per message to the unix socket named by $NOTIFY_SOCKET ('@' = abstract namespace);
outside systemd (no $NOTIFY_SOCKET) every call is a no-op. No dependency beyond `socket`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

from agent.logs import event

log = logging.getLogger("agent.sdnotify")


def _address(raw: str) -> str | bytes:
    # An abstract-namespace socket is written '@name' and addressed with a leading NUL byte.
    return b"\0" + raw[1:].encode() if raw.startswith("@") else raw


def notify(*states: str, env: dict[str, str] | None = None) -> bool:
    """Send `states` (e.g. "READY=1", "STATUS=ready") as one datagram; False when not under
    systemd or the socket is gone (never raises: a missing supervisor is not an agent error)."""
    raw = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
    if not raw or not states:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto("\n".join(states).encode(), _address(raw))
    except OSError as exc:
        event(log, "sd_notify_failed", logging.WARNING, socket=raw, error=exc.strerror)
        return False
    return True


def watchdog_interval(env: dict[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of $WATCHDOG_USEC), or None when systemd set no
    watchdog for this process ($WATCHDOG_PID names another process, e.g. a wrapper's child)."""
    e = os.environ if env is None else env
    usec, pid = e.get("WATCHDOG_USEC", ""), e.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 2e6


class Watchdog:
    """Pings systemd's watchdog from the event loop (`loop.call_at`, no sleeping task): if the
    loop hangs, the pings stop and systemd restarts the agent (WatchdogSec= in the unit).
    `start()` and `stop()` are safe to call twice."""

    def __init__(self, interval: float | None) -> None:
        self.interval = interval
        self.pings = 0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self.interval is None or self._handle is not None:
            return
        self._ping()

    def _ping(self) -> None:
        if notify("WATCHDOG=1"):
            self.pings += 1
        assert self.interval is not None
        loop = asyncio.get_running_loop()
        self._handle = loop.call_at(loop.time() + self.interval, self._ping)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
