"""`edgence-agent status`: the running agent's health, fetched from its loopback endpoint and
shown as text (redrawn in place on a terminal) or printed as JSON for scripts."""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any, TextIO

from agent.cli.options import find_config
from agent.errors import AgentError, ConfigError

if TYPE_CHECKING:
    from agent.config import AgentConfig


class HealthUnavailable(AgentError):
    """The health document could not be had from the agent of this config. `kind`:
    "unreachable" (nothing answers), "foreign" (another program holds the port) or
    "other_gateway" (another edgence-agent, of another gateway, holds it)."""

    def __init__(self, kind: str, message: str, *, fix: str) -> None:
        super().__init__(message, fix=fix)
        self.kind = kind


def fetch_health(base_url: str, timeout: float = 3.0, gateway: str | None = None) -> dict[str, Any]:
    """The health document at `base_url`; with `gateway` (an address), only that gateway's:
    a document of another program or of another gateway is refused, never shown as ours."""
    url = base_url.rstrip("/") + "/health"
    port = base_url.rstrip("/").rpartition(":")[2]
    find = f"see who holds it: ss -ltnp 'sport = :{port}'; or give metrics.listen a free port"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            raw = resp.read(1 << 20)
    except urllib.error.HTTPError as exc:
        raise HealthUnavailable(
            "foreign", f"{url} answered HTTP {exc.code}: another program holds the port", fix=find
        ) from None
    except (OSError, urllib.error.URLError, ValueError) as exc:
        raise HealthUnavailable(
            "unreachable",
            f"the agent is not answering at {url} ({getattr(exc, 'reason', exc)})",
            fix="is it running (systemctl status edgence-agent) with metrics.enabled = true?",
        ) from None
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        doc = None
    if not isinstance(doc, dict) or doc.get("v") != 1 or not isinstance(doc.get("gateway"), str):
        raise HealthUnavailable(
            "foreign",
            f"{url} is not an edgence-agent health document: another program holds the port",
            fix=find,
        )
    if gateway is not None and doc["gateway"].lower() != gateway.lower():
        raise HealthUnavailable(
            "other_gateway",
            f"{url} is the health of gateway {doc['gateway']}, not of this config's {gateway}: "
            "another agent holds metrics.listen",
            fix=find,
        )
    return doc


def config_gateway(cfg: AgentConfig) -> str | None:
    """This config's gateway address, when it can be known without the key's passphrase."""
    from agent.wiring import load_gateway_key

    key = cfg.gateway.key_file
    try:
        text = key.read_bytes().lstrip()
    except OSError:
        return None
    if text.startswith(b"{"):  # an encrypted keystore names its address in the clear
        try:
            address = json.loads(text).get("address")
        except (ValueError, AttributeError):
            return None
        if isinstance(address, str) and address:
            return address if address.startswith("0x") else "0x" + address
        return None
    try:
        return load_gateway_key(cfg).address
    except AgentError:
        return None


def _duration(s: float) -> str:
    s = int(s)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{d}d{h:02d}h{m:02d}m" if d else f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


class _Paint:
    def __init__(self, color: bool) -> None:
        self.color = color

    def __call__(self, text: str, good: bool | None) -> str:
        if not self.color or good is None:
            return text
        return f"\x1b[{32 if good else 31}m{text}\x1b[0m"


def render(h: dict[str, Any], color: bool = False) -> str:
    """The health document as a few aligned lines (one topic per line)."""
    paint = _Paint(color)
    lines = [
        f"{h['agent']}  gateway {h['gateway']}  up {_duration(h['uptime_s'])}  "
        + paint("ready" if h["ready"] else "starting", bool(h["ready"]))
    ]
    for name, s in h["sources"].items():
        state = ""
        if "connected" in s:
            state = paint("connected" if s["connected"] else "DOWN", bool(s["connected"])) + "  "
        extra = f"  frames {s['frames']}" if "frames" in s else ""
        lines.append(
            f"{'source':<10} {name:<6} {state}{s.get('url', '')}  devices {s['devices']}{extra}"
        )
    if not h["sources"]:
        lines.append(f"{'source':<10} none enabled")
    d = h.get("devices", {})
    if d:
        enrolled = d.get("enrolled")
        lines.append(
            f"{'devices':<10} heard {d['heard']}"
            + (f"  enrolled {enrolled}" if enrolled is not None else "")
        )
    r = h["readings"]
    lines.append(f"{'readings':<10} signed {r['signed']}  {r['per_s']:.1f}/s  queued {r['queued']}")
    rej = h["rejected"]
    lines.append(
        f"{'rejected':<10} " + ("  ".join(f"{k} {v}" for k, v in rej.items()) if rej else "none")
    )
    j = h["journal"]
    lines.append(
        f"{'journal':<10} {j['entries']} entries  {_size(j['bytes'])}  backlog "
        + paint(str(j["backlog"]), j["backlog"] < 1000)
        + (f"  write errors {j['errors']}" if j["errors"] else "")
    )
    u = h["upstream"]
    if u["enabled"]:
        lines.append(
            f"{'upstream':<10} "
            + paint("connected" if u["connected"] else "DOWN", bool(u["connected"]))
            + f"  {u['url']}  delivered {u['delivered']}  in flight {u['inflight']}"
            + (f"  refused {u['refused']}" if u["refused"] else "")
        )
    else:
        lines.append(f"{'upstream':<10} disabled")
    height = h["chain"]["height"]
    lines.append(f"{'chain':<10} height {height if height is not None else 'unknown'}")
    role = h["election"]["role"]
    lines.append(f"{'election':<10} role {role if role is not None else 'unknown'}")
    lines += _masternode_lines(h.get("components", {}), paint)
    if h.get("restarts"):
        lines.append(f"{'restarts':<10} " + "  ".join(f"{k} {v}" for k, v in h["restarts"].items()))
    return "\n".join(lines)


