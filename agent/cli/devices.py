"""`edgence-agent devices ...`: managing enrolled sensors (list, show, revoke, rotate-key,
reset-counter, check a frame, send a command). Enrolling one is `pair` (agent/cli/pair.py).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from agent.cli import pair
from agent.cli.options import load
from agent.cli.pair import (
    broker_auth,
    default_bundle_path,
    issue_bundle,
    open_registry,
    sync_broker,
)
from agent.devices.registry import DeviceRegistry, DeviceStatus, RegistryError
from agent.errors import AgentError
from agent.model import Transport


def _fmt_time(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def cmd_devices_list(args: argparse.Namespace) -> int:
    cfg = load(args)
    recs = open_registry(cfg).all()
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
    rec = open_registry(cfg).get(args.device_id)
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
    registry = open_registry(cfg)
    rec = registry.revoke(args.device_id)
    auth = broker_auth(cfg)
    if auth is not None:
        auth.remove_user(rec.id)
    sync_broker(cfg, registry)
    print(f"{rec.id} revoked: its frames are refused and its key destroyed")
    bundle = default_bundle_path(cfg, rec.id)
    if bundle.exists():  # it holds the key just destroyed
        bundle.unlink()
        print(f"its bundle {bundle} deleted")
    print(f"to enroll the id anew: edgence-agent pair {rec.id} --replace")
    return 0


def cmd_devices_rotate_key(args: argparse.Namespace) -> int:
    cfg = load(args)
    registry = open_registry(cfg)
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
    pair.add_parser(sub, config)

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


__all__ = ["add_parsers"]
