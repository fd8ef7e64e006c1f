"""Upstream failover with two real Mosquitto brokers: `bridge.url` lists both; the first is
stopped mid-stream, the bridge moves to the second, and returns to the first once it is back.
Across both brokers every reading arrives (duplicates only as identical copies), each broker
sees the journal's order, and health names the broker in use."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from agent.devices.codecs.frame import encode_frame
from agent.localbroker import LocalMosquitto

from .conftest import Collector, Device, agent_config_dict, async_wait_until
from .test_delivery_guarantees import dedupe_by_sequence

pytestmark = pytest.mark.timeout(120)


def first_copies(collector: Collector) -> list[int]:
    """Sequences in the order one broker's subscriber first saw them."""
    seen: set[int] = set()
    out = []
    for _, payload in collector.raw_observations():
        seq = json.loads(payload)["message"]["gatewaySequence"]
        if seq not in seen:
            seen.add(seq)
            out.append(seq)
    return out


@pytest.mark.slow
async def test_the_bridge_fails_over_to_the_second_broker_and_back_losing_nothing(
    tmp_path: Path, local_broker: LocalMosquitto, device: Device, start_agent: Any
) -> None:
    with (
        LocalMosquitto(tmp_path / "a", name="upstream-a", persistence=True) as first,
        LocalMosquitto(tmp_path / "b", name="upstream-b", persistence=True) as second,
    ):
        on_first, on_second = Collector(first.port), Collector(second.port)
        cfg = agent_config_dict(local_broker, first)
        cfg["bridge"] = {"url": [first.url, second.url], "failback_check": 1}
        running = await start_agent(cfg)
        bridge = running.agent.bridge
        assert bridge is not None
        sent = 0

        async def publish(n: int) -> None:
            nonlocal sent
            for _ in range(n):
                sent += 1
                frame = encode_frame(sent, [("t", sent, 0, "Cel")])
                await asyncio.to_thread(device.publish, "devices/dev-1/up", frame)

        def health() -> dict[str, Any]:
            doc: dict[str, Any] = bridge.health().as_dict()
            return doc

        try:
            await publish(200)
            await async_wait_until(lambda: bridge.watermark >= 200, 20, "200 on the first")
            assert (health()["broker"], health()["url"]) == (1, first.url)

            stopping = asyncio.create_task(asyncio.to_thread(first.stop))
            await publish(300)  # mid-stream: the first broker goes away meanwhile
            await stopping
            await async_wait_until(lambda: bridge.watermark >= 500, 30, "500 delivered")
            assert (health()["broker"], health()["url"], health()["brokers"]) == (
                2,
                second.url,
                2,
            )
            assert on_second.raw_observations(), "the second broker took over"

            await asyncio.to_thread(first.start)
            await async_wait_until(lambda: health()["broker"] == 1, 20, "back on the first")
            await publish(200)
            await async_wait_until(lambda: bridge.watermark >= 700, 20, "700 delivered")
            assert health()["url"] == first.url

            def both() -> list[tuple[str, bytes]]:
                return on_first.raw_observations() + on_second.raw_observations()

            # The consumers' sessions outlive the broker restart; they reconnect on their own.
            await async_wait_until(
                lambda: len({p for _, p in both()}) >= 700, 20, "700 readings at the consumers"
            )
            obs = dedupe_by_sequence(both())  # repeats are byte-identical copies
            assert sorted(o["message"]["gatewaySequence"] for o in obs) == list(range(1, 701))
            assert sorted(o["message"]["deviceCounter"] for o in obs) == list(range(1, 701))
            for got in (first_copies(on_first), first_copies(on_second)):
                assert got == sorted(got)  # each broker saw the journal's order
            assert max(first_copies(on_first)) == 700  # the later readings went to the first
        finally:
            on_first.close()
            on_second.close()
