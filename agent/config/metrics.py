"""[metrics]: the loopback HTTP endpoint (/metrics, /health) and the health message's interval."""

from __future__ import annotations

from dataclasses import dataclass

from agent.config.reader import Section

_LOOPBACK = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True, kw_only=True)
class MetricsConfig:
    """The loopback HTTP endpoint (/metrics for Prometheus, /health as JSON) and the retained
    health message published upstream every `health_interval_s`."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9464
    health_interval_s: float = 30.0

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def read_metrics(sec: Section) -> MetricsConfig:
    M = MetricsConfig
    listen = sec.get("listen", str, f"{M.host}:{M.port}")
    host, sep, port = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise sec.err("listen", f'must be HOST:PORT such as "127.0.0.1:9464"; got {listen!r}')
    if host not in _LOOPBACK and not host.startswith("127."):
        # The endpoint has no authentication: it stays on loopback (scrape it through an SSH
        # tunnel or a local Prometheus agent / reverse proxy).
        raise sec.err("listen", f"must be a loopback address (127.0.0.1, ::1); got {host!r}")
    cfg = MetricsConfig(
        enabled=sec.get("enabled", bool, M.enabled),
        host=host,
        port=int(port),
        health_interval_s=sec.duration("health_interval", M.health_interval_s),
    )
    sec.done()
    return cfg
