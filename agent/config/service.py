"""What the dApp-facing request/response services share ([forward] and [oracle]): MQTT 5
request/response ([<service>.mqtt]) and a CoAP server ([<service>.coap]), read once for both."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from agent.config.broker import TOPIC_PREFIX, BrokerEndpoint, read_broker, read_topic_prefix
from agent.config.reader import Section


@dataclass(frozen=True, kw_only=True)
class RequestResponseConfig:
    """The settings [forward] and [oracle] both have. A subclass sets its own `reply_topics`
    default, whose first entry is also the example in refusals."""

    max_inflight: int = 64
    rate: float = 20.0  # requests per second per client (MQTT: its username; CoAP: its address)
    burst: int = 40
    mqtt_enabled: bool = True
    mqtt: BrokerEndpoint | None = None  # None only when built in code; the reader always sets it
    topic_prefix: str = TOPIC_PREFIX
    reply_topics: tuple[str, ...] = ()
    coap_enabled: bool = False
    coap_host: str = "127.0.0.1"
    coap_port: int = 5683


def read_coap_bind(sec: Section, default: str) -> tuple[str, int]:
    """`bind = "HOST:PORT"` of a CoAP server."""
    bind = sec.get("bind", str, default)
    host, _, port_s = bind.rpartition(":")
    if not host or not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
        raise sec.err("bind", f'must be "HOST:PORT", e.g. "0.0.0.0:5683"; got {bind!r}')
    return host.strip("[]"), int(port_s)


def read_request_response(
    sec: Section, cls: type[RequestResponseConfig], local_broker_url: str
) -> dict[str, Any]:
    """The shared fields of `cls` read from `sec` and its [.mqtt] and [.coap] tables, as keyword
    arguments for `cls`. The MQTT broker defaults to the local one ([sources.mqtt].url)."""
    out: dict[str, Any] = {
        "max_inflight": sec.int_range("max_inflight", cls.max_inflight, 1, 10_000),
        "rate": sec.get("rate", float, cls.rate),
        "burst": sec.int_range("burst", cls.burst, 1, 100_000),
    }
    if out["rate"] <= 0:
        raise sec.err(
            "rate", f"must be a positive number of requests per second; got {out['rate']}"
        )
    m = sec.sub("mqtt")
    out["mqtt_enabled"] = m.get("enabled", bool, cls.mqtt_enabled)
    proto = m.data.get("protocol", "5")
    if proto != "5":
        raise m.err("protocol", f'must be "5" (replies use MQTT 5 response topics); got {proto!r}')
    out["mqtt"] = replace(read_broker(m, local_broker_url), protocol=5)
    out["topic_prefix"] = read_topic_prefix(m, cls.topic_prefix)
    example = cls.reply_topics[0]
    out["reply_topics"] = m.str_list("reply_topics", cls.reply_topics)
    for t in out["reply_topics"]:
        if not t or t.startswith(("#", "+")):
            raise m.err("reply_topics", f"{t!r} is too wide; e.g. {example}")
        if "{client}" not in t.split("/"):
            # Answers go only where their asker, and no other client, may read.
            raise m.err(
                "reply_topics",
                f"{t!r} must have {{client}} as a whole level (the asker's broker username, "
                f"which the broker's ACL lets only that user read); e.g. {example}",
            )
    m.done()
    co = sec.sub("coap")
    out["coap_enabled"] = co.get("enabled", bool, cls.coap_enabled)
    out["coap_host"], out["coap_port"] = read_coap_bind(co, f"{cls.coap_host}:{cls.coap_port}")
    co.done()
    assert set(out) == {f.name for f in fields(RequestResponseConfig)}
    return out
