"""`edgence-agent doctor`: checks a gateway's setup and says how to fix each failure.

Each check returns one Check (ok / warn / fail / skip, what was found, and for a failure the
command or setting that fixes it). Only `fail` makes the exit code non-zero. Checks do real I/O
(MQTT CONNECT, a JSON-RPC POST, statvfs, sysfs); parameters let tests point them elsewhere.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import ssl
import stat
import subprocess
import threading
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.config import AgentConfig, BrokerEndpoint, load_config
from agent.errors import AgentError, ConfigError
from agent.journal import read_newest_created_at
from agent.secrets import check_secret_mode

Status = Literal["ok", "warn", "fail", "skip"]

# A clock before this is certainly wrong (a Raspberry Pi without RTC boots at its last saved
# time or at 1970): observations would carry a false timestamp.
CLOCK_FLOOR = 1_735_689_600  # 2025-01-01T00:00:00Z
# Room the journal's disk must keep beyond journal.max_bytes: sqlite's WAL and checkpoints.
DISK_RESERVE = 16 * 2**20


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str | None = None

    def line(self) -> str:
        label = {"ok": "ok", "warn": "WARN", "fail": "FAIL", "skip": "skip"}[self.status]
        text = f"{label:<5} {self.name:<10} {self.detail}"
        return f"{text} -- fix: {self.fix}" if self.fix else text


@dataclass
class DoctorOptions:
    config: Path
    chain_url: str | None = None
    sysfs: Path = Path("/sys")
    timeout: float = 3.0
    clock: Callable[[], float] = time.time
    check_agent: bool = True


def _size_text(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _raw_toml(path: Path) -> dict[str, Any]:
    """The config as plain TOML, for sections other components add ([chain], sources.ble,
    sources.serial): the doctor tolerates their absence on a branch that lacks them."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}


def _owner(path: Path) -> str:
    uid = path.stat().st_uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


# -- checks ------------------------------------------------------------------------------


def check_config(path: Path) -> tuple[Check, AgentConfig | None]:
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        if not path.exists():
            return Check(
                "config",
                "fail",
                f"{path} not found",
                f"sudo edgence-agent init --dir {path.parent}",
            ), None
        return Check("config", "fail", str(exc), f"edit {path} ([{exc.key}])"), None
    return Check("config", "ok", f"{path} loads"), cfg


def check_key(cfg: AgentConfig) -> Check:
    from agent.wiring import load_gateway_key

    key = cfg.gateway.key_file
    try:
        check_secret_mode(key)
        if cfg.gateway.passphrase_file is not None:
            check_secret_mode(cfg.gateway.passphrase_file)
    except AgentError as exc:
        text = str(exc)
        fix = text.split("fix it with: ", 1)[1] if "fix it with: " in text else None
        if fix is None:
            fix = f"create it with `edgence-agent init --dir {key.parent}` or set gateway.key_file"
        return Check("key", "fail", text.split("; fix it with")[0], fix)
    encrypted = key.read_bytes().lstrip().startswith(b"{")
    has_pass = cfg.gateway.passphrase_file is not None or "EDGENCE_KEY_PASSPHRASE" in os.environ
    where = f"{key} mode 0600 owner {_owner(key)}"
    if encrypted and not has_pass:
        return Check("key", "ok", f"{where}, encrypted (passphrase not available to check)")
    try:
        address = load_gateway_key(cfg).checksum_address
    except AgentError as exc:
        return Check("key", "fail", f"{key}: {exc}", "check the key file and its passphrase")
    return Check("key", "ok", f"{where}, address {address}")


def _secret_files(cfg: AgentConfig) -> Iterator[tuple[str, Path]]:
    enr = cfg.enrollment
    if enr is not None and enr.enabled and (enr.registry_dir / "keys.json").exists():
        yield "enrollment.registry_dir", enr.registry_dir / "keys.json"
    for name, ep in (("sources.mqtt", cfg.sources.mqtt.broker), ("bridge", cfg.bridge.broker)):
        if ep.password_file is not None:
            yield f"{name}.password_file", ep.password_file
        if ep.key_file is not None:
            yield f"{name}.key_file", ep.key_file


