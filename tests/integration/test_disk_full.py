"""A full disk under the journal: the agent counts it, says so in one line, holds what it has
(the local broker keeps the rest), keeps running, and loses nothing once space returns.

The disk is a real, tiny tmpfs mounted for the test (root only; skipped otherwise)."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.devices.codecs.frame import encode_frame
from agent.localbroker import LocalMosquitto

from .conftest import Collector, Device, agent_config_dict, async_wait_until


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk: Path) -> Path:
    """Fill the disk to the last byte with one file."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass  # ENOSPC: full
    finally:
        os.close(fd)
    return filler


def counters(collector: Collector) -> list[int]:
    return [o["message"]["deviceCounter"] for o in collector.observations()]


async def test_full_disk_holds_readings_and_delivers_all_of_them_when_space_returns(
    tiny_disk: Path,
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    collector: Collector,
    device: Device,
    start_agent: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = agent_config_dict(
        local_broker, upstream_broker, gateway={"data_dir": str(tiny_disk / "data")}
    )
    running = await start_agent(cfg)
    for n in range(1, 21):
        device.publish("devices/dev-1/up", encode_frame(n, [("t", n, 0, "Cel")]))
    await async_wait_until(lambda: len(set(counters(collector))) == 20, 10, "first 20")

    filler = await asyncio.to_thread(fill, tiny_disk)
    caplog.set_level(logging.WARNING, logger="agent.pipeline")

    def publish_more() -> None:
        for n in range(21, 321):
            device.publish("devices/dev-1/up", encode_frame(n, [("t", n, 0, "Cel")]), wait=False)

    await asyncio.to_thread(publish_more)
    m = running.agent.metrics
    await async_wait_until(lambda: m.get("journal_errors") > 0, 15, "the journal to hit ENOSPC")
    assert not running.task.done(), "the agent must keep running on a full disk"
    lines = [r.getMessage() for r in caplog.records if "event=journal_error" in r.getMessage()]
    assert lines and "held=" in lines[0]
    held_while_full = len(set(counters(collector)))
    assert held_while_full < 320

    filler.unlink()  # space returns
    await async_wait_until(lambda: len(set(counters(collector))) == 320, 30, "all 320 readings")
    got = counters(collector)
    assert sorted(set(got)) == list(range(1, 321))
    seqs = [o["message"]["gatewaySequence"] for o in collector.observations()]
    assert len(seqs) == len(set(seqs)), "no observation was delivered twice"
    assert m.get("frames_rejected") == 0
