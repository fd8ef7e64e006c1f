"""[sources.mqtt]: the local broker the sensors publish to, its topics and limits."""

from __future__ import annotations

from dataclasses import dataclass

from agent.config.broker import LOCAL_BROKER, BrokerEndpoint, read_broker
from agent.config.reader import Section
from agent.config.sources.limits import MAX_PAYLOAD, MAX_VALUES_PER_FRAME, read_max_values


@dataclass(frozen=True, kw_only=True)
class MqttSourceConfig:
    enabled: bool = True
    broker: BrokerEndpoint = LOCAL_BROKER
    topics: tuple[str, ...] = ("devices/+/up",)
    qos: int = 1
    max_payload: int = MAX_PAYLOAD
    max_values_per_frame: int = MAX_VALUES_PER_FRAME
    allowed_devices: tuple[str, ...] = ()


def read_mqtt_source(m: Section) -> MqttSourceConfig:
    M = MqttSourceConfig
    cfg = MqttSourceConfig(
        enabled=m.get("enabled", bool, M.enabled),
        broker=read_broker(m, M.broker.url),
        topics=m.str_list("topics", M.topics),
        qos=m.int_range("qos", M.qos, 0, 1),
        max_payload=m.int_range("max_payload", M.max_payload, 64, 256 * 1024),
        max_values_per_frame=read_max_values(m),
        allowed_devices=m.device_ids("allowed_devices", M.allowed_devices),
    )
    if not cfg.topics:
        raise m.err("topics", "must list at least one topic filter, e.g. devices/+/up")
    for t in cfg.topics:
        if "+" not in t.split("/") or t.count("+") != 1 or "#" in t:
            raise m.err(
                "topics",
                f"each topic needs exactly one '+' level for the device id; "
                f"got {t!r} (e.g. devices/+/up)",
            )
    m.done()
    return cfg