def check_secrets(cfg: AgentConfig) -> Check:
    files = list(_secret_files(cfg))
    if not files:
        return Check("secrets", "skip", "no device keys, broker passwords or TLS keys configured")
    for key, path in files:
        try:
            check_secret_mode(path)
        except AgentError as exc:
            text = str(exc)
            fix = text.split("fix it with: ", 1)[1] if "fix it with: " in text else f"set {key}"
            return Check("secrets", "fail", f"[{key}] {text.split('; fix it with')[0]}", fix)
    return Check("secrets", "ok", f"{len(files)} secret file(s), each mode 0600")


def check_data_dir(cfg: AgentConfig) -> Check:
    d = cfg.gateway.data_dir
    if not d.is_dir():
        return Check(
            "data",
            "fail",
            f"data directory {d} does not exist",
            f"mkdir -m 700 {d} && chown <agent user>: {d} (scripts/install does this)",
        )
    if not os.access(d, os.W_OK | os.X_OK):
        return Check(
            "data", "fail", f"{d} is not writable by uid {os.geteuid()}", f"chown <agent user>: {d}"
        )
    stray = _foreign_owned(d)
    if stray is not None:
        # Typically `sudo edgence-agent pair` or a by-hand run as root: the service user can
        # then no longer write (or even read) the journal or the device registry.
        return Check(
            "data",
            "fail",
            f"{stray} is owned by {_owner(stray)}, not by {_owner(d)} who owns {d}",
            f"chown -R {_owner(d)}: {d}",
        )
    mode = stat.S_IMODE(d.stat().st_mode)
    if mode & 0o077:
        return Check(
            "data",
            "warn",
            f"{d} has mode {mode:04o}: others can read the journal",
            f"chmod 700 {d}",
        )
    return Check("data", "ok", f"{d} mode {mode:04o} owner {_owner(d)}")


def _foreign_owned(d: Path, depth: int = 2) -> Path | None:
    """A file or directory under `d` (at most `depth` levels down) owned by another user."""
    uid = d.stat().st_uid
    level = [d]
    for _ in range(depth):
        nxt = []
        for parent in level:
            try:
                children = sorted(parent.iterdir())
            except OSError:
                continue
            for child in children:
                if child.lstat().st_uid != uid:
                    return child
                if child.is_dir() and not child.is_symlink():
                    nxt.append(child)
        level = nxt
    return None


def _existing_parent(p: Path) -> Path:
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_journal_disk(cfg: AgentConfig) -> Check:
    jpath = cfg.journal.path
    where = _existing_parent(jpath.parent)
    st = os.statvfs(where)
    free = st.f_bavail * st.f_frsize
    used = sum(
        p.stat().st_size for p in (jpath, Path(f"{jpath}-wal"), Path(f"{jpath}-shm")) if p.exists()
    )
    room = max(0, cfg.journal.max_bytes - used)
    need = room + DISK_RESERVE
    detail = (
        f"{_size_text(free)} free on the disk of {where}; the journal uses {_size_text(used)} "
        f"and may grow to journal.max_bytes = {_size_text(cfg.journal.max_bytes)}"
    )
    if free < need:
        cap = max(0, used + free - DISK_RESERVE)
        return Check(
            "disk",
            "fail",
            detail,
            f"free space on that disk, or set journal.max_bytes below {_size_text(cap)} "
            "(when the disk fills the agent holds readings, it does not lose them)",
        )
    return Check("disk", "ok", detail)


