"""A doctor check that raises is reported as a failed line of its own; it never hides the
other checks' report behind a traceback."""

from __future__ import annotations

from pathlib import Path

from agent.cli.checks import Check
from agent.cli.doctor import _guarded


def test_a_check_that_raises_is_a_failed_line_naming_the_exception() -> None:
    def broken(path: Path) -> Check:
        raise FileNotFoundError(f"{path} vanished while it was read")

    got = _guarded("listen", broken, Path("/proc/4242/net/tcp"))
    assert got.name == "listen" and got.status == "fail"
    assert "FileNotFoundError: /proc/4242/net/tcp vanished while it was read" in got.detail
    assert got.fix and "doctor --json" in got.fix


def test_a_check_that_returns_is_passed_through_unchanged() -> None:
    ok = Check("clock", "ok", "in step")
    assert _guarded("clock", lambda: ok) is ok
