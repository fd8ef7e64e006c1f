"""MQTT broker endpoints (`url`, TLS files, login) and topic prefixes, as read by every section
that connects to a broker ([sources.mqtt], [bridge], [forward.mqtt], [oracle.mqtt], ...)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from agent.config.reader import Section


@dataclass(frozen=True)
class BrokerEndpoint:
    """Where an MQTT broker is and how to log in. `url` is mqtt://host:port or mqtts://..."""

    host: str
    port: int
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password_file: Path | None = None
    client_id: str | None = None
    keepalive: int = 30
    protocol: Literal[4, 5] = 4  # MQTT 3.1.1 or 5

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


TOPIC_PREFIX = "edgence"  # the first level of every topic the agent publishes or answers on
LOCAL_BROKER = BrokerEndpoint(host="127.0.0.1", port=1883)  # where the sensors publish
UPSTREAM_BROKER = BrokerEndpoint(host="127.0.0.1", port=1884)  # the bridge's default peer


def parse_broker_url(sec: Section, k: str, default: str | None) -> tuple[str, int, bool]:
    """`sec[k]` as (host, port, tls); no default makes the key required."""
    url = sec.get(k, str, default, required=default is None)
    parts = urlsplit(url)
    if "@" in parts.netloc:
        # Checked first, and the URL is not echoed: it may hold a password.
        raise sec.err(k, "must not carry credentials; use username and password_file")
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not parts.hostname:
        raise sec.err(k, f"must be mqtt://HOST[:PORT] or mqtts://HOST[:PORT]; got {url!r}")
    tls = parts.scheme in ("mqtts", "ssl")
    try:
        port = parts.port if parts.port is not None else (8883 if tls else 1883)
    except ValueError:
        raise sec.err(k, f"has an invalid port in {url!r}") from None
    if not 1 <= port <= 65535:
        raise sec.err(k, f"port must be 1-65535; got {port}")
    return unquote(parts.hostname), port, tls


def read_broker(sec: Section, default_url: str | None) -> BrokerEndpoint:
    """The broker keys of `sec`: url (required when `default_url` is None), TLS, login."""
    host, port, tls = parse_broker_url(sec, "url", default_url)
    proto = sec.choice("protocol", "3.1.1", ("3.1.1", "5"))
    tls = sec.get("tls", bool, tls)
    tls_files = {k: sec.path(k) for k in ("ca_file", "cert_file", "key_file")}
    for k, v in tls_files.items():
        if v is not None and not tls:
            raise sec.err(k, "is only used with TLS: make the url mqtts://HOST[:PORT]")
    if (tls_files["cert_file"] is None) != (tls_files["key_file"] is None):
        raise sec.err("cert_file", "and key_file go together (a client certificate and its key)")
    username = sec.get("username", str)
    password_file = sec.path("password_file")
    if password_file is not None and username is None:
        raise sec.err("password_file", "needs a username (MQTT sends no password without one)")
    return BrokerEndpoint(
        host=host,
        port=port,
        tls=tls,
        ca_file=tls_files["ca_file"],
        cert_file=tls_files["cert_file"],
        key_file=tls_files["key_file"],
        username=username,
        password_file=password_file,
        client_id=sec.get("client_id", str),
        keepalive=sec.int_range("keepalive", BrokerEndpoint.keepalive, 5, 3600),
        protocol=5 if proto == "5" else 4,
    )


def read_topic_prefix(sec: Section, default: str) -> str:
    return sec.checked(
        "topic_prefix",
        default,
        lambda v: (
            bool(v) and not set(v) & set("+#") and not v.startswith("/") and not v.endswith("/")
        ),
        "a topic prefix without + # or leading/trailing /",
    )