def probe_mqtt(ep: BrokerEndpoint, timeout: float) -> tuple[bool, str]:
    """A real MQTT CONNECT with the agent's credentials and TLS settings, under a throwaway
    client id (never the agent's: that would take its session). (ok, what happened)."""
    v5 = ep.protocol == 5
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"edgence-doctor-{secrets.token_hex(4)}",
        clean_session=None if v5 else True,
        protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
    )
    client.connect_timeout = timeout
    if ep.username is not None:
        password = None
        if ep.password_file is not None:
            from agent.mqtt import read_secret_file

            password = read_secret_file(ep.password_file)
        client.username_pw_set(ep.username, password)
    if ep.tls:
        client.tls_set(
            ca_certs=str(ep.ca_file) if ep.ca_file else None,
            certfile=str(ep.cert_file) if ep.cert_file else None,
            keyfile=str(ep.key_file) if ep.key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
    outcome: list[str] = []
    done = threading.Event()

    def on_connect(c: paho.Client, ud: Any, flags: Any, rc: Any, props: Any) -> None:
        outcome.append("ok" if not rc.is_failure else f"refused: {rc}")
        done.set()

    def on_disconnect(c: paho.Client, ud: Any, flags: Any, rc: Any, props: Any) -> None:
        if not done.is_set():
            outcome.append(f"closed before CONNACK ({rc})")
            done.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    try:
        client.connect(ep.host, ep.port, keepalive=max(5, int(timeout) + 5))
    except (OSError, ssl.SSLError, ValueError) as exc:
        return False, f"cannot connect: {exc}"
    client.loop_start()
    try:
        if not done.wait(timeout):
            return False, f"no CONNACK within {timeout:.0f}s"
    finally:
        client.disconnect()
        client.loop_stop()
    return outcome[0] == "ok", outcome[0]


def check_broker(name: str, key: str, ep: BrokerEndpoint, enabled: bool, timeout: float) -> Check:
    if not enabled:
        return Check(name, "skip", f"{key}.enabled = false")
    try:
        ok, what = probe_mqtt(ep, timeout)
    except AgentError as exc:  # a password file with loose permissions
        detail = str(exc).split("; fix it with")[0]
        return Check(name, "fail", detail, f"chmod 600 {ep.password_file}")
    if ok:
        return Check(name, "ok", f"{ep.url} accepts the agent's MQTT login")
    if "refused" in what and ("uthori" in what or "password" in what.lower()):
        fix = f"check {key}.username / {key}.password_file against the broker's password file"
    elif what.startswith("cannot connect") and ("SSL" in what or "certificate" in what):
        fix = f"check {key}.ca_file and the broker's certificate (its name must match {ep.host})"
    elif name == "local":
        fix = f"start the local broker (sudo systemctl start mosquitto) or fix {key}.url"
    else:
        fix = f"check the network and {key}.url; the agent keeps readings journaled meanwhile"
    return Check(name, "fail", f"{ep.url}: {what}", fix)


def _chain_url(raw: dict[str, Any], override: str | None) -> str | None:
    if override:
        return override
    chain = raw.get("chain")
    if not isinstance(chain, dict) or chain.get("enabled") is False:
        return None
    for k in ("url", "rpc_url", "http_url", "http"):
        v = chain.get(k)
        if isinstance(v, str) and v.startswith(("http://", "https://")):
            return v
    return None


def json_rpc(url: str, method: str, timeout: float) -> Any:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": []}).encode()
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        doc = json.loads(resp.read(1 << 20))
    if not isinstance(doc, dict) or "error" in doc or "result" not in doc:
        raise ValueError(f"{method} answered {str(doc)[:200]}")
    return doc["result"]


def check_chain(raw: dict[str, Any], cfg: AgentConfig | None, opts: DoctorOptions) -> Check:
    url = opts.chain_url or (
        cfg.chain.rpc_url if cfg is not None and cfg.chain.enabled else _chain_url(raw, None)
    )
    if url is None:
        return Check("chain", "skip", "no full node configured ([chain] url)")
    # The id the node must have: [chain] chain_id if the chain client's section names one,
    # else gateway.chain_id (the EIP-712 domain every observation is signed under). Read from
    # the file itself too, so that it is checked even when the config does not load.
    chain, gw = raw.get("chain"), raw.get("gateway")
    expected: Any = chain.get("chain_id") if isinstance(chain, dict) else None
    key = "chain.chain_id"
    if not isinstance(expected, int):
        key = "gateway.chain_id"
        expected = gw.get("chain_id") if isinstance(gw, dict) else None
        if not isinstance(expected, int):
            expected = cfg.gateway.chain_id if cfg is not None else 31337
    try:
        chain_id = int(str(json_rpc(url, "eth_chainId", opts.timeout)), 16)
        height = int(str(json_rpc(url, "eth_blockNumber", opts.timeout)), 16)
    except (OSError, urllib.error.URLError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return Check(
            "chain",
            "fail",
            f"full node at {url} does not answer JSON-RPC: {reason}",
            "start the full node (or fix its url in [chain]); it must serve HTTP JSON-RPC",
        )
    if chain_id != expected:
        return Check(
            "chain",
            "fail",
            f"the node at {url} is chain {chain_id} but {key} = {expected}",
            f"set {key} = {chain_id} if that is the right chain (observations are signed for "
            f"{key}), or point [chain] at a node of chain {expected}",
        )
    return Check("chain", "ok", f"{url} chain id {chain_id}, block {height}")


def _enabled_table(raw: dict[str, Any], *path: str) -> dict[str, Any] | None:
    node: Any = raw
    for p in path:
        node = node.get(p) if isinstance(node, dict) else None
    if not isinstance(node, dict) or node.get("enabled") is False:
        return None
    return node


def check_bluetooth(raw: dict[str, Any], sysfs: Path) -> Check:
    adapters = sorted(p.name for p in (sysfs / "class" / "bluetooth").glob("hci*"))
    wanted = _enabled_table(raw, "sources", "ble") is not None
    blocked = []
    for rf in (sysfs / "class" / "rfkill").glob("rfkill*"):
        try:
            if (rf / "type").read_text().strip() == "bluetooth" and (
                (rf / "soft").read_text().strip() == "1" or (rf / "hard").read_text().strip() == "1"
            ):
                blocked.append(rf.name)
        except OSError:
            continue
    if not wanted:
        return Check("bluetooth", "skip", f"no BLE source configured ({len(adapters)} adapter(s))")
    if not adapters:
        return Check(
            "bluetooth",
            "fail",
            f"no Bluetooth adapter in {sysfs}/class/bluetooth",
            "plug in or enable an adapter (Raspberry Pi: no dtoverlay=disable-bt), "
            "or set sources.ble.enabled = false",
        )
    if blocked:
        return Check(
            "bluetooth",
            "fail",
            f"adapter(s) {', '.join(adapters)} blocked by rfkill ({', '.join(blocked)})",
            "rfkill unblock bluetooth",
        )
    return Check("bluetooth", "ok", f"adapter(s) {', '.join(adapters)}")


def _device_paths(node: Any) -> Iterator[str]:
    if isinstance(node, str) and node.startswith("/dev/"):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from _device_paths(v)
    elif isinstance(node, list):
        for v in node:
            yield from _device_paths(v)


def check_serial(raw: dict[str, Any]) -> Check:
    table = _enabled_table(raw, "sources", "serial")
    ports = sorted(set(_device_paths(table))) if table is not None else []
    if not ports:
        return Check("serial", "skip", "no serial ports configured")
    for port in ports:
        p = Path(port)
        if not p.exists():
            return Check(
                "serial",
                "fail",
                f"{port} does not exist",
                "check the cable and the path (ls -l /dev/serial/by-id/ gives stable names)",
            )
        if not stat.S_ISCHR(p.stat().st_mode):
            return Check("serial", "fail", f"{port} is not a character device", "fix its path")
        if not os.access(p, os.R_OK | os.W_OK):
            return Check(
                "serial",
                "fail",
                f"{port} is not readable and writable by uid {os.geteuid()}",
                f"add the agent's user to the port's group: sudo usermod -aG {_group(p)} edgence",
            )
    return Check("serial", "ok", f"{', '.join(ports)} present and accessible")


def _group(p: Path) -> str:
    import grp

    gid = p.stat().st_gid
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _ntp_synchronized() -> bool | None:
    exe = shutil.which("timedatectl")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "show", "-p", "NTPSynchronized", "--value"],
            capture_output=True,
            text=True,
            timeout=3,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    value = out.stdout.strip()
    return {"yes": True, "no": False}.get(value) if out.returncode == 0 else None


def check_clock(cfg: AgentConfig | None, clock: Callable[[], float]) -> Check:
    now = clock()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    if now < CLOCK_FLOOR:
        return Check(
            "clock",
            "fail",
            f"the clock says {stamp}, before this release existed",
            "enable time synchronisation (sudo timedatectl set-ntp true) and wait for it; "
            "observations carry this clock's timestamps",
        )
    newest = read_newest_created_at(cfg.journal.path) if cfg is not None else None
    if newest is not None and newest > now + 300:
        return Check(
            "clock",
            "fail",
            f"the clock says {stamp} but the journal holds an entry from "
            f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(newest))}: it went backwards",
            "fix the time (sudo timedatectl set-ntp true); check the RTC or fake-hwclock",
        )
    synced = _ntp_synchronized()
    if synced is False:
        return Check(
            "clock",
            "warn",
            f"{stamp}, not synchronised by NTP",
            "sudo timedatectl set-ntp true",
        )
    return Check("clock", "ok", f"{stamp}{', NTP synchronised' if synced else ''}")


