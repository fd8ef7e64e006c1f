"""[sources.coap]: the CoAP server devices POST frames to, OSCORE, and the devices it OBSERVEs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

from agent.config.reader import Section
from agent.config.sources.limits import MAX_PAYLOAD, MAX_VALUES_PER_FRAME, read_max_values


@dataclass(frozen=True, kw_only=True)
class CoapObserveConfig:
    """A CoAP resource on a device that the agent OBSERVEs (client mode)."""

    device: str
    uri: str
    timeout_s: float = 10.0  # for the registration's first response
    # Re-register when no notification came for this long; None: the last Max-Age + 25 %.
    reregister_s: float | None = None


@dataclass(frozen=True, kw_only=True)
class CoapSourceConfig:
    enabled: bool = False
    # Loopback unless the operator names the address devices reach (e.g. "0.0.0.0", or the LAN
    # address): a device source open to every network is a choice, not a default.
    bind: str = "127.0.0.1"
    port: int = 5683
    max_payload: int = MAX_PAYLOAD
    max_values_per_frame: int = MAX_VALUES_PER_FRAME
    allowed_devices: tuple[str, ...] = ()
    busy_max_age: int = 2  # Max-Age (s) on 5.03 / 4.29: when a device may try again
    oscore_dir: Path | None = None  # one FilesystemSecurityContext directory per device id
    observe: tuple[CoapObserveConfig, ...] = ()
    backoff_max_s: float = 30.0


def _observe(o: Section) -> CoapObserveConfig:
    uri = o.get("uri", str, required=True)
    parts = urlsplit(uri)
    if parts.scheme != "coap" or not parts.hostname:
        raise o.err("uri", f"must be coap://HOST[:PORT]/PATH; got {uri!r}")
    cfg = CoapObserveConfig(
        device=cast(str, o.device_id("device", required=True)),
        uri=uri,
        timeout_s=o.duration("timeout", CoapObserveConfig.timeout_s),
        reregister_s=o.duration("reregister_after", 1.0) if "reregister_after" in o.data else None,
    )
    o.read.add("reregister_after")
    o.done()
    return cfg


def read_coap_source(c: Section) -> CoapSourceConfig:
    C = CoapSourceConfig
    observe = tuple(_observe(o) for o in c.sub_list("observe"))
    devices = [o.device for o in observe]
    if len(set(devices)) != len(devices):
        raise c.err("observe", "each device may be observed once (one [[...observe]] per device)")
    cfg = CoapSourceConfig(
        enabled=c.get("enabled", bool, C.enabled),
        bind=c.get("bind", str, C.bind),
        port=c.int_range("port", C.port, 1, 65535),
        max_payload=c.int_range("max_payload", C.max_payload, 64, 64 * 1024),
        max_values_per_frame=read_max_values(c),
        allowed_devices=c.device_ids("allowed_devices", C.allowed_devices),
        busy_max_age=c.int_range("busy_max_age", C.busy_max_age, 1, 3600),
        oscore_dir=c.path("oscore_dir"),
        observe=observe,
        backoff_max_s=c.duration("backoff_max", C.backoff_max_s),
    )
    c.done()
    return cfg
