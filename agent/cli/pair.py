"""`edgence-agent pair`: enrolling a sensor. Pairing records the device as pending, opens its join
window and hands out a provisioning bundle (JSON for the firmware's config.json, written 0600,
or straight onto a MicroPython board; its device id, key and counter also as a terminal QR
code). The device becomes active only when the running agent has verified a live frame with
the new key; until then, and after the window closes, it stays pending.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from agent.atomicfile import atomic_write
from agent.cli.options import load
from agent.cli.qr import print_qr
from agent.devices.registry import (
    MAX_JOIN_WINDOW_S,
    DeviceRecord,
    DeviceRegistry,
    DeviceStatus,
    KeyKind,
    RegistryError,
)
from agent.errors import AgentError
from agent.model import Transport

if TYPE_CHECKING:
    from agent.config import AgentConfig
    from agent.devices.brokerauth import MosquittoAuth

BUNDLE_VERSION = 1


def open_registry(cfg: AgentConfig) -> DeviceRegistry:
    if cfg.enrollment is None or not cfg.enrollment.enabled:
        raise AgentError(f"{cfg.path}: enrollment.enabled is false; pairing is switched off")
    return DeviceRegistry(cfg.enrollment.registry_dir)


def broker_auth(cfg: AgentConfig) -> MosquittoAuth | None:
    ba = cfg.enrollment.broker_auth if cfg.enrollment else None
    if ba is None or ba.password_file is None:
        return None
    from agent.devices.brokerauth import MosquittoAuth

    # The forwarding and oracle topics are in the ACL whether or not they are enabled now.
    services = [f"{cfg.forward.topic_prefix}/+/rpc", f"{cfg.oracle.topic_prefix}/+/oracle"]
    return MosquittoAuth(ba, services, homeassistant=cfg.homeassistant)


def _gateway_address(cfg: AgentConfig) -> str | None:
    from agent.wiring import load_gateway_key

    try:
        return load_gateway_key(cfg).checksum_address
    except AgentError:
        return None  # an encrypted key without its passphrase: the bundle works without it


def build_bundle(
    cfg: AgentConfig,
    rec: DeviceRecord,
    key: bytes,
    *,
    counter_start: int,
    mqtt_password: str | None,
    host: str | None,
) -> dict[str, Any]:
    """The firmware's config.json: who the device is, its key, where to send, where its counter
    continues. It holds the device key: keep it private (the file is written 0600)."""
    bundle: dict[str, Any] = {
        "edgence": BUNDLE_VERSION,
        "device_id": rec.id,
        "name": rec.name,
        "transport": str(rec.transport),
        "key_kind": str(rec.key_kind),
        "key": key.hex(),
        "counter_start": counter_start,
        "sensors": [[s, u] for s, u in rec.sensors],
    }
    gw = _gateway_address(cfg)
    if gw:
        bundle["gateway"] = gw
    if rec.transport is Transport.MQTT:
        b = cfg.sources.mqtt.broker
        topic = (
            cfg.enrollment.broker_auth.device_topic if cfg.enrollment else "devices/{id}/up"
        ).format(id=rec.id)
        mqtt: dict[str, Any] = {"host": host or b.host, "port": b.port, "topic": topic}
        if mqtt_password is not None:
            mqtt |= {"username": rec.id, "password": mqtt_password}
        bundle["mqtt"] = mqtt
    elif rec.transport is Transport.COAP:
        bundle["coap"] = {
            "host": host or "",
            "port": cfg.sources.coap.port,
            "path": rec.address or f"/up/{rec.id}",
        }
    elif rec.transport is Transport.SERIAL:
        bundle["serial"] = {"port": rec.address}
    elif rec.transport is Transport.BLE:
        bundle["ble"] = {"mac": rec.address}
    return bundle


def default_bundle_path(cfg: AgentConfig, device_id: str) -> Path:
    return cfg.gateway.data_dir / "bundles" / f"{device_id}.json"


def write_bundle(path: Path, bundle: dict[str, Any]) -> bytes:
    data = json.dumps(bundle, separators=(",", ":"), sort_keys=True).encode()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(path, data + b"\n", 0o600)
    return data


def wait_for_first_frame(
    registry: DeviceRegistry, device_id: str, until: float, out: TextIO, poll: float = 0.25
) -> DeviceRecord | None:
    """Poll the registry until the agent marks the device active or the window closes."""
    tty = out.isatty()
    spinner = "|/-\\"
    last_line = 0.0
    i = 0
    while True:
        rec = registry.get(device_id)
        if rec is not None and rec.status is DeviceStatus.ACTIVE:
            if tty:
                out.write("\r\x1b[K")
            return rec
        left = until - time.time()
        if left <= 0:
            if tty:
                out.write("\r\x1b[K")
            return None
        if tty:
            out.write(
                f"\r{spinner[i % 4]} waiting for a first frame from {device_id} "
                f"that verifies with its key: {left:5.0f} s left "
            )
            out.flush()
        elif time.monotonic() - last_line >= 15:
            out.write(f"waiting for a first frame from {device_id}: {left:.0f} s left\n")
            out.flush()
            last_line = time.monotonic()
        i += 1
        time.sleep(min(poll, max(left, 0.01)))


def issue_bundle(
    cfg: AgentConfig,
    registry: DeviceRegistry,
    rec: DeviceRecord,
    key: bytes,
    host: str | None,
    path: Path | None,
) -> tuple[Path, bytes]:
    """A (new) key's bundle: a fresh broker login for an MQTT device when the agent manages
    them, the counter to continue from, written 0600. Returns where, and its bytes."""
    password = None
    auth = broker_auth(cfg)
    if auth is not None and rec.transport is Transport.MQTT:
        password = auth.set_password(rec.id)
    if auth is not None:  # also for other transports: the ACL carries the command topics
        sync_broker(cfg, registry)
    from agent.journal import read_device_counter

    last = read_device_counter(cfg.journal.path, rec.id)
    bundle = build_bundle(
        cfg,
        rec,
        key,
        counter_start=0 if last is None else last + 1,
        mqtt_password=password,
        host=host or (cfg.enrollment.advertise_host if cfg.enrollment else None),
    )
    path = path or default_bundle_path(cfg, rec.id)
    return path, write_bundle(path, bundle)


def _parse_sensor(text: str) -> tuple[str, str]:
    name, sep, unit = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"--sensor {text!r}: use NAME:UNIT, e.g. temperature:Cel")
    return name, unit


def sync_broker(cfg: AgentConfig, registry: DeviceRegistry) -> MosquittoAuth | None:
    auth = broker_auth(cfg)
    if auth is not None:
        auth.write_acl(registry.all())
        auth.reload()
    return auth


def cmd_pair(args: argparse.Namespace) -> int:
    cfg = load(args)
    registry = open_registry(cfg)
    out: TextIO = sys.stdout
    window = args.window or (cfg.enrollment.join_window_s if cfg.enrollment else 120.0)
    transport = Transport(args.transport)
    existing = registry.get(args.device_id)
    if args.reopen:
        if existing is None:
            raise RegistryError(
                f"no device {args.device_id!r} to reopen",
                fix=f"pair it first: edgence-agent pair {args.device_id}",
            )
        rec = registry.reopen(args.device_id, window)
        key = registry.key_of(args.device_id)
        if key is None:
            raise RegistryError(
                f"device {args.device_id!r} has no key",
                fix=f"edgence-agent devices rotate-key {args.device_id}",
            )
        print(f"join window of {rec.id} open again for {window:.0f} s (same key)", file=out)
    else:
        if transport is Transport.BLE and not re.fullmatch(
            r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}", args.address or ""
        ):
            raise RegistryError("a BLE device needs --address AA:BB:CC:DD:EE:FF (its MAC)")
        try:
            bindkey = bytes.fromhex(args.bindkey) if args.bindkey else None
        except ValueError:
            raise RegistryError("--bindkey must be 32 hex digits") from None
        rec, key = registry.enroll(
            args.device_id,
            transport=transport,
            name=args.name,
            address=(args.address or "").upper()
            if transport is Transport.BLE
            else (args.address or ""),
            sensors=args.sensor or (),
            key=bindkey,
            key_kind=KeyKind.BTHOME if transport is Transport.BLE else KeyKind.HMAC,
            window_s=window,
            replace_revoked=args.replace,
        )
        if existing is not None:  # a revoked id enrolled anew: its old bundle holds a dead key
            old_bundle = default_bundle_path(cfg, rec.id)
            if old_bundle.exists():
                old_bundle.unlink()
                print(f"old bundle {old_bundle} deleted (its key was revoked)", file=out)
        bundle_path, data = issue_bundle(cfg, registry, rec, key, args.host, args.bundle)
        print(f"enrolled {rec.id} ({transport}) as pending; key {rec.key_ref}", file=out)
        print(f"provisioning bundle (holds the device key, mode 0600): {bundle_path}", file=out)
        if args.qr or (args.qr is None and out.isatty()):
            print_qr(json.loads(data), out)
        if args.serial:
            from agent.cli.rawrepl import provision_over_serial

            print(f"writing config.json to the board on {args.serial} ...", file=out)
            provision_over_serial(args.serial, data + b"\n")
            print(f"config.json written to the board on {args.serial}; it restarts", file=out)
    bundle_path = args.bundle or default_bundle_path(cfg, rec.id)
    if args.no_wait:
        print(
            f"join window closes in {window:.0f} s: put the bundle on the device "
            f"(edgence-agent firmware deploy --port PORT --bundle {bundle_path}) and let it "
            f"send; check with `edgence-agent devices show {rec.id}`; if the window closed "
            f"first: `edgence-agent pair {rec.id} --reopen`",
            file=out,
        )
        return 0
    print(
        f"waiting up to {window:.0f} s for {rec.id}'s first frame (the agent must be running). "
        f"Put the bundle on the device now from a second terminal (edgence-agent firmware "
        f"deploy --port PORT --bundle {bundle_path}), or press Ctrl-C (the device stays "
        f"pending) and run `edgence-agent pair {rec.id} --reopen` when it is ready to send.",
        file=out,
    )
    got = wait_for_first_frame(registry, rec.id, rec.join_until or time.time(), out)
    if got is None:
        print(
            f"no frame from {rec.id} verified within {window:.0f} s: it stays pending. Check "
            f"that the device has the bundle and the agent is running, then "
            f"`edgence-agent pair --reopen {rec.id}`",
            file=out,
        )
        return 1
    print(f"{rec.id} is active: its first frame verified with its key", file=out)
    return 0


def add_parser(sub: Any, config: argparse.ArgumentParser) -> None:
    """`pair`; `config` is the parent parser holding --config."""
    s = sub.add_parser(
        "pair",
        parents=[config],
        help="enroll a sensor and wait for its first verified frame",
        epilog="pair waits (up to the join window) until the device's first frame verifies: "
        "put the bundle on the device from a second terminal (firmware deploy), or pass "
        "--no-wait now and `pair ID --reopen` once the device is ready to send.",
    )
    s.add_argument("device_id", help="device id: 1-32 of A-Z a-z 0-9 _ . : -")
    s.add_argument(
        "--transport",
        choices=[str(t) for t in Transport if t not in (Transport.SIMULATED, Transport.MODBUS)],
        default="mqtt",
    )
    s.add_argument("--name", help="a human name (default: the id)")
    s.add_argument("--address", help="CoAP path, serial port or BLE MAC of the device")
    s.add_argument("--sensor", action="append", type=_parse_sensor, help="NAME:UNIT (repeat)")
    s.add_argument("--bindkey", help="BLE: the device's existing 32-hex-digit BTHome bindkey")
    s.add_argument(
        "--window",
        type=float,
        help=f"join window in seconds (default from the config, at most {MAX_JOIN_WINDOW_S})",
    )
    s.add_argument("--bundle", type=Path, help="where to write the provisioning bundle")
    s.add_argument("--host", help="broker/CoAP host the device should use (bundle)")
    s.add_argument("--serial", metavar="PORT", help="write the bundle onto a MicroPython board")
    s.add_argument("--qr", action="store_true", default=None, help="print the bundle as a QR code")
    s.add_argument("--no-qr", dest="qr", action="store_false")
    s.add_argument("--no-wait", action="store_true", help="do not wait for the first frame")
    s.add_argument("--reopen", action="store_true", help="reopen a pending device's window")
    s.add_argument(
        "--replace",
        action="store_true",
        help="enroll a revoked id anew (new key, new bundle; the old bundle is deleted)",
    )
    s.set_defaults(fn=cmd_pair)


__all__ = [
    "add_parser",
    "broker_auth",
    "build_bundle",
    "default_bundle_path",
    "issue_bundle",
    "open_registry",
    "sync_broker",
]
