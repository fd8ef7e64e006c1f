"""`edgence-agent pair` and `edgence-agent devices ...`: enrolling sensors and managing them.

Pairing records the device as pending, opens its join window and hands out a provisioning
bundle (JSON for the firmware's config.json, written 0600, or straight onto a MicroPython
board; its device id, key and counter also as a terminal QR code). The device becomes active
only when the running agent has verified a live frame with the new key; until then, and after
the window closes, it stays pending.
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


def _registry(cfg: AgentConfig) -> DeviceRegistry:
    if cfg.enrollment is None or not cfg.enrollment.enabled:
        raise AgentError(f"{cfg.path}: enrollment.enabled is false; pairing is switched off")
    return DeviceRegistry(cfg.enrollment.registry_dir)


def _broker_auth(cfg: AgentConfig) -> MosquittoAuth | None:
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
    auth = _broker_auth(cfg)
    if auth is not None and rec.transport is Transport.MQTT:
        password = auth.set_password(rec.id)
    if auth is not None:  # also for other transports: the ACL carries the command topics
        _sync_broker(cfg, registry)
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


def _sync_broker(cfg: AgentConfig, registry: DeviceRegistry) -> MosquittoAuth | None:
    auth = _broker_auth(cfg)
    if auth is not None:
        auth.write_acl(registry.all())
        auth.reload()
    return auth


def cmd_pair(args: argparse.Namespace) -> int:
    cfg = load(args)
    registry = _registry(cfg)
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


def _fmt_time(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def cmd_devices_list(args: argparse.Namespace) -> int:
    cfg = load(args)
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
    cfg = load(args)
    rec = _registry(cfg).get(args.device_id)
    if rec is None:
        raise RegistryError(f"no device {args.device_id!r}")
    doc = rec.to_doc()
    doc["key_ref"] = rec.key_ref
    from agent.journal import read_device_counter

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
    cfg = load(args)
    registry = _registry(cfg)
    rec = registry.revoke(args.device_id)
    auth = _broker_auth(cfg)
    if auth is not None:
        auth.remove_user(rec.id)
    _sync_broker(cfg, registry)
    print(f"{rec.id} revoked: its frames are refused and its key destroyed")
    bundle = default_bundle_path(cfg, rec.id)
    if bundle.exists():  # it holds the key just destroyed
        bundle.unlink()
        print(f"its bundle {bundle} deleted")
    print(f"to enroll the id anew: edgence-agent pair {rec.id} --replace")
    return 0


def cmd_devices_rotate_key(args: argparse.Namespace) -> int:
    cfg = load(args)
    registry = _registry(cfg)
    window = args.window or (cfg.enrollment.join_window_s if cfg.enrollment else 120.0)
    rec, key = registry.rotate_key(args.device_id, window_s=window)
    path, _ = issue_bundle(cfg, registry, rec, key, args.host, args.bundle)
    print(f"{rec.id}: new key {rec.key_ref}; frames under the old key are refused from now on")
    print(f"new bundle: {path} (the device is pending until a frame under the new key verifies)")
    return 0


def cmd_devices_reset_counter(args: argparse.Namespace) -> int:
    """Ask the agent to forget an unauthenticated device's last counter (all its transports, or
    --transport's); waits for the running agent's answer, or leaves the request for its start."""
    from agent.datalock import agent_running
    from agent.devices.counterreset import read_answer, request_reset
    from agent.devices.registry import validate_device_id

    cfg = load(args)
    device = validate_device_id(args.device_id)
    if cfg.enrollment is not None and cfg.enrollment.enabled:
        rec = DeviceRegistry(cfg.enrollment.registry_dir).get(device)
        if rec is not None:
            raise RegistryError(
                f"device {device!r} is enrolled ({rec.status}, over {rec.transport}): its "
                "counter is bound to its key, and a reset would let every captured frame of "
                "it be accepted again",
                fix=f"edgence-agent devices rotate-key {device} (a new key and a bundle whose "
                "counter continues above the last one)",
            )
    transport = Transport(args.transport) if args.transport else None
    where = f"over {transport}" if transport is not None else "on every transport"
    data_dir = cfg.gateway.data_dir
    req = request_reset(data_dir, device, transport)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        got = read_answer(req)
        if got is not None:
            if "refused" in got:
                raise RegistryError(f"the agent refused: {got['refused']}")
            removed = got.get("removed") or {}
            if not removed:
                print(f"{device}: no counter kept {where}; nothing to reset")
            for key, counter in sorted(removed.items()):
                print(
                    f"{device}: counter {counter} under {key} forgotten; the next frame there "
                    "may start anywhere"
                )
            return 0
        if not agent_running(data_dir):
            print(
                f"the agent is not running: the reset of {device}'s counter {where} is applied "
                f"when it starts (request {req.path})"
            )
            return 0
        time.sleep(0.1)
    raise AgentError(
        f"the running agent did not answer within {args.timeout:g} s (request {req.path} "
        "stays and is applied when the agent reads it)"
    )


def cmd_devices_check(args: argparse.Namespace) -> int:
    """Print the canonical bytes, the expected MAC and every rule FRAME breaks."""
    from agent.devices.check import check_report

    try:
        bundle = json.loads(Path(args.bundle).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AgentError(f"--bundle {args.bundle}: cannot read a JSON bundle ({exc})") from None
    if args.frame == "-":
        payload = sys.stdin.buffer.read()
    elif Path(args.frame).is_file():
        payload = Path(args.frame).read_bytes()
    else:
        payload = args.frame.encode()
    try:
        lines, problems = check_report(
            bundle,
            payload,
            now=time.time() if args.now is None else args.now,
            last_counter=args.last_counter,
        )
    except ValueError as exc:
        raise AgentError(f"--bundle {args.bundle}: {exc}") from None
    print("\n".join(lines))
    return 1 if problems else 0


_INT_ARG = re.compile(r"-?[0-9]+\Z")


def _parse_command_arg(text: str) -> tuple[str, int | str]:
    name, eq, value = text.partition("=")
    if not eq or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: arguments are NAME=VALUE, e.g. pin=2")
    return name, int(value) if _INT_ARG.match(value) else value


def cmd_devices_command(args: argparse.Namespace) -> int:
    """Send a command to a device through the running agent and print its signed receipt."""
    import asyncio

    from agent.config.downlink import OPERATOR
    from agent.downlink.client import CommandClient
    from agent.wiring import load_gateway_key

    cfg = load(args)
    d = cfg.downlink
    if not d.enabled or d.mqtt is None:
        raise AgentError(
            f"{cfg.path}: downlink.enabled is false; commands are switched off",
            fix="set [downlink] enabled = true and restart the agent",
        )
    gateway = load_gateway_key(cfg).address
    ttl = d.default_ttl_s if args.ttl is None else args.ttl
    request: dict[str, Any] = {
        "device": args.device_id,
        "action": args.action,
        "args": dict(args.args),
        "ttl": ttl,
    }
    if args.id:
        request["id"] = args.id

    async def go() -> dict[str, Any]:
        assert d.mqtt is not None
        async with CommandClient(d.mqtt, d.topic_prefix, gateway, OPERATOR) as client:
            return await client.send(request, wait_s=max(ttl, 0) + 10)

    out = asyncio.run(go())
    if args.json or out.get("ok"):
        print(json.dumps(out, indent=1))
    if not out.get("ok"):
        print(f"error: {out.get('error')}: {out.get('detail')}", file=sys.stderr)
        return 1
    return 0


def add_parsers(sub: Any, config: argparse.ArgumentParser) -> None:
    """`pair` and `devices`; `config` is the parent parser holding --config."""
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

    d = sub.add_parser("devices", help="list, show, revoke enrolled devices, rotate their keys")
    dsub = d.add_subparsers(dest="devices_command", required=True)
    s = dsub.add_parser("list", parents=[config], help="every enrolled device")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_devices_list)
    s = dsub.add_parser("show", parents=[config], help="one device")
    s.add_argument("device_id")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_devices_show)
    s = dsub.add_parser("revoke", parents=[config], help="refuse a device's frames from now on")
    s.add_argument("device_id")
    s.set_defaults(fn=cmd_devices_revoke)
    s = dsub.add_parser(
        "rotate-key", parents=[config], help="give a device a new key (and a new bundle)"
    )
    s.add_argument("device_id")
    s.add_argument("--window", type=float)
    s.add_argument("--bundle", type=Path)
    s.add_argument("--host")
    s.set_defaults(fn=cmd_devices_rotate_key)
    s = dsub.add_parser(
        "reset-counter",
        parents=[config],
        help="forget an unauthenticated device's last counter (after a spoofed frame)",
        epilog="For devices accepted without a key (allowlisted, observed, bound to a serial "
        "port, OSCORE, plaintext BLE): their counters are kept per transport. The running "
        "agent applies it at once and logs event=counter_reset; a stopped one when it starts. "
        "Enrolled devices are refused: use rotate-key.",
    )
    s.add_argument("device_id")
    s.add_argument(
        "--transport",
        choices=[str(t) for t in Transport if t is not Transport.SIMULATED],
        help="only the counter of this transport (default: every transport)",
    )
    s.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the agent")
    s.set_defaults(fn=cmd_devices_reset_counter)
    s = dsub.add_parser(
        "check",
        help="check a frame as the gateway would: canonical bytes, expected mac, every rule broken",
    )
    s.add_argument("--bundle", type=Path, required=True, help="the device's provisioning bundle")
    s.add_argument("frame", help="the frame: JSON text, CBOR as hex, a file, or - for stdin")
    s.add_argument("--now", type=float, help="the gateway's clock, Unix seconds (default: now)")
    s.add_argument(
        "--last-counter",
        type=int,
        help="the last counter the gateway accepted (default: the bundle's counter_start - 1)",
    )
    s.set_defaults(fn=cmd_devices_check)
    s = dsub.add_parser(
        "command",
        parents=[config],
        help="send a command to a device through the running agent; print the signed receipt",
        epilog="e.g. `devices command gate-1 set_output pin=2 value=1`. Waits until the device "
        "answers or the TTL ends; exit status 1 when the command is refused or fails.",
    )
    s.add_argument("device_id")
    s.add_argument("action", help="set_output, set_interval, reboot, version, or the device's own")
    s.add_argument("args", nargs="*", type=_parse_command_arg, help="NAME=VALUE (integer or text)")
    s.add_argument(
        "--ttl", type=float, help="seconds the command may wait (default: downlink.default_ttl)"
    )
    s.add_argument("--id", help="a command id of your own (the same id is never run twice)")
    s.add_argument("--json", action="store_true", help="print the outcome as JSON also on failure")
    s.set_defaults(fn=cmd_devices_command)


__all__ = ["add_parsers", "build_bundle"]
