"""An attacker with captured frames of an enrolled device against the replay window (issue 16):
the real agent, real Mosquitto, frames with valid MACs.

- Every captured frame replayed inside the window is refused: each counter is signed once.
- A frame the attacker held back is accepted once if it is still inside the window (it was
  never delivered: that is what the window is for), and never once the device has moved more
  than `journal.replay_window` counters past it.
- At counter 2^64-1 the window still works: the frame is taken once, its replays are refused,
  also after a restart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.devices.auth import encode_signed_frame
from agent.devices.registry import DeviceRegistry
from agent.localbroker import LocalMosquitto
from agent.model import Transport
from tests.integration.conftest import Collector, Device, agent_config_dict, async_wait_until

MAX = 2**64 - 1


def signed_counters(collector: Collector) -> list[int]:
    return [int(o["message"]["deviceCounter"]) for o in collector.observations()]


def replays(running: Any) -> int:
    return int(running.agent.metrics.by_label("frames_rejected", "reason").get("replay", 0))


async def enrolled_agent(
    tmp_path: Path, local: LocalMosquitto, upstream: LocalMosquitto, start_agent: Any, **kw: Any
) -> tuple[Any, bytes, dict[str, Any]]:
    reg = DeviceRegistry(tmp_path / "gw" / "data" / "devices")
    _, key = reg.enroll("victim", transport=Transport.MQTT)
    reg.activate(["victim"])
    cfg = agent_config_dict(local, upstream, journal={"replay_window": 64})
    cfg["sources"]["mqtt"]["allowed_devices"] = []
    running = await start_agent(cfg, name="gw", **kw)
    return running, key, cfg


async def test_captured_frames_replayed_inside_the_window_are_each_refused(
    tmp_path: Path,
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    collector: Collector,
    device: Device,
    start_agent: Any,
) -> None:
    running, key, _ = await enrolled_agent(tmp_path, local_broker, upstream_broker, start_agent)
    frames = {n: encode_signed_frame(key, "victim", n, [("t", n, 0, "Cel")]) for n in range(1, 41)}
    for n in range(1, 31):
        device.publish("devices/victim/up", frames[n])
    await async_wait_until(lambda: len(signed_counters(collector)) == 30, 15, "frames 1-30")
    attacker = Device(local_broker.port, client_id="attacker")
    try:
        for n in range(30, 0, -1):  # every captured frame, newest first, all inside the window
            attacker.publish("devices/victim/up", frames[n])
    finally:
        attacker.close()
    await async_wait_until(lambda: replays(running) == 30, 15, "30 replays refused")
    assert signed_counters(collector) == list(range(1, 31))


async def test_a_held_back_frame_is_taken_once_inside_the_window_and_never_below_it(
    tmp_path: Path,
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    collector: Collector,
    device: Device,
    start_agent: Any,
) -> None:
    """The attacker keeps frames 10 and 150 from the gateway and sends them after the device
    reached 200: 150 is inside the window (137..200) and taken once; 10 is below it."""
    running, key, _ = await enrolled_agent(tmp_path, local_broker, upstream_broker, start_agent)

    def frame(n: int) -> bytes:
        return encode_signed_frame(key, "victim", n, [("t", n, 0, "Cel")])

    sent = [n for n in range(1, 201) if n not in (10, 150)]
    for n in sent:
        device.publish("devices/victim/up", frame(n), wait=n == sent[-1])
    await async_wait_until(lambda: len(signed_counters(collector)) == 198, 30, "the device's")
    attacker = Device(local_broker.port, client_id="attacker")
    try:
        for n in (10, 150, 150, 10, 136):
            attacker.publish("devices/victim/up", frame(n))
    finally:
        attacker.close()
    await async_wait_until(lambda: replays(running) == 4, 15, "four refused")
    await async_wait_until(lambda: len(signed_counters(collector)) == 199, 15, "frame 150")
    assert sorted(signed_counters(collector)) == sorted([*sent, 150])


async def test_the_highest_counter_is_taken_once_and_stays_spent_after_a_restart(
    tmp_path: Path,
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    collector: Collector,
    device: Device,
    start_agent: Any,
) -> None:
    running, key, cfg = await enrolled_agent(tmp_path, local_broker, upstream_broker, start_agent)

    def frame(n: int) -> bytes:
        return encode_signed_frame(key, "victim", n, [("t", 1, 0, "Cel")])

    for n in (MAX - 2, MAX, MAX, MAX - 1, MAX - 64):
        device.publish("devices/victim/up", frame(n))
    await async_wait_until(lambda: replays(running) == 2, 15, "two refused")
    await async_wait_until(lambda: len(signed_counters(collector)) == 3, 15, "three signed")
    assert signed_counters(collector) == [MAX - 2, MAX, MAX - 1]
    gateway_key = running.agent.key
    await running.stop()
    again = await start_agent(cfg, key=gateway_key, name="gw")
    for n in (MAX, MAX - 1, MAX - 2, MAX - 3):
        device.publish("devices/victim/up", frame(n))
    await async_wait_until(lambda: len(signed_counters(collector)) == 4, 15, "MAX - 3")
    await async_wait_until(lambda: replays(again) == 3, 15, "three refused after the restart")
    assert signed_counters(collector) == [MAX - 2, MAX, MAX - 1, MAX - 3]