def _masternode_lines(components: dict[str, Any], paint: _Paint) -> list[str]:
    """Service standing (from the heartbeat task), the committee's probes and reward check-ins,
    when they run."""
    out: list[str] = []
    hb = components.get("heartbeat")
    if isinstance(hb, dict):
        service = hb.get("in_service")
        text = (
            "in service"
            if service is True
            else "OUT OF SERVICE"
            if service is False
            else "no standing contract"
        )
        reg = hb.get("registered")
        registered = (
            "registered"
            if reg is True
            else "NOT REGISTERED"
            if reg is False
            else "registration unknown"
        )
        out.append(
            f"{'masternode':<10} "
            + paint(registered, reg if isinstance(reg, bool) else None)
            + "  service "
            + paint(text, service if isinstance(service, bool) else None)
        )
    sp = components.get("service-probe")
    if isinstance(sp, dict):
        member, judged = sp.get("committee_epoch"), sp.get("verdicts_epoch")
        counts = f"{sp.get('probed')} probed, {sp.get('failed')} failed"
        out.append(
            f"{'probes':<10} epoch {sp.get('epoch')}  "
            + ("never on the committee" if member is None else f"on the committee of {member}")
            + ("" if judged is None else f"  verdicts for {judged}: {counts}")
        )
    rw = components.get("rewards")
    if isinstance(rw, dict):
        out.append(
            f"{'rewards':<10} epoch {rw.get('epoch')}  "
            + ("checked in" if rw.get("checked_in") else "not checked in")
            + f"  claimable {rw.get('claimable_wei')} wei"
        )
    return out


def watch(
    base_url: str, interval: float, out: TextIO = sys.stdout, gateway: str | None = None
) -> None:
    """Redraw the status in place every `interval` seconds until Ctrl-C (terminal only)."""
    while True:
        try:
            text = render(fetch_health(base_url, gateway=gateway), color=True)
        except AgentError as exc:
            text = f"\x1b[31m{exc}\x1b[0m"
        stamp = time.strftime("%H:%M:%S")
        out.write(f"\x1b[H\x1b[2J{text}\n\n{stamp}  refreshing every {interval:g}s, Ctrl-C quits\n")
        out.flush()
        time.sleep(interval)


def status_url(args: argparse.Namespace) -> tuple[str, str | None]:
    """--url, else metrics.listen of the config (--config must load; $EDGENCE_CONFIG or a
    default file may be unreadable, as /etc/edgence-agent is for a normal user), else the
    default address; with the config's gateway address when it is known (only that gateway's
    document is shown)."""
    from agent.config import MetricsConfig, load_config

    if args.url:
        return str(args.url), None
    try:
        path, _ = find_config(args)
        cfg = load_config(path)
    except ConfigError:
        if args.config is not None:
            raise
        return MetricsConfig().url, None
    if not cfg.metrics.enabled:
        raise AgentError(f"{cfg.path}: [metrics.enabled] is false; status reads that endpoint")
    return cfg.metrics.url, config_gateway(cfg)


def cmd_status(args: argparse.Namespace) -> int:
    url, gateway = status_url(args)
    if args.json:
        print(json.dumps(fetch_health(url, gateway=gateway), indent=1))
        return 0
    if sys.stdout.isatty() and not args.once:
        try:
            watch(url, args.interval, gateway=gateway)
        except KeyboardInterrupt:
            return 0
        return 0
    print(render(fetch_health(url, gateway=gateway)))
    return 0


def add_parsers(sub: Any, config: argparse.ArgumentParser) -> None:
    s = sub.add_parser(
        "status",
        parents=[config],
        help="the running agent's health (live on a terminal)",
        epilog="Without --url: metrics.listen of the config; when no config is readable (and "
        "none was named with --config), http://127.0.0.1:9464.",
    )
    s.add_argument("--url", help="the agent's metrics base URL (default: from the config)")
    s.add_argument("--json", action="store_true", help="print the health document as JSON")
    s.add_argument("--once", action="store_true", help="print once even on a terminal")
    s.add_argument("--interval", type=float, default=2.0, help="refresh period (default 2 s)")
    s.set_defaults(fn=cmd_status)
