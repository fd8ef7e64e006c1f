"""[bridge]: the upstream broker or cluster the journal's observations are published to.

`url` is one broker URL or a list of them (the nodes of a cluster, or a primary and a standby):
the bridge uses the first that answers, moves to the next on failure, and returns to the first
once it accepts connections again (checked every `failback_check`). Every URL shares the
section's TLS, login and client id settings.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from agent.config.broker import (
    TOPIC_PREFIX,
    UPSTREAM_BROKER,
    BrokerEndpoint,
    parse_broker_url,
    read_broker,
    read_topic_prefix,
)
from agent.config.reader import Section

_URL_LIST = (
    'a broker URL or a non-empty list of distinct ones, e.g. ["mqtts://a:8883", "mqtts://b:8883"]'
)


@dataclass(frozen=True, kw_only=True)
class BridgeConfig:
    enabled: bool = True
    broker: BrokerEndpoint = UPSTREAM_BROKER  # the first (preferred) broker
    fallbacks: tuple[BrokerEndpoint, ...] = ()  # the others, in the order they are tried
    failback_check_s: float = 30.0  # while on a fallback: how often the first is tried
    topic_prefix: str = TOPIC_PREFIX
    inflight: int = 256
    batch: int = 512
    # > 1: up to this many envelopes per upstream message, a JSON array on
    # <prefix>/<gateway>/obs-batch (each envelope still signed on its own); 1: one per message.
    envelopes_per_message: int = 1

    @property
    def brokers(self) -> tuple[BrokerEndpoint, ...]:
        return (self.broker, *self.fallbacks)


def read_bridge(b: Section) -> BridgeConfig:
    B = BridgeConfig
    raw = b.data.get("url")
    first_url = ""
    others: list[str] = []
    if isinstance(raw, list):
        if not raw or not all(isinstance(u, str) for u in raw) or len(set(raw)) != len(raw):
            raise b.err("url", f"must be {_URL_LIST}; got {raw!r}")
        first_url, others = raw[0], raw[1:]
        b.data = {**b.data, "url": first_url}
    broker = read_broker(b, B.broker.url)
    fallbacks = []
    for url in others:
        one = Section(b.file, b.name, {"url": url}, b.base)
        host, port, tls = parse_broker_url(one, "url", None)
        if (
            tls
            != parse_broker_url(Section(b.file, b.name, {"url": first_url}, b.base), "url", None)[2]
        ):
            raise b.err(
                "url", f"must use one scheme for every broker; {url!r} differs from the first"
            )
        fallbacks.append(replace(broker, host=host, port=port))
    cfg = BridgeConfig(
        enabled=b.get("enabled", bool, B.enabled),
        broker=broker,
        fallbacks=tuple(fallbacks),
        failback_check_s=b.duration("failback_check", B.failback_check_s),
        topic_prefix=read_topic_prefix(b, B.topic_prefix),
        inflight=b.int_range("inflight", B.inflight, 1, 65_000),
        batch=b.int_range("batch", B.batch, 1, 10_000),
        envelopes_per_message=b.int_range("envelopes_per_message", B.envelopes_per_message, 1, 256),
    )
    b.done()
    return cfg
