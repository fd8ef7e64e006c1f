"""Catch-up benchmark: an upstream outage leaves a backlog of N signed observations in the
journal; the upstream broker returns while live readings keep arriving at a fixed rate. How
fast the agent (`edgence-agent run`, a child process) drains the backlog, and what the live
readings see meanwhile.

    python -m bench.catchup [--backlog 1000000] [--rate 1000] [--batched] [--write]

The backlog is written into the agent's journal before it starts, by the agent's own Journal
and ObservationSigner (the state an outage of that length leaves behind, without spending the
shared machine's CPU on hours of ingest). Then: the upstream broker is down, the agent starts,
live readings (8 devices `live-*`, QoS 1, one Python publisher) flow for `--outage` seconds
into the journal, the upstream broker comes back (Mosquitto with persistence: the collector's
session and subscription survive the outage), and the collector (a paho subscriber, QoS 1)
records every observation's gateway sequence and arrival time until all have arrived.

Live latency is reported twice: *accepted* = publish to the journal row's `created_at` (the
agent signed and committed it: read back from the journal after the run), and *upstream* =
publish to arrival at the collector (the bridge delivers in sequence order, so a live reading
waits behind the backlog: that figure is the drain time, by design).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import re
import shutil
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from array import array
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from agent.attest.feeds import FeedMap
from agent.attest.keys import GatewayKey, write_key_file
from agent.attest.observation import ObservationSigner
from agent.config import load_config
from agent.devices.codecs.frame import encode_frame
from agent.journal import Journal
from agent.localbroker import LocalMosquitto, free_port
from agent.model import AuthMethod, Observation, Reading, Transport
from agent.wiring import domain_of
from bench.agentproc import cpu_seconds, spawn_agent, wait_ready
from bench.results import write_section

LIVE_DEVICES = 8
# One match per envelope, also inside a batch: anchored on the message block's fixed start.
_ENTRY = re.compile(
    rb'"message":\{"feed":"0x[0-9a-f]+","deviceId":"0x[0-9a-f]+","sensor":"0x[0-9a-f]+",'
    rb'"value":"(-?\d+)".*?"gatewaySequence":(\d+).*?"reading":\{"device":"([^"]+)"'
)


def build_backlog(config: Path, n: int) -> float:
    """n observations of 8 backlog devices signed and journaled as the agent would; seconds."""
    cfg = load_config(config)
    from agent.attest.keys import load_key_file

    key = load_key_file(cfg.gateway.key_file, None)
    signer = ObservationSigner(key, domain_of(cfg), FeedMap(dict(cfg.gateway.feeds)))
    now = int(time.time())

    async def fill() -> None:
        async with Journal(
            cfg.journal.path, sinks=["bridge"], max_bytes=cfg.journal.max_bytes
        ) as j:
            done = 0
            while done < n:
                k = min(2000, n - done)
                base = done

                def make(seqs: range, base: int = base) -> list[Observation]:
                    out = []
                    for i, s in enumerate(seqs):
                        idx = base + i
                        r = Reading(
                            f"back-{idx % 8}",
                            "t",
                            idx,
                            -2,
                            "Cel",
                            now,
                            idx // 8 + 1,
                            Transport.MQTT,
                            AuthMethod.ALLOWLIST,
                        )
                        out.append(signer.sign(r, s))
                    return out

                await j.append_with(k, make)
                done += k

    t0 = time.monotonic()
    asyncio.run(fill())
    return time.monotonic() - t0


def collector(port: int, out: Connection, stop: Any) -> None:
    """Persistent-session QoS 1 subscriber: (arrival ns, sequence, live value or -1) per
    observation, sent back when `stop` is set."""
    arrivals, seqs, values = array("q"), array("q"), array("q")
    subscribed = threading.Event()

    def on_message(client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        t = time.time_ns()
        for m in _ENTRY.finditer(msg.payload):
            arrivals.append(t)
            seqs.append(int(m.group(2)))
            values.append(int(m.group(1)) if m.group(3).startswith(b"live-") else -1)

    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="catchup-collector", clean_session=False)
    c.on_message = on_message
    c.on_subscribe = lambda *a: subscribed.set()
    c.reconnect_delay_set(1, 1)
    c.connect("127.0.0.1", port, 30)
    c.subscribe([("edgence/+/obs/#", 1), ("edgence/+/obs-batch", 1)])
    c.loop_start()
    subscribed.wait(10)
    out.send("subscribed")
    while not stop.wait(0.1):
        if out.poll() and out.recv() == "count?":
            out.send(len(seqs))
    c.loop_stop()
    out.send((arrivals.tobytes(), seqs.tobytes(), values.tobytes()))


def publisher(port: int, rate: float, stop: Any, out: Connection) -> None:
    """Live frames at `rate`/s, round-robin over LIVE_DEVICES, value = index; wall-clock send
    times sent back at the end."""
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="catchup-live")
    c.max_inflight_messages_set(1000)
    c.connect("127.0.0.1", port, 60)
    c.loop_start()
    sent = array("q")
    ts = int(time.time())
    t0 = time.monotonic()
    i = 0
    while not stop.is_set():
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        frame = encode_frame(i // LIVE_DEVICES + 1, [("t", i, 0, "Cel")], timestamp=ts)
        sent.append(time.time_ns())
        c.publish(f"devices/live-{i % LIVE_DEVICES}/up", frame, qos=1)
        i += 1
    time.sleep(0.5)
    c.loop_stop()
    out.send(sent.tobytes())


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def run(
    backlog: int, rate: float, outage: float, batched: bool, work: Path, seed: Path
) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    local = LocalMosquitto(work, name="local")
    upstream = LocalMosquitto(work, name="upstream", persistence=True)
    local.start()
    upstream.start()
    stop_col, stop_pub = ctx.Event(), ctx.Event()
    cpa, cpb = ctx.Pipe()
    col = ctx.Process(target=collector, args=(upstream.port, cpb, stop_col), daemon=True)
    col.start()
    assert cpa.recv() == "subscribed"
    upstream.stop()  # the outage begins; the collector's session is persisted
    d = work / "agent"
    shutil.copytree(seed, d)  # the gateway key and the journal with its backlog
    live = ", ".join(f'"live-{i}"' for i in range(LIVE_DEVICES))
    (d / "agent.toml").write_text(
        f'[gateway]\nkey_file = "gateway.key"\n[sources.mqtt]\nurl = "{local.url}"\n'
        f'allowed_devices = [{live}]\n[bridge]\nurl = "{upstream.url}"\n'
        + ("envelopes_per_message = 32\n" if batched else "")
        + '[journal]\nmax_bytes = "8 GiB"\n[log]\nlevel = "info"\n'
        # 125 readings/s per live device: above the default per-device limit
        + "[enrollment]\nrate = 100000\nburst = 1000000\n"
        + f'[metrics]\nlisten = "127.0.0.1:{free_port()}"\n'
    )
    build_s = float((seed / "build_s").read_text())
    journal = d / "data" / "journal.sqlite"
    disk = sum(p.stat().st_size for p in journal.parent.glob("journal.sqlite*"))
    print(
        f"  backlog of {backlog:,} built in {build_s:.0f} s, {disk / backlog:.0f} B/obs",
        file=sys.stderr,
    )
    proc = spawn_agent(d / "agent.toml", d / "agent.log")
    wait_ready(proc, d / "agent.log", 60)
    ppa, ppb = ctx.Pipe()
    pub = ctx.Process(target=publisher, args=(local.port, rate, stop_pub, ppb), daemon=True)
    pub.start()
    time.sleep(outage)
    cpu0 = cpu_seconds(proc.pid)
    load0 = os.getloadavg()[0]
    t_return = time.time_ns()
    upstream.start()  # the upstream returns
    target = backlog + int(rate * outage)  # about what was journaled before the return
    last_count, last_change = -1, time.monotonic()
    while True:
        time.sleep(0.5)
        cpa.send("count?")
        count = cpa.recv()
        if count != last_count:
            last_count, last_change = count, time.monotonic()
        if count >= target:
            time.sleep(3)  # live readings a little past the drain
            break
        if time.monotonic() - last_change > 30:
            break  # stuck: the analysis reports what is missing
    stop_pub.set()
    sent = array("q")
    sent.frombytes(ppa.recv())
    pub.join(10)
    last_count, last_change = -1, time.monotonic()
    while time.monotonic() - last_change < 15:  # the rest of the live readings through
        time.sleep(0.5)
        cpa.send("count?")
        count = cpa.recv()
        if count >= backlog + len(sent):
            break
        if count != last_count:
            last_count, last_change = count, time.monotonic()
    cpu = cpu_seconds(proc.pid) - cpu0
    load1 = os.getloadavg()[0]
    stop_col.set()
    raw = cpa.recv()
    col.join(10)
    rss = _peak_rss_mb(proc.pid)
    proc.send_signal(signal.SIGTERM)
    proc.wait(20)
    local.stop()
    upstream.stop()
    arrivals, seqs, values = array("q"), array("q"), array("q")
    arrivals.frombytes(raw[0])
    seqs.frombytes(raw[1])
    values.frombytes(raw[2])
    # accepted latency: journal created_at of each live reading (its value = send index)
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    created = {}
    for seq, created_at in db.execute(
        "SELECT seq, created_at FROM entries WHERE seq > ?", (backlog,)
    ):
        created[seq] = created_at
    db.close()
    return {
        "backlog": backlog,
        "build_s": build_s,
        "disk_per_obs": disk / backlog,
        "t_return": t_return,
        "arrivals": arrivals,
        "seqs": seqs,
        "values": values,
        "sent": sent,
        "created": created,
        "cpu_s": cpu,
        "load": (load0, load1),
        "rss": rss,
        "batched": batched,
    }


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def analyse(r: dict[str, Any]) -> dict[str, Any]:
    arrivals, seqs, values, sent = r["arrivals"], r["seqs"], r["values"], r["sent"]
    t_return = r["t_return"]
    live_before = sum(1 for s in sent if s < t_return)
    # Everything journaled before the upstream returned: the backlog plus the live readings of
    # the outage (their sequences follow the backlog's).
    s_return = r["backlog"] + live_before
    distinct = set(seqs)
    got_live = {v for v in values if v >= 0}
    missing = sum(1 for s in range(1, r["backlog"] + 1) if s not in distinct)
    missing += sum(1 for v in range(len(sent)) if v not in got_live)
    duplicates = len(seqs) - len(distinct)
    in_order = all(seqs[i] < seqs[i + 1] for i in range(len(seqs) - 1) if seqs[i] != seqs[i + 1])
    first = arrivals[0] if arrivals else t_return
    empty_at = max((a for a, s in zip(arrivals, seqs, strict=True) if s <= s_return), default=first)
    drain_s = (empty_at - first) / 1e9
    live_up_during, live_during = [], []
    created = r["created"]
    for a, s, v in zip(arrivals, seqs, values, strict=True):
        if v < 0 or v >= len(sent):
            continue
        if t_return <= sent[v] <= empty_at and s in created:
            live_during.append((created[s] * 1e9 - sent[v]) / 1e6)
            live_up_during.append((a - sent[v]) / 1e6)
    return {
        "s_return": s_return,
        "received": len(distinct),
        "expected": r["backlog"] + len(sent),
        "missing": missing,
        "duplicates": duplicates,
        "in_order": in_order,
        "reconnect_s": (first - t_return) / 1e9,
        "drain_s": drain_s,
        "drain_rate": s_return / drain_s if drain_s > 0 else float("nan"),
        "empty_s": (empty_at - t_return) / 1e9,
        "accepted_p50": pct(live_during, 0.5),
        "accepted_p99": pct(live_during, 0.99),
        "upstream_p99_during": pct(live_up_during, 0.99),
        "live_during": len(live_during),
        "cpu_us": r["cpu_s"] / max(1, len(distinct)) * 1e6,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backlog", type=int, default=1_000_000)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--outage", type=float, default=5.0, help="seconds of live readings first")
    ap.add_argument("--modes", default="single,batched", help="single, batched or both")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgence-catchup-") as tmp:
        seed = Path(tmp) / "seed"
        seed.mkdir()
        write_key_file(seed / "gateway.key", GatewayKey.generate())
        (seed / "agent.toml").write_text(
            '[gateway]\nkey_file = "gateway.key"\n[journal]\nmax_bytes = "8 GiB"\n'
        )
        build_s = build_backlog(seed / "agent.toml", args.backlog)
        (seed / "build_s").write_text(f"{build_s:.3f}")
        (seed / "agent.toml").unlink()
        for mode in args.modes.split(","):
            r = run(args.backlog, args.rate, args.outage, mode == "batched", Path(tmp) / mode, seed)
            a = analyse(r)
            print(f"  {mode}: {a}", file=sys.stderr)
            rows.append((mode, r, a))
    names = {"single": "one envelope per message", "batched": "envelopes_per_message = 32"}
    table = [
        "| bridge | backlog | journaled before return | drain /s | time to empty s | reconnect s "
        "| agent CPU µs per delivered obs (live intake included) "
        "| live accepted p50 / p99 ms during drain | live upstream p99 ms during drain "
        "| received / expected | missing | duplicates | in order | journal "
        "B/obs | agent peak RSS MB | load (1 min) before / after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, r, a in rows:
        table.append(
            f"| {names[mode]} | {r['backlog']:,} | {a['s_return']:,} | {a['drain_rate']:,.0f} | "
            f"{a['empty_s']:.1f} | {a['reconnect_s']:.1f} | {a['cpu_us']:.0f} | "
            f"{a['accepted_p50']:.1f} / {a['accepted_p99']:.1f} | "
            f"{a['upstream_p99_during']:,.0f} | "
            f"{a['received']:,} / {a['expected']:,} | {a['missing']} | {a['duplicates']} | "
            f"{'yes' if a['in_order'] else '**no**'} | {r['disk_per_obs']:.0f} | {r['rss']:.0f} | "
            f"{r['load'][0]:.1f} / {r['load'][1]:.1f} |"
        )
    text = "\n".join(table)
    print(text)
    if args.write:
        write_section(
            "catchup",
            f"python -m bench.catchup --backlog {args.backlog} --rate {args.rate:.0f} "
            f"--outage {args.outage:g} --modes {args.modes} --write",
            text + "\n",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
