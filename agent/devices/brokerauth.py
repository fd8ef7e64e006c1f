"""Per-device broker credentials: a Mosquitto password file and ACL that let each device publish
only on its own topic, so one device cannot speak as another even before the HMAC check; the
same ACL binds dApps' forwarding and oracle requests and answers to their own username, and
(with [homeassistant] on) lets only the agent publish Home Assistant discovery and states.

The password file is maintained with Mosquitto's own `mosquitto_passwd` (its hash format is
Mosquitto's business; the password goes on its stdin, never its command line). The ACL is
generated from the registry in full on every change, then the broker is told to reload both
with SIGHUP.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterable
from pathlib import Path

from agent.atomicfile import atomic_write
from agent.config import BrokerAuthConfig, HomeAssistantConfig
from agent.config.downlink import downlink_acl_lines
from agent.devices.registry import DeviceRecord, DeviceStatus
from agent.errors import AgentError
from agent.model import Transport

PASSWD_CANDIDATES = ("mosquitto_passwd", "/usr/bin/mosquitto_passwd", "/usr/sbin/mosquitto_passwd")


class BrokerAuthError(AgentError):
    """The broker's password file or ACL could not be changed."""


def find_mosquitto_passwd() -> str:
    for c in PASSWD_CANDIDATES:
        path = shutil.which(c) or (c if Path(c).is_file() else None)
        if path:
            return path
    raise BrokerAuthError("mosquitto_passwd is not installed", fix="sudo apt-get install mosquitto")


def acl_text(
    cfg: BrokerAuthConfig,
    devices: Iterable[DeviceRecord],
    services: Iterable[str] = ("edgence/+/rpc", "edgence/+/oracle", "edgence/+/cmd"),
    homeassistant: HomeAssistantConfig | None = None,
) -> str:
    """The ACL: each device publishes on its own topic only; each login asks the agent's
    request/response `services` (forwarding, oracle) only under its own username and reads
    only the answers under it; only the agent answers. With `homeassistant` enabled, the
    agent's login (or [homeassistant.mqtt]'s) writes the discovery, state and availability
    topics and Home Assistant's login reads them; no other login may publish there."""
    services = tuple(services)
    lines = [
        "# Written by edgence-agent (pair, devices revoke/rotate-key): edits are overwritten.",
        "# Each device may publish on its own topic only.",
    ]
    if services:
        lines += ["", "# dApps: requests under their own username only, answers for it only."]
        for base in services:
            lines += [f"pattern write {base}/req/%u", f"pattern read {base}/res/%u/#"]
    if cfg.agent_username:
        lines += ["", f"user {cfg.agent_username}", f"topic read {cfg.device_topic.format(id='+')}"]
        for base in services:
            lines += [f"topic read {base}/req/+", f"topic write {base}/res/#"]
    for d in sorted(devices, key=lambda r: r.id):
        if d.transport is Transport.MQTT and d.status is not DeviceStatus.REVOKED:
            lines += ["", f"user {d.id}", f"topic write {cfg.device_topic.format(id=d.id)}"]
    lines += downlink_acl_lines(cfg.agent_username)
    if homeassistant is not None and homeassistant.enabled:
        lines += homeassistant_acl_lines(cfg, homeassistant)
    return "\n".join(lines) + "\n"


def homeassistant_acl_lines(cfg: BrokerAuthConfig, ha: HomeAssistantConfig) -> list[str]:
    """Discovery configs (`<discovery_prefix>/<component>/<node>/<object>/config`, retained)
    and the states and availability under `<topic_prefix>/<gateway>/ha/`: written by the
    login the discovery component connects with, read by Home Assistant's login, which also
    announces itself on `<discovery_prefix>/status`. Nothing here is a pattern: no device's
    login gets any of it."""
    prefix, states = ha.discovery_prefix, f"{ha.topic_prefix}/+/ha/#"
    writer = ha.mqtt.username if ha.mqtt is not None and ha.mqtt.username else None
    writer = writer or cfg.agent_username
    lines = ["", "# Home Assistant discovery ([homeassistant]): only the agent publishes it."]
    if writer:
        lines += [
            f"user {writer}",
            f"topic write {prefix}/+/+/+/config",
            f"topic write {states}",
            f"topic read {prefix}/status",
        ]
    if cfg.homeassistant_username:
        lines += [
            f"user {cfg.homeassistant_username}",
            f"topic read {prefix}/#",
            f"topic read {states}",
            f"topic write {prefix}/status",
        ]
    return lines


