"""The doctor's checks of this machine and of the config itself: the config loads, the key and
secret files are private, the data directory and its disk, allowlisted devices, the clock,
Bluetooth adapters and serial ports. Each returns one Check; none touches the network."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from agent.errors import AgentError, ConfigError
from agent.secrets import check_secret_mode

if TYPE_CHECKING:
    from agent.config import AgentConfig

Status = Literal["ok", "warn", "fail", "skip"]

# A clock before this is certainly wrong (a Raspberry Pi without RTC boots at its last saved
# time or at 1970): observations would carry a false timestamp.
CLOCK_FLOOR = 1_735_689_600  # 2025-01-01T00:00:00Z
# Room the journal's disk must keep beyond journal.max_bytes: sqlite's WAL and checkpoints.
DISK_RESERVE = 16 * 2**20


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report: what was checked, the verdict, what was found, and
    (for a warning or failure) the command or setting that fixes it."""

    name: str
    status: Status
    detail: str
    fix: str | None = None

    def line(self) -> str:
        label = {"ok": "ok", "warn": "WARN", "fail": "FAIL", "skip": "skip"}[self.status]
        text = f"{label:<5} {self.name:<10} {self.detail}"
        return f"{text} -- fix: {self.fix}" if self.fix else text


def size_text(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _owner(path: Path) -> str:
    uid = path.stat().st_uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def check_config(path: Path) -> tuple[Check, AgentConfig | None]:
    from agent.config import load_config

    try:
        cfg = load_config(path)
    except ConfigError as exc:
        if not path.exists():
            return Check(
                "config",
                "fail",
                f"{path} not found",
                f"sudo edgence-agent init --dir {path.parent}, or name the config with "
                "--config FILE or EDGENCE_CONFIG=FILE",
            ), None
        return Check("config", "fail", exc.description, f"edit {path} ([{exc.key}])"), None
    return Check("config", "ok", f"{path} loads"), cfg


def check_key(cfg: AgentConfig) -> Check:
    from agent.wiring import load_gateway_key

    key = cfg.gateway.key_file
    try:
        check_secret_mode(key)
        if cfg.gateway.passphrase_file is not None:
            check_secret_mode(cfg.gateway.passphrase_file)
    except AgentError as exc:
        fix = exc.fix or (
            f"create it with `edgence-agent init --dir {key.parent}` or set gateway.key_file"
        )
        return Check("key", "fail", exc.description, fix)
    encrypted = key.read_bytes().lstrip().startswith(b"{")
    has_pass = cfg.gateway.passphrase_file is not None or "EDGENCE_KEY_PASSPHRASE" in os.environ
    where = f"{key} mode 0600 owner {_owner(key)}"
    if encrypted and not has_pass:
        return Check("key", "ok", f"{where}, encrypted (passphrase not available to check)")
    try:
        address = load_gateway_key(cfg).checksum_address
    except AgentError as exc:
        return Check(
            "key",
            "fail",
            f"{key}: {exc.description}",
            exc.fix or "check the key file and its passphrase",
        )
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
            return Check("secrets", "fail", f"[{key}] {exc.description}", exc.fix or f"set {key}")
    return Check("secrets", "ok", f"{len(files)} secret file(s), each mode 0600")


def allowlisted(cfg: AgentConfig) -> dict[str, tuple[str, ...]]:
    """Device ids the agent accepts without authentication, by the config key naming them."""
    out: dict[str, tuple[str, ...]] = {}
    if cfg.sources.mqtt.allowed_devices:
        out["sources.mqtt.allowed_devices"] = cfg.sources.mqtt.allowed_devices
    if cfg.sources.coap.enabled and cfg.sources.coap.allowed_devices:
        out["sources.coap.allowed_devices"] = cfg.sources.coap.allowed_devices
    serial = tuple(sorted(cfg.sources.serial.allowed_devices))
    if serial:
        out["sources.serial.ports (device, gps_device, allowed_devices)"] = serial
    return out


def check_allowlist(cfg: AgentConfig) -> Check:
    found = allowlisted(cfg)
    if not found:
        return Check("allowlist", "ok", "no device is accepted without authentication")
    where = "; ".join(f"{', '.join(ids)} in {key}" for key, ids in found.items())
    return Check(
        "allowlist",
        "warn",
        f"accepted WITHOUT authentication (anyone can publish as them): {where}",
        "enroll each device (`edgence-agent pair ID`) and remove it from the list",
    )


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
        f"{size_text(free)} free on the disk of {where}; the journal uses {size_text(used)} "
        f"and may grow to journal.max_bytes = {size_text(cfg.journal.max_bytes)}"
    )
    if free < need:
        cap = max(0, used + free - DISK_RESERVE)
        return Check(
            "disk",
            "fail",
            detail,
            f"free space on that disk, or set journal.max_bytes below {size_text(cap)} "
            "(when the disk fills the agent holds readings, it does not lose them)",
        )
    return Check("disk", "ok", detail)


def check_bluetooth(cfg: AgentConfig, sysfs: Path) -> Check:
    adapters = sorted(p.name for p in (sysfs / "class" / "bluetooth").glob("hci*"))
    blocked = []
    for rf in (sysfs / "class" / "rfkill").glob("rfkill*"):
        try:
            if (rf / "type").read_text().strip() == "bluetooth" and (
                (rf / "soft").read_text().strip() == "1" or (rf / "hard").read_text().strip() == "1"
            ):
                blocked.append(rf.name)
        except OSError:
            continue
    if not cfg.sources.ble.enabled:
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


def check_serial(cfg: AgentConfig) -> Check:
    ports = sorted({str(p.path) for p in cfg.sources.serial.ports})
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
    from agent.journal import read_newest_created_at

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


def check_listeners(cfg: AgentConfig) -> Check:
    """Every socket the config opens for listening, by address, so that none is a surprise."""
    from agent.config.checks import listening_sockets

    socks = listening_sockets(cfg)
    if not socks:
        return Check("listen", "ok", "no listening socket (every link connects out)")
    parts = []
    for key, proto, host, port in socks:
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        scope = (
            "loopback"
            if host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.")
            else "EVERY interface"
            if host in ("0.0.0.0", "::", "")
            else "network"
        )
        parts.append(f"{proto} {where} ({key.rpartition('.')[0]}, {scope})")
    return Check("listen", "ok", "; ".join(parts))


def check_service(cfg: AgentConfig) -> Check:
    """A masternode is probed over the upstream broker (its oracle and its forwarding): both
    must be enabled and answer there, or the elected committee fails it every epoch."""
    if cfg.masternode.registry is None:
        return Check("service", "skip", "not a masternode ([masternode] registry unset)")
    upstream = (cfg.bridge.broker.host, cfg.bridge.broker.port)
    missing = []
    for key, svc in (("oracle", cfg.oracle), ("forward", cfg.forward)):
        if not svc.enabled or not svc.mqtt_enabled or svc.mqtt is None:
            missing.append(f"{key}.enabled = true with {key}.mqtt")
        elif (svc.mqtt.host, svc.mqtt.port) != upstream:
            missing.append(f"{key}.mqtt.url = the upstream broker ({cfg.bridge.broker.url})")
    if missing:
        return Check(
            "service",
            "warn",
            "proof-of-service probes come over the upstream broker and would go unanswered",
            "set " + "; ".join(missing),
        )
    return Check("service", "ok", f"oracle and forwarding answer on {cfg.bridge.broker.url}")
