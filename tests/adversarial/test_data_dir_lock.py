"""A second agent on the same data directory (an operator starting `run` by hand beside the
systemd service) is refused before it touches anything; the first keeps running and serving."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from agent.devices.codecs.frame import encode_frame
from agent.localbroker import LocalMosquitto
from tests.integration.conftest import (
    AgentProcess,
    Collector,
    Device,
    agent_config_dict,
    wait_until,
    write_agent_dir,
)


def test_a_second_agent_on_the_same_data_directory_exits_naming_the_first(
    tmp_path: Path,
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    collector: Collector,
    device: Device,
    agent_process: Any,
) -> None:
    config, _key = write_agent_dir(
        tmp_path / "etc", agent_config_dict(local_broker, upstream_broker)
    )
    first: AgentProcess = agent_process(config)
    first.start()
    assert first.proc is not None
    second = subprocess.run(
        [sys.executable, "-m", "agent.cli", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert second.returncode != 0
    assert "already running" in second.stderr and f"pid {first.proc.pid}" in second.stderr
    assert "gateway.data_dir" in second.stderr
    # The first one never noticed: its broker sessions were not taken over.
    device.publish("devices/dev-1/up", encode_frame(1, [("t", 5, 0, "Cel")]))
    wait_until(lambda: len(collector.raw_observations()) == 1, 10, "the observation upstream")
    assert "mqtt_disconnected" not in first.log_text()
    first.signal(signal.SIGTERM)
    assert first.wait(10) == 0

    # Once the first has stopped (or died: the kernel drops the lock with the process), the
    # same data directory is free again.
    again: AgentProcess = agent_process(config)
    again.start()
    again.kill()  # SIGKILL: no clean-up ran
    third: AgentProcess = agent_process(config)
    third.start()
    third.signal(signal.SIGTERM)
    assert third.wait(10) == 0