class MosquittoAuth:
    def __init__(
        self,
        cfg: BrokerAuthConfig,
        services: Iterable[str] = ("edgence/+/rpc", "edgence/+/oracle", "edgence/+/cmd"),
        homeassistant: HomeAssistantConfig | None = None,
    ) -> None:
        if cfg.password_file is None or cfg.acl_file is None:
            raise BrokerAuthError("enrollment.mosquitto.password_file and acl_file are not set")
        self.cfg = cfg
        self.password_file = cfg.password_file
        self.acl_file = cfg.acl_file
        self.services = tuple(services)
        self.homeassistant = homeassistant

    def _passwd(self, *args: str, stdin: bytes = b"") -> None:
        tool = find_mosquitto_passwd()
        # mosquitto_passwd replaces the file: give it back the owner and mode it had, so that
        # the broker's user can still read it when `pair` runs as root.
        try:
            st = self.password_file.stat()
            keep: tuple[int, int, int] | None = (st.st_uid, st.st_gid, st.st_mode & 0o777)
        except FileNotFoundError:
            keep = None
        try:
            subprocess.run([tool, *args], check=True, capture_output=True, timeout=30, input=stdin)
        except subprocess.CalledProcessError as exc:
            err = exc.stderr.decode(errors="replace").strip()[:200]
            raise BrokerAuthError(
                f"mosquitto_passwd failed on {self.password_file}: {err}"
            ) from None
        if keep is not None:
            if os.geteuid() == 0:
                os.chown(self.password_file, keep[0], keep[1])
            os.chmod(self.password_file, keep[2])

    def set_password(self, username: str) -> str:
        """Create or replace the user's password; returns the new password."""
        password = secrets.token_urlsafe(24)
        if not self.password_file.exists():
            self.password_file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
        # Given on stdin, as an operator types it at the prompt (twice): never on a command line,
        # where every local user can read it in /proc while mosquitto_passwd runs.
        line = password.encode() + b"\n"
        self._passwd(str(self.password_file), username, stdin=line + line)
        return password

    def remove_user(self, username: str) -> None:
        if self.password_file.exists():
            text = self.password_file.read_text(errors="replace")
            if any(line.split(":", 1)[0] == username for line in text.splitlines()):
                self._passwd("-D", str(self.password_file), username)

    def write_acl(self, devices: Iterable[DeviceRecord]) -> None:
        self.acl_file.parent.mkdir(parents=True, exist_ok=True)
        # Same mode as before (owner kept by atomic_write): the broker's user reads it.
        mode = self.acl_file.stat().st_mode & 0o777 if self.acl_file.exists() else 0o640
        text = acl_text(self.cfg, devices, self.services, self.homeassistant)
        atomic_write(self.acl_file, text.encode(), mode)

    def reload(self) -> bool:
        """SIGHUP the broker named by pid_file; False when there is none to tell."""
        if self.cfg.pid_file is None:
            return False
        try:
            pid = int(self.cfg.pid_file.read_text().strip())
            os.kill(pid, signal.SIGHUP)
        except FileNotFoundError:
            return False
        except (ValueError, ProcessLookupError, PermissionError) as exc:
            raise BrokerAuthError(
                f"cannot tell the broker to reload (pid file {self.cfg.pid_file}): {exc}"
            ) from None
        return True
