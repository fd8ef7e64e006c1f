"""sd_notify over a real unix datagram socket: what systemd would receive, and silence outside
systemd."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.sdnotify import Watchdog, notify, watchdog_interval


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    # A short directory: unix socket paths are limited to 107 bytes.
    d = tempfile.mkdtemp(prefix="sdn-", dir="/tmp")
    path = os.path.join(d, "notify")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(10)
    yield s, path
    s.close()
    os.unlink(path)
    os.rmdir(d)


def test_states_arrive_as_one_datagram_of_newline_separated_assignments(
    notify_socket: tuple[socket.socket, str],
) -> None:
    s, path = notify_socket
    assert notify("READY=1", "STATUS=started", env={"NOTIFY_SOCKET": path})
    assert s.recv(4096) == b"READY=1\nSTATUS=started"


def test_abstract_namespace_socket_is_addressed_with_a_nul_byte() -> None:
    name = f"edgence-test-{secrets.token_hex(6)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(b"\0" + name.encode())
        s.settimeout(10)
        assert notify("STOPPING=1", env={"NOTIFY_SOCKET": "@" + name})
        assert s.recv(4096) == b"STOPPING=1"


def test_without_notify_socket_nothing_is_sent_and_nothing_fails() -> None:
    assert notify("READY=1", env={}) is False


def test_a_vanished_socket_is_reported_not_raised(tmp_path: Path) -> None:
    assert notify("READY=1", env={"NOTIFY_SOCKET": str(tmp_path / "gone")}) is False


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_pings_at_half_the_interval_systemd_asks_for(
    env: dict[str, str], expected: float | None
) -> None:
    assert watchdog_interval(env) == expected


async def test_watchdog_pings_from_the_event_loop_until_stopped(
    notify_socket: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    s, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    wd = Watchdog(0.01)
    wd.start()
    wd.start()  # twice is harmless
    got = [await asyncio.to_thread(s.recv, 64) for _ in range(3)]
    wd.stop()
    wd.stop()
    assert got == [b"WATCHDOG=1"] * 3
    assert wd.pings >= 3


def test_no_watchdog_interval_means_no_pings() -> None:
    wd = Watchdog(None)
    wd.start()  # needs no running loop: it does nothing
    assert wd.pings == 0
