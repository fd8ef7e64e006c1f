"""[enrollment]: devices enrolled with `pair` (registry, frame rate limit, join window) and the
per-device broker logins `pair` manages ([enrollment.mosquitto])."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from agent.config.reader import Section

DIR_NAME = "devices"  # in the data directory, unless `registry_dir` says otherwise


@dataclass(frozen=True, kw_only=True)
class BrokerAuthConfig:
    """Per-device broker credentials that `pair` manages (Mosquitto password file + ACL)."""

    password_file: Path | None = None
    acl_file: Path | None = None
    pid_file: Path | None = None  # the broker is sent SIGHUP to reload them
    agent_username: str | None = None  # gets read access to every device topic
    # Home Assistant's own login: reads the discovery and state topics ([homeassistant])
    homeassistant_username: str | None = None
    device_topic: str = "devices/{id}/up"


@dataclass(frozen=True, kw_only=True)
class EnrollmentConfig:
    enabled: bool = True
    registry_dir: Path  # default: <data_dir>/devices
    rate: float = 10.0
    burst: float = 20.0
    join_window_s: float = 120.0
    advertise_host: str | None = None
    broker_auth: BrokerAuthConfig = field(default_factory=BrokerAuthConfig)


def _broker_auth(ma: Section) -> BrokerAuthConfig:
    cfg = BrokerAuthConfig(
        password_file=ma.path("password_file"),
        acl_file=ma.path("acl_file"),
        pid_file=ma.path("pid_file"),
        agent_username=ma.get("agent_username", str),
        homeassistant_username=ma.get("homeassistant_username", str),
        device_topic=ma.checked(
            "device_topic",
            BrokerAuthConfig.device_topic,
            lambda v: v.count("{id}") == 1 and not set(v) & set("+#"),
            "a topic with one {id} and no wildcards, e.g. devices/{id}/up",
        ),
    )
    if (cfg.password_file is None) != (cfg.acl_file is None):
        raise ma.err("acl_file", "password_file and acl_file go together: set both or neither")
    ma.done()
    return cfg


def read_enrollment(e: Section, data_dir: Path) -> EnrollmentConfig:
    E = EnrollmentConfig
    broker_auth = _broker_auth(e.sub("mosquitto"))
    window = e.duration("join_window", E.join_window_s)
    if not 1 <= window <= 254:
        raise e.err("join_window", f"must be 1s to 254s (a short window); got {window:g}s")
    rate = e.get("rate", float, E.rate)
    if not 0 < rate <= 100_000:
        raise e.err("rate", f"frames per second per device, above 0 and at most 100000; got {rate}")
    cfg = EnrollmentConfig(
        enabled=e.get("enabled", bool, E.enabled),
        registry_dir=cast(Path, e.path("registry_dir", str(data_dir / DIR_NAME))),
        rate=rate,
        burst=float(e.int_range("burst", int(E.burst), 1, 1_000_000)),
        join_window_s=window,
        advertise_host=e.get("advertise_host", str),
        broker_auth=broker_auth,
    )
    e.done()
    return cfg
