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


def read_bridge(b: Section) -> BridgeConfig:
    B = BridgeConfig
    cfg = BridgeConfig(
        enabled=b.get("enabled", bool, B.enabled),
        broker=read_broker(b, B.broker.url),
        topic_prefix=read_topic_prefix(b, B.topic_prefix),
        inflight=b.int_range("inflight", B.inflight, 1, 65_000),
        batch=b.int_range("batch", B.batch, 1, 10_000),
    )
    b.done()
    return cfg
