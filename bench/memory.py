"""Memory per configuration: the agent's peak RSS while it takes 1,000 MQTT readings/s, and
which optional parts it imported, for three configurations of one build.

    python -m bench.memory [--seconds 20] [--rate 1000] [--write]

Configurations: *MQTT only* (MQTT source, bridge, metrics endpoint: a default install),
*all sources* (MQTT, CoAP and a serial port on a pty; BLE needs a Bluetooth adapter, which this
machine has not), *all chain features* (MQTT plus [chain] on anvil, forwarding over MQTT 5 and
CoAP, the oracle over MQTT 5 and CoAP). The agent runs as a child process with `python -X
importtime`, so its log lists every module it imported; RSS = VmHWM (peak resident set, shared
libraries' resident pages included), read at the end of the load.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import pty
import signal
import sys
import tempfile
import time
from pathlib import Path

from agent.attest.keys import GatewayKey, write_key_file
from agent.chainclient.anvil import LocalAnvil
from agent.localbroker import LocalMosquitto, free_port
from bench.agentproc import spawn_agent, wait_ready
from bench.ingest import DEVICES, collector, peak_rss_mb, publisher
from bench.results import write_section

# Top-level packages (and agent modules) that only some configurations need.
OPTIONAL = (
    "aiocoap",
    "serial",
    "bleak",
    "aiohttp",
    "tinydb",
    "eth_account",
    "eth_abi",
    "agent.devices.coap",
    "agent.devices.serial",
    "agent.devices.ble",
    "agent.chainclient",
    "agent.oracle",
    "agent.election",
    "agent.masternode",
    "agent.cli.rawrepl",
    "agent.cli.probes",
)


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
    mods = set()
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("import time:") and "|" in line:
            mods.add(line.rsplit("|", 1)[1].strip())
    return sorted(o for o in OPTIONAL if any(m == o or m.startswith(o + ".") for m in mods))


def measure(kind: str, seconds: float, rate: float, work: Path) -> tuple[float, float, list[str]]:
    ctx = mp.get_context("spawn")
    n = int(seconds * rate)
    anvil: LocalAnvil | None = None
    master = -1
    extra: dict[str, str] = {}
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
            proc = spawn_agent(d / "agent.toml", d / "agent.log", ("-X", "importtime"))
            wait_ready(proc, d / "agent.log", 60)
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
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
            return rss, len(got) / n, imported(d / "agent.log")
        finally:
            if anvil is not None:
                anvil.stop()
            if master >= 0:
                os.close(master)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    rows = [
        "| configuration | peak RSS MB | readings delivered | optional modules imported "
        "| load (1 min) |",
        "|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory(prefix="edgence-memory-") as tmp:
        for i, kind in enumerate(("MQTT only", "all sources", "all chain features")):
            rss, share, mods = measure(kind, args.seconds, args.rate, Path(tmp) / str(i))
            rows.append(
                f"| {kind} | {rss:.1f} | {share:.0%} | {', '.join(mods) or 'none'} "
                f"| {os.getloadavg()[0]:.1f} |"
            )
            print(rows[-1], file=sys.stderr)
    text = "\n".join(rows)
    print(text)
    if args.write:
        note = (
            f"\n{args.rate:.0f} readings/s for {args.seconds:g} s (8 devices, QoS 1, one value "
            "per frame) into each configuration of the same build; RSS = VmHWM of the agent "
            "process. Optional modules: of "
            + ", ".join(f"`{o}`" for o in OPTIONAL)
            + ", those the agent imported (from its `-X importtime` log). Target (issue 23): "
            "<= 40 MB for MQTT only.\n"
        )
        write_section(
            "memory",
            f"python -m bench.memory --seconds {args.seconds:g} --rate {args.rate:.0f} --write",
            text + "\n" + note,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
