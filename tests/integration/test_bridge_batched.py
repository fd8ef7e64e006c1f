"""The optional batched upstream envelope (bridge.envelopes_per_message > 1) against real
Mosquitto brokers: several observations per upstream message, each one still signed and
verifiable on its own, in gateway-sequence order with nothing missing."""

from __future__ import annotations

import time
from typing import Any

from agent.attest.keys import GatewayKey
from agent.attest.observation import split_batch, verify_envelope
from agent.devices.codecs.frame import encode_frame
from agent.localbroker import LocalMosquitto

from .conftest import Collector, Device, agent_config_dict, async_wait_until


async def test_batched_messages_carry_every_observation_in_order_each_verifiable(
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    device: Device,
    start_agent: Any,
) -> None:
    key = GatewayKey.generate()
    topic = f"edgence/{key.address}/obs-batch"
    batches = Collector(upstream_broker.port, topic)
    per_frame, frames = 4, 30
    try:
        cfg = agent_config_dict(local_broker, upstream_broker, bridge={"envelopes_per_message": 8})
        await start_agent(cfg, key)
        ts = int(time.time())
        for counter in range(1, frames + 1):
            values = [(f"s{k}", counter * 10 + k, -1, "Cel") for k in range(per_frame)]
            device.publish("devices/dev-1/up", encode_frame(counter, values, timestamp=ts))

        def envelopes() -> list[Any]:
            with batches.lock:
                payloads = [p for t, p, _ in batches.messages if t == topic]
            return [env for p in payloads for env in split_batch(p)]

        await async_wait_until(
            lambda: len(envelopes()) >= per_frame * frames, 20, "every observation upstream"
        )
        with batches.lock:
            sizes = [len(split_batch(p)) for _, p, _ in batches.messages]
        verified = [verify_envelope(env) for env in envelopes()]
        assert {v.signer for v in verified} == {key.address}
        seqs = [v.gateway_sequence for v in verified]
        assert seqs == list(range(seqs[0], seqs[0] + per_frame * frames))
        assert [(v.reading.counter, v.reading.value) for v in verified] == [
            (c, c * 10 + k) for c in range(1, frames + 1) for k in range(per_frame)
        ]
        # Batched for real: no message over the limit, and fewer messages than observations
        # (a frame's four readings are journaled together and leave together).
        assert max(sizes) <= 8 and len(sizes) < per_frame * frames
    finally:
        batches.close()
