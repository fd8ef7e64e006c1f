"""`edgence-agent firmware deploy`: copy the MicroPython firmware (boot.py, main.py, lib/) and
a device's provisioning bundle (config.json) onto a board through its raw REPL, with progress.
The library goes as .mpy compiled for the board's MicroPython (agent/fwbuild.py), or as
sources with --sources. `firmware update` and `firmware status`: over the air, through the
running agent's command service (agent/downlink/otaupdate.py, docs/ota.md).

The board is put in safe mode first (a `SAFE` file: boot.py then arms no watchdog and main.py
does not start), so a board whose watchdog bites mid-copy comes back copyable; the flag is
removed last and the board soft-resets into its new firmware.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from agent import fwbuild
from agent.cli.rawrepl import RawRepl, RawReplError
from agent.errors import AgentError

SAFE_FLAG = "SAFE"


class DeployError(AgentError):
    """The firmware source or bundle is unusable, or the board refused a file."""


def default_source() -> Path:
    """The firmware shipped in the installed package (or this checkout's, when editable)."""
    return fwbuild.shipped_firmware()


@dataclass(frozen=True)
class BoardFile:
    path: str  # on the board, '/'-separated, relative to the flash root
    content: bytes


def firmware_files(source: Path) -> list[BoardFile]:
    """boot.py, main.py and every .py under lib/, in a stable order (lib first, so a board
    reset mid-copy never runs a main.py newer than its library)."""
    if not (source / "main.py").is_file() or not (source / "lib").is_dir():
        raise DeployError(
            f"{source} is not the MicroPython firmware (needs main.py and lib/)",
            fix="pass --source firmware/micropython of an edgence-agent checkout",
        )
    lib = sorted(p for p in (source / "lib").rglob("*.py") if "__pycache__" not in p.parts)
    files = [BoardFile(p.relative_to(source).as_posix(), p.read_bytes()) for p in lib]
    files += [BoardFile(n, (source / n).read_bytes()) for n in ("boot.py", "main.py")]
    return files


def with_settings(bundle: bytes, settings: list[str]) -> bytes:
    """The bundle with firmware settings (KEY=JSON-VALUE) merged into its "firmware" object."""
    try:
        data = json.loads(bundle)
    except ValueError:
        raise DeployError("the bundle is not JSON (a config.json written by pair)") from None
    if not isinstance(data, dict) or data.get("edgence") != 1:
        raise DeployError("the bundle is not an edgence provisioning bundle (edgence: 1)")
    fw = dict(data.get("firmware", {}))
    for item in settings:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise DeployError(f"--setting {item!r}: expected KEY=VALUE, e.g. interval_s=30")
        try:
            fw[key] = json.loads(raw)
        except ValueError:
            fw[key] = raw  # a bare word: a string
    if fw:
        data["firmware"] = fw
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode() + b"\n"


def _dirs(files: list[BoardFile]) -> list[str]:
    out: list[str] = []
    for f in files:
        parts = f.path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in out:
                out.append(d)
    return out


Progress = Callable[[int, int, str, int], None]


def print_progress(out: TextIO) -> Progress:
    def report(i: int, total: int, path: str, size: int) -> None:
        print(f"[{i:>2}/{total}] {path} ({size} bytes)", file=out, flush=True)

    return report


def _watchdog_armed(repl: RawRepl) -> bool:
    out = repl.exec(
        "try:\n from edgence import watchdog as w\n"
        " print(1 if w.current() is not None and w.current().wdt is not None else 0)\n"
        "except ImportError:\n print(0)\n"
    )
    return out.strip() == b"1"


def board_runtime(port: str, open_repl: Callable[[str], RawRepl] = RawRepl) -> fwbuild.BoardRuntime:
    """Which MicroPython the board runs (asked through its raw REPL)."""
    repl = open_repl(port)
    try:
        repl.enter_raw()
        out = repl.exec(fwbuild.BOARD_QUERY)
        repl.exit_raw()
    except RawReplError as exc:
        raise DeployError(f"{exc}; the board did not say which MicroPython it runs") from None
    finally:
        repl.close()
    return fwbuild.parse_board_runtime(out.decode(errors="replace"))


def deploy(
    port: str,
    files: list[BoardFile],
    *,
    progress: Progress | None = None,
    reset: bool = True,
    open_repl: Callable[[str], RawRepl] = RawRepl,
    remove: list[str] | None = None,
) -> None:
    repl = open_repl(port)
    try:
        repl.enter_raw()
        repl.exec(f"f=open({SAFE_FLAG!r},'w')\nf.close()\n")
        if _watchdog_armed(repl):
            # A running watchdog cannot be stopped: restart into safe mode (SAFE is in flash).
            repl.ser.write(b"import machine\nmachine.reset()\n\x04")
            repl.close()
            time.sleep(3)
            repl = open_repl(port)
            repl.enter_raw()
        for d in _dirs(files):
            repl.exec(f"import os\ntry:\n os.mkdir({d!r})\nexcept OSError:\n pass\n")
        for i, f in enumerate(files, 1):
            repl.write_file(f.path, f.content)
            if progress is not None:
                progress(i, len(files), f.path, len(f.content))
        for path in remove or []:  # a stale twin (.py beside a new .mpy) would win the import
            repl.exec(f"import os\ntry:\n os.remove({path!r})\nexcept OSError:\n pass\n")
        repl.exec(f"import os\nos.remove({SAFE_FLAG!r})\n")
        repl.exit_raw()
        if reset:
            repl.ser.write(b"\x04")  # soft reset: boot.py, then main.py with the new firmware
            repl._read_until(b"soft reboot", "soft reboot after the deploy")
    except RawReplError as exc:
        raise DeployError(
            f"{exc.description}; the board is left in safe mode (file SAFE)",
            fix="run the deploy again",
        ) from None
    finally:
        repl.close()


def cmd_firmware_deploy(args: argparse.Namespace) -> int:
    out: TextIO = sys.stdout
    source = args.source or default_source()
    files = firmware_files(source)
    if args.bundle is not None:
        try:
            raw = args.bundle.read_bytes()
        except OSError as exc:
            raise DeployError(f"cannot read the bundle {args.bundle}: {exc}") from None
        files.insert(0, BoardFile("config.json", with_settings(raw, args.setting or [])))
    elif args.setting:
        raise DeployError("--setting needs --bundle (settings go into the board's config.json)")
    if not args.sources:
        runtime = board_runtime(args.port)
        compiled = fwbuild.compiled_files(source, runtime)
        files = files[:1] if args.bundle is not None else []
        files += [BoardFile(p, c) for p, c in compiled]
        print(f"compiled for {runtime.describe()} with mpy-cross", file=out)
    stale = fwbuild.stale_on_board([(f.path, f.content) for f in files])
    total = sum(len(f.content) for f in files)
    print(f"deploying {len(files)} files ({total} bytes) from {source} to {args.port}", file=out)
    deploy(args.port, files, progress=print_progress(out), reset=not args.no_reset, remove=stale)
    print(f"done: {args.port} runs the new firmware" if not args.no_reset else "done", file=out)
    return 0


_VERSION_RE = re.compile(r"""^VERSION\s*=\s*["']([^"']+)["']""", re.M)


def update_files(source: Path) -> list[tuple[str, bytes]]:
    """Every file under `source` (paths as on the board), without caches and dot files."""
    if not source.is_dir():
        raise DeployError(f"--source {source} is not a directory")
    out = []
    for p in sorted(source.rglob("*")):
        rel = p.relative_to(source)
        if p.is_file() and "__pycache__" not in rel.parts and not rel.name.startswith("."):
            out.append((rel.as_posix(), p.read_bytes()))
    if not out:
        raise DeployError(f"--source {source} holds no files")
    return out


def update_version(source: Path, given: str | None) -> str:
    if given:
        return given
    init = source / "lib" / "edgence" / "__init__.py"
    m = _VERSION_RE.search(init.read_text()) if init.is_file() else None
    if m is None:
        raise DeployError(
            f'no version: {init} with VERSION = "..." is not in --source {source}',
            fix="pass --version (the version the new firmware reports)",
        )
    return m.group(1)


def _command_sender(args: argparse.Namespace) -> tuple[Any, Any, str]:
    """(config, CommandClient, gateway address) for the running agent's command service."""
    from agent.cli.options import load
    from agent.config.downlink import OPERATOR
    from agent.downlink.client import CommandClient
    from agent.wiring import load_gateway_key

    cfg = load(args)
    d = cfg.downlink
    if not d.enabled or d.mqtt is None:
        raise AgentError(
            f"{cfg.path}: downlink.enabled is false; updates go as commands",
            fix="set [downlink] enabled = true and restart the agent",
        )
    gateway = load_gateway_key(cfg).address
    return cfg, CommandClient(d.mqtt, d.topic_prefix, gateway, OPERATOR), gateway


def _sender(client: Any, device: str) -> Any:
    async def send(action: str, a: Any, ttl: float) -> dict[str, Any]:
        req = {"device": device, "action": action, "args": dict(a), "ttl": ttl}
        out: dict[str, Any] = await client.send(req, wait_s=ttl + 10)
        return out

    return send


def _n(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def cmd_firmware_update(args: argparse.Namespace) -> int:
    """Send new firmware files to a device over the air (docs/ota.md)."""
    import asyncio

    from agent.devices.registry import DeviceRegistry
    from agent.downlink.ota import OtaError, build_manifest
    from agent.downlink.otaupdate import UpdateFailed, Updater

    files = update_files(args.source)
    version = update_version(args.source, args.fw_version)
    try:
        manifest = build_manifest(version, files, args.block_size, args.boots)
    except OtaError as exc:
        raise DeployError(f"--source {args.source}: {exc.reason}: {exc.detail}") from None
    cfg, client, _ = _command_sender(args)
    key = DeviceRegistry(cfg.enrollment.registry_dir).key_of(args.device_id)
    if key is None:
        raise AgentError(
            f"{args.device_id!r} is not enrolled in {cfg.enrollment.registry_dir}",
            fix="edgence-agent devices list",
        )
    total = sum(len(c) for _, c in files)
    print(f"updating {args.device_id} to {version}: {_n(len(files), 'file')}, {total} bytes, "
          f"blocks of {manifest.block_size}", flush=True)  # fmt: skip

    async def go() -> Any:
        async with client:
            up = Updater(
                _sender(client, args.device_id), key, args.device_id, manifest,
                dict(files), ttl=cfg.downlink.default_ttl_s,
                progress=lambda line: print(line, flush=True),
            )  # fmt: skip
            return await up.run(args.timeout if args.wait else None)

    try:
        res = asyncio.run(go())
    except UpdateFailed as exc:
        print(f"error: {exc.description}", file=sys.stderr)
        if exc.fix:
            print(f"fix: {exc.fix}", file=sys.stderr)
        return 1
    note = _n(res.blocks, "block") + (f", {res.resent} sent again" if res.resent else "")
    if res.state == "ok":
        print(f"done: {args.device_id} runs {res.running}, confirmed ({note})")
    else:
        print(f"staged: {args.device_id} restarts into {version} ({note})")
        print(f"check it: edgence-agent firmware status {args.device_id}")
    return 0


def cmd_firmware_status(args: argparse.Namespace) -> int:
    """What the device says about its firmware and its last update."""
    import asyncio

    _, client, _ = _command_sender(args)

    async def go() -> dict[str, Any]:
        async with client:
            out: dict[str, Any] = await _sender(client, args.device_id)("ota_status", {}, args.ttl)
            return out

    out = asyncio.run(go())
    if not out.get("ok"):
        print(f"error: {out.get('error')}: {out.get('detail')}", file=sys.stderr)
        return 1
    print(json.dumps(out["result"], sort_keys=True))
    return 0


def add_parsers(sub: Any, config: argparse.ArgumentParser) -> None:
    f = sub.add_parser("firmware", help="MicroPython firmware for the sensors")
    fsub = f.add_subparsers(dest="firmware_command", required=True)
    s = fsub.add_parser("deploy", help="copy firmware and a bundle onto a board (raw REPL)")
    s.add_argument("--port", required=True, help="the board's serial port, e.g. /dev/ttyUSB0")
    s.add_argument("--bundle", type=Path, help="config.json for the board (from `pair`)")
    s.add_argument(
        "--setting",
        action="append",
        metavar="KEY=VALUE",
        help="firmware setting for config.json, e.g. interval_s=30 (repeat)",
    )
    s.add_argument("--source", type=Path, help="firmware dir (default: the one installed)")
    s.add_argument(
        "--sources",
        action="store_true",
        help="copy lib/ as .py sources instead of .mpy compiled for the board's MicroPython",
    )
    s.add_argument("--no-reset", action="store_true", help="do not soft-reset afterwards")
    s.set_defaults(fn=cmd_firmware_deploy)
    u = fsub.add_parser(
        "update",
        parents=[config],
        help="send new firmware files to a device over the air (through the running agent)",
    )
    u.add_argument("device_id")
    u.add_argument(
        "--source", type=Path, required=True, help="the files, as on the board (main.py, lib/...)"
    )
    u.add_argument(
        "--version",
        dest="fw_version",
        help="the version it reports (default: VERSION in SOURCE/lib/edgence/__init__.py)",
    )
    u.add_argument("--wait", action="store_true", help="wait until it confirms or rolls back")
    u.add_argument("--timeout", type=float, default=300, help="--wait at most this long (s)")
    u.add_argument("--boots", type=int, default=3, help="boots to confirm in, else roll back")
    u.add_argument("--block-size", type=int, default=240, help="bytes per block (16-240)")
    u.set_defaults(fn=cmd_firmware_update)
    st = fsub.add_parser(
        "status", parents=[config], help="a device's firmware version and update state"
    )
    st.add_argument("device_id")
    st.add_argument("--ttl", type=float, default=60, help="wait this long for the device (s)")
    st.set_defaults(fn=cmd_firmware_status)
