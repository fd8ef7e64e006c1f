"""[bridge]: the upstream broker or cluster the journal's observations are published to."""

from __future__ import annotations

from dataclasses import dataclass

from agent.config.broker import (
    TOPIC_PREFIX,
    UPSTREAM_BROKER,
    BrokerEndpoint,
    read_broker,
    read_topic_prefix,
)
from agent.config.reader import Section


@dataclass(frozen=True, kw_only=True)
class BridgeConfig:
    enabled: bool = True
    broker: BrokerEndpoint = UPSTREAM_BROKER
    topic_prefix: str = TOPIC_PREFIX
    inflight: int = 256
    batch: int = 512
    # > 1: up to this many envelopes per upstream message, a JSON array on
    # <prefix>/<gateway>/obs-batch (each envelope still signed on its own); 1: one per message.
    envelopes_per_message: int = 1


def read_bridge(b: Section) -> BridgeConfig:
    B = BridgeConfig
    cfg = BridgeConfig(
        enabled=b.get("enabled", bool, B.enabled),
        broker=read_broker(b, B.broker.url),
        topic_prefix=read_topic_prefix(b, B.topic_prefix),
        inflight=b.int_range("inflight", B.inflight, 1, 65_000),
        batch=b.int_range("batch", B.batch, 1, 10_000),
        envelopes_per_message=b.int_range("envelopes_per_message", B.envelopes_per_message, 1, 256),
    )
    b.done()
    return cfg
