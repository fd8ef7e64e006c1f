"""`edgence-agent pair` and `edgence-agent devices ...`: enrolling sensors and managing them.

Pairing records the device as pending, opens its join window and hands out a provisioning
bundle (JSON for the firmware's config.json, also as a terminal QR code, or written straight
onto a MicroPython board). The device becomes active only when the running agent has verified
a live frame with the new key; until then, and after the window closes, it stays pending.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from agent.config import AgentConfig, load_config
from agent.devices.brokerauth import MosquittoAuth
from agent.devices.registry import (
    MAX_JOIN_WINDOW_S,
    DeviceRecord,
    DeviceRegistry,
    DeviceStatus,
    KeyKind,
    RegistryError,
    atomic_write,
)
from agent.errors import AgentError
from agent.journal import read_device_counter
from agent.model import Transport

BUNDLE_VERSION = 1


def _registry(cfg: AgentConfig) -> DeviceRegistry:
    if cfg.enrollment is None or not cfg.enrollment.enabled:
        raise AgentError(f"{cfg.path}: enrollment.enabled is false; pairing is switched off")
    return DeviceRegistry(cfg.enrollment.registry_dir)


def _broker_auth(cfg: AgentConfig) -> MosquittoAuth | None:
    ba = cfg.enrollment.broker_auth if cfg.enrollment else None
    if ba is None or ba.password_file is None:
        return None
    return MosquittoAuth(ba)


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


def write_bundle(path: Path, bundle: dict[str, Any]) -> bytes:
    data = json.dumps(bundle, separators=(",", ":"), sort_keys=True).encode()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(path, data + b"\n", 0o600)
    return data


def print_qr(data: bytes, out: TextIO) -> None:
    import segno

    qr = segno.make(data.decode(), error="l")
    qr.terminal(out=out, compact=True)


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
    auth = _broker_auth(cfg)
    if auth is not None and rec.transport is Transport.MQTT:
        password = auth.set_password(rec.id)
        _sync_broker(cfg, registry)
    last = read_device_counter(cfg.journal.path, rec.id)
    bundle = build_bundle(
        cfg,
        rec,
        key,
        counter_start=0 if last is None else last + 1,
        mqtt_password=password,
        host=host or (cfg.enrollment.advertise_host if cfg.enrollment else None),
    )
    path = path or cfg.gateway.data_dir / "bundles" / f"{rec.id}.json"
    return path, write_bundle(path, bundle)


def _parse_sensor(text: str) -> tuple[str, str]:
    name, sep, unit = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"--sensor {text!r}: use NAME:UNIT, e.g. temperature:Cel")
    return name, unit


def _sync_broker(cfg: AgentConfig, registry: DeviceRegistry) -> MosquittoAuth | None:
    auth = _broker_auth(cfg)
    if auth is not None:
        auth.write_acl(registry.all())
        auth.reload()
    return auth


def cmd_pair(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    registry = _registry(cfg)
    out: TextIO = sys.stdout
    window = args.window or (cfg.enrollment.join_window_s if cfg.enrollment else 120.0)
    transport = Transport(args.transport)
    existing = registry.get(args.device_id)
    if args.reopen:
        if existing is None:
            raise RegistryError(f"no device {args.device_id!r} to reopen; pair it first")
        rec = registry.reopen(args.device_id, window)
        key = registry.key_of(args.device_id)
        if key is None:
            raise RegistryError(f"device {args.device_id!r} has no key; rotate its key")
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
        )
        bundle_path, data = issue_bundle(cfg, registry, rec, key, args.host, args.bundle)
        print(f"enrolled {rec.id} ({transport}) as pending; key {rec.key_ref}", file=out)
        print(f"provisioning bundle (holds the device key, mode 0600): {bundle_path}", file=out)
        if args.qr or (args.qr is None and out.isatty()):
            print_qr(data, out)
        if args.serial:
            from agent.devices.rawrepl import provision_over_serial

            print(f"writing config.json to the board on {args.serial} ...", file=out)
            provision_over_serial(args.serial, data + b"\n")
            print(f"config.json written to the board on {args.serial}; it restarts", file=out)
    if args.no_wait:
        print(
            f"join window closes in {window:.0f} s; check with `edgence-agent devices show "
            f"{rec.id}`",
            file=out,
        )
        return 0
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


def _fmt_time(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def cmd_devices_list(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    recs = _registry(cfg).all()
    if args.json:
        print(json.dumps([r.to_doc() for r in recs], indent=1))
        return 0
    print(f"{'ID':<24} {'STATUS':<8} {'TRANSPORT':<9} {'LAST SEEN':<19} NAME")
    for r in recs:
        print(f"{r.id:<24} {r.status:<8} {r.transport:<9} {_fmt_time(r.last_seen):<19} {r.name}")
    print(f"{len(recs)} device(s)")
    return 0


def cmd_devices_show(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    rec = _registry(cfg).get(args.device_id)
    if rec is None:
        raise RegistryError(f"no device {args.device_id!r}")
    doc = rec.to_doc()
    doc["key_ref"] = rec.key_ref
    doc["last_counter"] = read_device_counter(cfg.journal.path, rec.id)
    if args.json:
        print(json.dumps(doc, indent=1))
        return 0
    for k in ("id", "name", "status", "transport", "address", "key_kind", "key_ref"):
        print(f"{k:<13} {doc[k]}")
    print(f"{'sensors':<13} {', '.join(f'{s} [{u}]' for s, u in rec.sensors) or '-'}")
    print(f"{'created':<13} {_fmt_time(rec.created)}")
    print(f"{'last seen':<13} {_fmt_time(rec.last_seen)}")
    print(f"{'last counter':<13} {doc['last_counter'] if doc['last_counter'] is not None else '-'}")
    if rec.status is DeviceStatus.PENDING:
        left = (rec.join_until or 0) - time.time()
        print(f"{'join window':<13} {f'{left:.0f} s left' if left > 0 else 'closed'}")
    return 0


def cmd_devices_revoke(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    registry = _registry(cfg)
    rec = registry.revoke(args.device_id)
    auth = _broker_auth(cfg)
    if auth is not None:
        auth.remove_user(rec.id)
    _sync_broker(cfg, registry)
    print(f"{rec.id} revoked: its frames are refused and its key destroyed")
    return 0


def cmd_devices_rotate_key(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    registry = _registry(cfg)
    window = args.window or (cfg.enrollment.join_window_s if cfg.enrollment else 120.0)
    rec, key = registry.rotate_key(args.device_id, window_s=window)
    path, _ = issue_bundle(cfg, registry, rec, key, args.host, args.bundle)
    print(f"{rec.id}: new key {rec.key_ref}; frames under the old key are refused from now on")
    print(f"new bundle: {path} (the device is pending until a frame under the new key verifies)")
    return 0


def add_parsers(sub: Any, config_arg: Any) -> None:
    """Adds `pair` and `devices` to the top-level parser (`config_arg(parser)` adds --config)."""
    s = sub.add_parser("pair", help="enroll a sensor and wait for its first verified frame")
    config_arg(s)
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
    s.set_defaults(fn=cmd_pair)

    d = sub.add_parser("devices", help="list, show, revoke enrolled devices, rotate their keys")
    dsub = d.add_subparsers(dest="devices_command", required=True)
    s = dsub.add_parser("list", help="every enrolled device")
    config_arg(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_devices_list)
    s = dsub.add_parser("show", help="one device")
    config_arg(s)
    s.add_argument("device_id")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_devices_show)
    s = dsub.add_parser("revoke", help="refuse a device's frames from now on")
    config_arg(s)
    s.add_argument("device_id")
    s.set_defaults(fn=cmd_devices_revoke)
    s = dsub.add_parser("rotate-key", help="give a device a new key (and a new bundle)")
    config_arg(s)
    s.add_argument("device_id")
    s.add_argument("--window", type=float)
    s.add_argument("--bundle", type=Path)
    s.add_argument("--host")
    s.set_defaults(fn=cmd_devices_rotate_key)


__all__ = ["add_parsers", "build_bundle"]