def check_agent(cfg: AgentConfig, timeout: float) -> Check:
    if not cfg.metrics.enabled:
        return Check("agent", "skip", "metrics.enabled = false: cannot ask the running agent")
    url = f"{cfg.metrics.url}/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            health = json.loads(resp.read(1 << 20))
    except (OSError, urllib.error.URLError, ValueError) as exc:
        return Check(
            "agent",
            "warn",
            f"not answering at {url} ({getattr(exc, 'reason', exc)})",
            "sudo systemctl status edgence-agent; journalctl -u edgence-agent",
        )
    up = health.get("upstream", {})
    link = "connected" if up.get("connected") else "DOWN" if up.get("enabled") else "disabled"
    return Check(
        "agent",
        "ok",
        f"running, {'ready' if health.get('ready') else 'starting'}, upstream {link}, "
        f"backlog {health.get('journal', {}).get('backlog')}",
    )


def run_checks(opts: DoctorOptions) -> list[Check]:
    raw = _raw_toml(opts.config)
    first, cfg = check_config(opts.config)
    out = [first]
    if cfg is not None:
        out += [
            check_key(cfg),
            check_secrets(cfg),
            check_data_dir(cfg),
            check_journal_disk(cfg),
            check_broker(
                "local",
                "sources.mqtt",
                cfg.sources.mqtt.broker,
                cfg.sources.mqtt.enabled,
                opts.timeout,
            ),
            check_broker("upstream", "bridge", cfg.bridge.broker, cfg.bridge.enabled, opts.timeout),
        ]
    out += [
        check_chain(raw, cfg, opts),
        check_bluetooth(raw, opts.sysfs),
        check_serial(raw),
        check_clock(cfg, opts.clock),
    ]
    if cfg is not None and opts.check_agent:
        out.append(check_agent(cfg, opts.timeout))
    return out


def report(checks: list[Check], as_json: bool = False) -> str:
    if as_json:
        return json.dumps([asdict(c) for c in checks], indent=1)
    return "\n".join(c.line() for c in checks)


def exit_code(checks: list[Check]) -> int:
    return 1 if any(c.status == "fail" for c in checks) else 0


__all__ = ["Check", "DoctorOptions", "exit_code", "probe_mqtt", "report", "run_checks"]
