"""An MQTT 5 upstream broker that refuses the bridge's PUBLISHes (ACL): nothing is counted as
delivered, the cursor does not move past the refused observations, and they go out once the
broker accepts them again."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.devices.codecs.frame import encode_frame
from agent.localbroker import LocalMosquitto

from .conftest import Collector, Device, agent_config_dict, async_wait_until


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[tuple[LocalMosquitto, Path]]:
    acl = tmp_path / "acl"
    acl.write_text("topic read edgence/#\n")  # anonymous clients may read, not write
    # max_queued_messages is bounded here: with 0 (unlimited) Mosquitto 2.0.11 and paho end in
    # a reconnect loop once a PUBLISH is denied; that is recorded as a known issue.
    with LocalMosquitto(
        tmp_path / "acl-mosq", name="upstream", extra=f"acl_file {acl}", max_queued_messages=10_000
    ) as b:
        yield b, acl


async def test_refused_publishes_are_retried_and_delivered_once_the_broker_allows_them(
    local_broker: LocalMosquitto,
    acl_broker: tuple[LocalMosquitto, Path],
    device: Device,
    start_agent: Any,
) -> None:
    upstream, acl = acl_broker
    collector = Collector(upstream.port)
    try:
        cfg = agent_config_dict(local_broker, upstream)
        cfg["bridge"]["protocol"] = "5"
        running = await start_agent(cfg)
        for n in range(1, 6):
            device.publish("devices/dev-1/up", encode_frame(n, [("t", n, 0, "Cel")]))
        m = running.agent.metrics
        await async_wait_until(lambda: m.get("bridge_refused") >= 5, 15, "refusals")
        assert m.get("observations_delivered") == 0
        assert collector.observations() == []
        bridge = running.agent.bridge
        assert bridge is not None and bridge.watermark == 0

        acl.write_text("topic readwrite edgence/#\n")
        assert upstream.proc is not None
        upstream.proc.send_signal(signal.SIGHUP)  # Mosquitto reloads its ACL
        await async_wait_until(lambda: len(collector.observations()) >= 5, 20, "delivery")
        got = sorted({o["message"]["deviceCounter"] for o in collector.observations()})
        assert got == [1, 2, 3, 4, 5]
        await async_wait_until(lambda: bridge.watermark >= 5, 5, "cursor past all five")
    finally:
        collector.close()
