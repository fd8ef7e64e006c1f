"""Memory per configuration: the agent's peak RSS while it takes 1,000 MQTT readings/s, and
which optional parts it imported, for several configurations of one build.

    python -m bench.memory [--seconds 20] [--rate 1000] [--repeat 3] [--write]
    python -m bench.memory --steps REV,REV,... [--repeat 3]    # MQTT only, per commit

Configurations: *MQTT only* (MQTT source, bridge, metrics endpoint: a default install, on uvloop
as scripts/install sets it up on x86_64 and aarch64), the same on asyncio's own event loop (a
plain `pip install` without the `fast` extra), *all sources* (MQTT, CoAP and a serial port on a
pty; BLE needs a Bluetooth adapter, which this machine has not), *all chain features* (MQTT plus
[chain] on anvil, forwarding over MQTT 5 and CoAP, the oracle over MQTT 5 and CoAP). The agent
runs as a child process with `python -X importtime`, so its log lists every module it imported;
RSS = VmHWM (peak resident set, shared libraries' resident pages included), read at the end of
the load; "at ready" = VmRSS when it logs `event=ready`. The floor table imports only the
libraries every configuration needs, in a fresh interpreter, and reads VmRSS.

`--steps` measures the MQTT-only configuration of each listed commit (its tree exported with
`git archive`), runs interleaved: what each change bought.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import pty
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from agent.attest.keys import GatewayKey, write_key_file
from agent.chainclient.anvil import LocalAnvil
from agent.localbroker import LocalMosquitto, free_port
from bench.agentproc import spawn_agent, wait_ready
from bench.ingest import DEVICES, collector, peak_rss_mb, publisher
from bench.results import write_section

ROOT = Path(__file__).resolve().parents[1]

# Top-level packages (and agent modules) that only some configurations need.
OPTIONAL = (
    "aiocoap",
    "serial",
    "bleak",
    "bumble",
    "pymodbus",
    "aiohttp",
    "tinydb",
    "eth_account",
    "eth_abi",
    "web3",
    "cffi",
    "pycparser",
    "prometheus_client",
    "agent.devices.coap",
    "agent.devices.serial",
    "agent.devices.ble",
    "agent.devices.modbus",
    "agent.chainclient",
    "agent.oracle",
    "agent.election",
    "agent.masternode",
    "agent.downlink",
    "agent.cli.rawrepl",
    "agent.cli.probes",
    "agent.cli.devices",
)

CONFIGS = ("MQTT only", "MQTT only (asyncio event loop)", "all sources", "all chain features")

# The libraries every configuration imports, cumulatively: (row, statements).
FLOOR = (
    ("interpreter (site, no imports)", ""),
    ("+ asyncio, ssl, paho-mqtt, sqlite3", "import asyncio, ssl, sqlite3, paho.mqtt.client"),
    (
        "+ coincurve, pycryptodome's Keccak (ctypes), decimal, dataclasses, tomllib, logging, "
        "argparse",
        "import coincurve, ctypes, decimal, dataclasses, tomllib, logging, argparse; "
        "from agent.attest.eip712 import keccak256",
    ),
    ("+ uvloop", "import uvloop"),
)


@dataclass
class Run:
    peak: float  # MB, VmHWM
    ready: float  # MB, VmRSS at event=ready
    threads: int
    delivered: float  # share of the readings that arrived upstream
    modules: list[str]


def config(
    kind: str, local: LocalMosquitto, upstream: LocalMosquitto, extra: dict[str, str]
) -> str:
    devices = ", ".join(f'"dev-{i}"' for i in range(DEVICES))
    text = (
        f'[gateway]\nkey_file = "gateway.key"\n[sources.mqtt]\nurl = "{local.url}"\n'
        f'allowed_devices = [{devices}]\n[bridge]\nurl = "{upstream.url}"\n'
        f'[log]\nlevel = "info"\n[metrics]\nlisten = "127.0.0.1:{free_port()}"\n'
        "[enrollment]\nrate = 100000\nburst = 1000000\n"  # 125 readings/s per device
    )
    if kind == "all sources":
        text += (
            f'[sources.coap]\nenabled = true\nbind = "127.0.0.1"\nport = {free_port()}\n'
            "[[sources.serial.ports]]\n"
            f'path = "{extra["pty"]}"\ndevice = "serial-1"\n'
        )
    if kind == "all chain features":
        text += (
            f'[chain]\nrpc_url = "{extra["rpc"]}"\n'
            "[forward]\nenabled = true\n"
            f'[forward.coap]\nenabled = true\nbind = "127.0.0.1:{free_port()}"\n'
            "[oracle]\nenabled = true\n"
            f'[oracle.coap]\nenabled = true\nbind = "127.0.0.1:{free_port()}"\n'
        )
    return text


def imported(log: Path) -> list[str]:
    """The OPTIONAL modules in an `-X importtime` log."""
    mods = set()
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("import time:") and "|" in line:
            mods.add(line.rsplit("|", 1)[1].strip())
    return sorted(o for o in OPTIONAL if any(m == o or m.startswith(o + ".") for m in mods))


def _status(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1])
    return float("nan")


def measure(kind: str, seconds: float, rate: float, work: Path, source: Path | None = None) -> Run:
    ctx = mp.get_context("spawn")
    n = int(seconds * rate)
    anvil: LocalAnvil | None = None
    master = -1
    extra: dict[str, str] = {}
    env = {"EDGENCE_EVENT_LOOP": "asyncio"} if "asyncio" in kind else None
    with (
        LocalMosquitto(work, name="local") as local,
        LocalMosquitto(work, name="upstream") as upstream,
    ):
        try:
            if kind == "all sources":
                master, slave = pty.openpty()
                extra["pty"] = os.ttyname(slave)
            if kind == "all chain features":
                anvil = LocalAnvil(work / "anvil")
                anvil.start()
                extra["rpc"] = anvil.url
            d = work / "agent"
            d.mkdir()
            write_key_file(d / "gateway.key", GatewayKey.generate())
            (d / "agent.toml").write_text(config(kind, local, upstream, extra))
            proc = spawn_agent(d / "agent.toml", d / "agent.log", ("-X", "importtime"), source, env)
            wait_ready(proc, d / "agent.log", 60)
            ready = _status(proc.pid, "VmRSS") / 1024
            cpa, cpb = ctx.Pipe()
            col = ctx.Process(
                target=collector, args=(upstream.port, n, "edgence/+/obs/#", cpb), daemon=True
            )
            col.start()
            cpa.recv()
            ppa, ppb = ctx.Pipe()
            pub = ctx.Process(target=publisher, args=(local.port, n, rate, ppb, False))
            pub.start()
            time.sleep(0.5)
            ppa.send("go")
            ppa.recv()
            got = cpa.recv()
            pub.join(10)
            col.join(10)
            rss = peak_rss_mb(proc.pid)
            threads = int(_status(proc.pid, "Threads"))
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
            return Run(rss, ready, threads, len(got) / n, imported(d / "agent.log"))
        finally:
            if anvil is not None:
                anvil.stop()
            if master >= 0:
                os.close(master)


_PRINT_RSS = (
    "print(next(int(x.split()[1]) for x in open('/proc/self/status') if x.startswith('VmRSS:')))"
)


def floor() -> list[tuple[str, float]]:
    """VmRSS (MB) of a fresh interpreter after each cumulative FLOOR step."""
    rows = []
    statements: list[str] = []
    for name, stmt in FLOOR:
        if stmt:
            statements.append(stmt)
        code = "; ".join([*statements, _PRINT_RSS])
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
        )
        rows.append((name, int(out.stdout.strip()) / 1024))
    return rows


def export_tree(rev: str, into: Path) -> str:
    """`git archive` of rev into `into`; returns its one-line summary."""
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", rev], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return subprocess.run(
        ["git", "log", "-1", "--format=%h %s", rev],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def steps(revs: list[str], seconds: float, rate: float, repeat: int, tmp: Path) -> str:
    trees = {rev: tmp / f"tree-{i}" for i, rev in enumerate(revs)}
    subjects = {rev: export_tree(rev, tree) for rev, tree in trees.items()}
    runs: dict[str, list[Run]] = {rev: [] for rev in revs}
    for r in range(repeat):
        for rev in revs:
            run = measure("MQTT only", seconds, rate, tmp / f"run-{r}-{rev}", trees[rev])
            runs[rev].append(run)
            print(f"  {subjects[rev][:60]}: {run}", file=sys.stderr)
    rows = [
        "| commit | peak RSS MB (median) | runs | RSS at ready MB (median) | readings delivered |",
        "|---|---|---|---|---|",
    ]
    for rev in revs:
        rs = runs[rev]
        subject = subjects[rev].replace("|", "/")
        rows.append(
            f"| {subject[:110]} | {statistics.median(x.peak for x in rs):.1f} "
            f"| {', '.join(f'{x.peak:.1f}' for x in rs)} "
            f"| {statistics.median(x.ready for x in rs):.1f} "
            f"| {min(x.delivered for x in rs):.0%} |"
        )
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--repeat", type=int, default=1, help="runs per configuration (median)")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset")
    ap.add_argument("--steps", help="commits to compare (MQTT only), comma-separated")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgence-memory-") as tmp:
        if args.steps:
            text = steps(args.steps.split(","), args.seconds, args.rate, args.repeat, Path(tmp))
            print(text)
            return 0
        kinds = [k for k in CONFIGS if k in args.configs.split(",")]
        runs: dict[str, list[Run]] = {k: [] for k in kinds}
        loads: dict[str, list[float]] = {k: [] for k in kinds}
        for r in range(args.repeat):
            for i, kind in enumerate(kinds):
                run = measure(kind, args.seconds, args.rate, Path(tmp) / f"{r}-{i}")
                runs[kind].append(run)
                loads[kind].append(os.getloadavg()[0])
                print(f"  {kind}: {run}", file=sys.stderr)
        base = floor()
    rows = [
        "| configuration | peak RSS MB (median) | runs | RSS at ready MB | threads "
        "| readings delivered | optional modules imported | load (1 min) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind in kinds:
        rs = runs[kind]
        mods = sorted({m for x in rs for m in x.modules})
        rows.append(
            f"| {kind} | {statistics.median(x.peak for x in rs):.1f} "
            f"| {', '.join(f'{x.peak:.1f}' for x in rs)} "
            f"| {statistics.median(x.ready for x in rs):.1f} | {max(x.threads for x in rs)} "
            f"| {min(x.delivered for x in rs):.0%} | {', '.join(mods) or 'none'} "
            f"| {', '.join(f'{x:.1f}' for x in loads[kind])} |"
        )
    rows += ["", "| floor: a fresh interpreter that imports | RSS MB |", "|---|---|"]
    rows += [f"| {name} | {mb:.1f} |" for name, mb in base]
    text = "\n".join(rows)
    print(text)
    if args.write:
        note = (
            f"\n{args.rate:.0f} readings/s for {args.seconds:g} s (8 devices, QoS 1, one value "
            f"per frame) into each configuration of the same build, {args.repeat} interleaved "
            "run(s) each; RSS = VmHWM of the agent process. Optional modules: of "
            + ", ".join(f"`{o}`" for o in OPTIONAL)
            + ", those the agent imported (from its `-X importtime` log). Target (issue 23): "
            "<= 40 MB for MQTT only.\n"
        )
        write_section(
            "memory",
            f"python -m bench.memory --seconds {args.seconds:g} --rate {args.rate:.0f} "
            f"--repeat {args.repeat} --write",
            text + "\n" + note,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
