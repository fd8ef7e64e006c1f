"""[oracle]: dApps query signed observations over MQTT 5 and CoAP; optional on-chain submission
of chosen sensors ([oracle.submit])."""

from __future__ import annotations

from dataclasses import dataclass

from agent.config.reader import Section
from agent.config.service import RequestResponseConfig, read_request_response
from agent.model import NAME_RE


@dataclass(frozen=True, kw_only=True)
class OracleConfig(RequestResponseConfig):
    """[oracle]: dApps query signed observations (MQTT 5, CoAP); optional on-chain submission."""

    enabled: bool = False
    reply_topics: tuple[str, ...] = ("{prefix}/{gateway}/oracle/res/{client}/#",)
    submit_enabled: bool = False
    submit_sensors: tuple[tuple[str, str], ...] = ()
    submit_interval_s: float = 60.0
    submit_max_batch: int = 20


def _sensors(sb: Section) -> tuple[tuple[str, str], ...]:
    sensors: list[tuple[str, str]] = []
    for item in sb.str_list("sensors", ()):
        device, slash, sensor = item.partition("/")
        if not slash or not NAME_RE.match(device) or not NAME_RE.match(sensor):
            raise sb.err(
                "sensors", f'each item is "DEVICE/SENSOR", e.g. "dev-1/temp"; got {item!r}'
            )
        sensors.append((device, sensor))
    return tuple(sensors)


def read_oracle(o: Section, local_broker_url: str) -> OracleConfig:
    OC = OracleConfig
    enabled = o.get("enabled", bool, OC.enabled)
    shared = read_request_response(o, OC, local_broker_url)
    sb = o.sub("submit")
    submit_enabled = sb.get("enabled", bool, OC.submit_enabled)
    sensors = _sensors(sb)
    if submit_enabled and not sensors:
        raise sb.err("sensors", 'must list what to submit, e.g. ["dev-1/temp"]')
    cfg = OracleConfig(
        enabled=enabled,
        submit_enabled=submit_enabled,
        submit_sensors=sensors,
        submit_interval_s=sb.duration("interval", OC.submit_interval_s),
        submit_max_batch=sb.int_range("max_batch", OC.submit_max_batch, 1, 500),
        **shared,
    )
    sb.done()
    o.done()
    return cfg
