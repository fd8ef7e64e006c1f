"""`edgence-agent doctor`: checks a gateway's setup and says how to fix each problem.

Each check returns one Check (ok / warn / fail / skip, what was found, and for a warning or a
failure the command or setting that fixes it). Only `fail` makes the exit code non-zero. The
checks run on the typed config (agent.config); they do real I/O (MQTT CONNECT, a JSON-RPC
POST, statvfs, sysfs), and parameters let tests point them elsewhere.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.cli.checks import (
    Check,
    check_allowlist,
    check_bluetooth,
    check_clock,
    check_config,
    check_data_dir,
    check_journal_disk,
    check_key,
    check_listeners,
    check_secrets,
    check_serial,
    check_service,
)
from agent.cli.options import find_config
from agent.cli.probes import check_agent, check_broker, check_chain, probe_mqtt
from agent.errors import ConfigError


@dataclass
class DoctorOptions:
    config: Path
    chain_url: str | None = None
    sysfs: Path = Path("/sys")
    timeout: float = 3.0
    clock: Callable[[], float] = time.time
    check_agent: bool = True


def _guarded(name: str, check: Callable[..., Check], *args: Any) -> Check:
    """One check's result; a check that raises (a bug, or something this machine does that
    nobody foresaw) is a failed line naming the exception, and the other checks still run."""
    try:
        return check(*args)
    except Exception as exc:  # doctor reports every check, whatever happens
        return Check(
            name,
            "fail",
            f"the check itself failed: {type(exc).__name__}: {exc}",
            "report this with the output of `edgence-agent doctor --json`",
        )


def run_checks(opts: DoctorOptions) -> list[Check]:
    first, cfg = check_config(opts.config)
    out = [first]
    if cfg is not None:
        out += [
            _guarded("key", check_key, cfg),
            _guarded("secrets", check_secrets, cfg),
            _guarded("allowlist", check_allowlist, cfg),
            _guarded("data", check_data_dir, cfg),
            _guarded("disk", check_journal_disk, cfg),
            _guarded(
                "local",
                check_broker,
                "local",
                "sources.mqtt",
                cfg.sources.mqtt.broker,
                cfg.sources.mqtt.enabled,
                opts.timeout,
            ),
            _guarded(
                "upstream",
                check_broker,
                "upstream",
                "bridge",
                cfg.bridge.broker,
                cfg.bridge.enabled,
                opts.timeout,
            ),
            _guarded("chain", check_chain, cfg, opts.chain_url, opts.timeout),
            _guarded("bluetooth", check_bluetooth, cfg, opts.sysfs),
            _guarded("serial", check_serial, cfg),
            _guarded("listen", check_listeners, cfg),
            _guarded("service", check_service, cfg),
        ]
    elif opts.chain_url:
        out.append(_guarded("chain", check_chain, None, opts.chain_url, opts.timeout))
    out.append(_guarded("clock", check_clock, cfg, opts.clock))
    if cfg is not None and opts.check_agent:
        out.append(_guarded("agent", check_agent, cfg, opts.timeout))
    return out


def report(checks: list[Check], as_json: bool = False) -> str:
    if as_json:
        return json.dumps([asdict(c) for c in checks], indent=1)
    return "\n".join(c.line() for c in checks)


def exit_code(checks: list[Check]) -> int:
    return 1 if any(c.status == "fail" for c in checks) else 0


def cmd_doctor(args: argparse.Namespace) -> int:
    try:
        path, _ = find_config(args)
    except ConfigError as exc:
        checks = [Check("config", "fail", exc.description, exc.fix)]
    else:
        checks = run_checks(
            DoctorOptions(config=path, chain_url=args.chain_url, timeout=args.timeout)
        )
    print(report(checks, as_json=args.json))
    return exit_code(checks)


def add_parsers(sub: Any, config: argparse.ArgumentParser) -> None:
    s = sub.add_parser(
        "doctor",
        parents=[config],
        help="check this gateway's setup; one line per check with a fix",
    )
    s.add_argument("--chain-url", help="full node JSON-RPC URL (default: [chain] rpc_url)")
    s.add_argument("--timeout", type=float, default=3.0, help="seconds per network check")
    s.add_argument("--json", action="store_true", help="the checks as JSON")
    s.set_defaults(fn=cmd_doctor)


__all__ = ["Check", "DoctorOptions", "exit_code", "probe_mqtt", "report", "run_checks"]
