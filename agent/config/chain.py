"""[chain]: the colocated full node (JSON-RPC over HTTP, optional WebSocket) and the agent's own
transactions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

from agent.config.reader import Section

STORE_NAME = "chain.sqlite"  # in the data directory, unless `store` says otherwise


@dataclass(frozen=True, kw_only=True)
class ChainConfig:
    """[chain]: the colocated full node and the agent's own transactions."""

    enabled: bool = False
    rpc_url: str = "http://127.0.0.1:8545"
    ws_url: str | None = None  # none: heads and logs are polled over HTTP
    timeout_s: float = 5.0
    poll_interval_s: float = 1.0
    confirmations: int = 1
    stuck_after_s: float = 60.0
    fee_bump_percent: int = 13
    store: Path | None = None  # the agent's own transactions (<data_dir>/chain.sqlite)


def read_node_url(
    sec: Section, k: str, default: str | None, schemes: tuple[str, ...]
) -> str | None:
    """A full node's URL in one of `schemes`, without credentials; "" means none when the key
    has no default."""
    v = sec.get(k, str, default)
    if v is None or (default is None and v == ""):
        return None
    parts = urlsplit(v)
    if "@" in parts.netloc:
        raise sec.err(k, "must not carry credentials")
    if parts.scheme not in schemes or not parts.hostname:
        want = " or ".join(f"{x}://HOST[:PORT][/PATH]" for x in schemes)
        raise sec.err(k, f"must be {want}; got {v!r}")
    try:
        _ = parts.port
    except ValueError:
        raise sec.err(k, f"has an invalid port in {v!r}") from None
    return v


def read_chain(c: Section, data_dir: Path) -> ChainConfig:
    C = ChainConfig
    cfg = ChainConfig(
        enabled=c.get("enabled", bool, C.enabled),
        rpc_url=cast(str, read_node_url(c, "rpc_url", C.rpc_url, ("http", "https"))),
        ws_url=read_node_url(c, "ws_url", C.ws_url, ("ws", "wss")),
        timeout_s=c.duration("timeout", C.timeout_s),
        poll_interval_s=c.duration("poll_interval", C.poll_interval_s),
        confirmations=c.int_range("confirmations", C.confirmations, 1, 1000),
        stuck_after_s=c.duration("stuck_after", C.stuck_after_s),
        fee_bump_percent=c.int_range("fee_bump_percent", C.fee_bump_percent, 10, 200),
        store=c.path("store", str(data_dir / STORE_NAME)),
    )
    c.done()
    return cfg
