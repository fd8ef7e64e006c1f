"""Ingest benchmark: N readings published to a local Mosquitto -> observations received on an
upstream Mosquitto, through the real agent (`edgence-agent run`, a child process), against a
bare paho relay (subscribe, republish unchanged) through the same two brokers, same run.

    python -m bench.ingest [--n 20000] [--rate 1000] [--write]
    python -m bench.ingest --only metrics [--repeat 5] [--write]

`--only metrics` compares the agent at maximum rate with its metrics endpoint turned off
against the agent with the endpoint on and scraped (/metrics and /health) every 0.5 s,
interleaved: what exporting costs the ingest path.

At the fixed rate a Python publisher stamps every frame and a Python collector stamps every
arrival (CLOCK_MONOTONIC, shared by all processes): latency p50/p99. At the maximum rate the
load comes from Mosquitto's own C clients (one `mosquitto_pub -l` per device, `mosquitto_sub`
stamping arrivals) so that the load generator does not eat the CPU the system under test needs:
throughput = N / (last arrival - start of publishing).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from agent.attest.keys import GatewayKey, write_key_file
from agent.devices.auth import encode_signed_frame
from agent.devices.codecs.frame import encode_frame
from agent.devices.registry import DeviceRegistry
from agent.localbroker import LocalMosquitto, free_port
from agent.model import Transport
from bench.agentproc import cpu_seconds, pin, spawn_agent, wait_ready
from bench.results import write_section

DEVICES = 8


def device_key(dev: int) -> bytes:
    """Deterministic per-device keys, so load generators and the registry agree."""
    return hashlib.sha256(b"edgence-bench-device-%d" % dev).digest()


# Frames carry the gateway's clock of this run: a `ts` outside pipeline.max_ts_age is refused.
BENCH_TS = int(time.time())


def bench_frame(i: int, signed: bool) -> bytes:
    """Frame i of the run: device i % DEVICES, value i (latency is matched by it)."""
    dev, counter = i % DEVICES, i // DEVICES + 1
    values = [("t", i, -2, "Cel")]
    if signed:
        return encode_signed_frame(
            device_key(dev), f"dev-{dev}", counter, values, timestamp=BENCH_TS
        )
    return encode_frame(counter, values, timestamp=BENCH_TS)


# `--base DIR`: "agent-base" and "agent-base-batched" run the agent package in DIR (an earlier
# commit's tree).
BASE_SOURCE: Path | None = None

# "agent-batched": the bridge's optional batched upstream envelope, on.
BATCHED_TOML = "envelopes_per_message = 32\n"

INFLIGHT = int(os.environ.get("BENCH_BROKER_INFLIGHT", "1000"))


def _client(client_id: str, port: int) -> paho.Client:
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    c.max_inflight_messages_set(1000)
    c.connect("127.0.0.1", port, 60)
    return c


def publisher(port: int, n: int, rate: float | None, out: Connection, signed: bool) -> None:
    """Publishes n frames (QoS 1) round-robin over DEVICES devices; sends back send times."""
    c = _client("bench-pub", port)
    c.loop_start()
    frames = [(f"devices/dev-{i % DEVICES}/up", bench_frame(i, signed)) for i in range(n)]
    out.recv()  # go
    sent = [0] * n
    t0 = time.monotonic()
    info = None
    for i, (topic, frame) in enumerate(frames):
        if rate:
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        sent[i] = time.monotonic_ns()
        info = c.publish(topic, frame, qos=1)
    if info is not None:
        info.wait_for_publish(60)
    out.send(sent)
    c.loop_stop()
    c.disconnect()


def collector(port: int, n: int, topic: str, out: Connection, idle: float = 5.0) -> None:
    """Subscribes upstream and records (receive time, payload) for n messages, or until
    nothing arrived for `idle` seconds."""
    got: list[tuple[int, bytes]] = []
    done = threading.Event()
    subscribed = threading.Event()

    def on_message(client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        got.append((time.monotonic_ns(), bytes(msg.payload)))
        if len(got) >= n:
            done.set()

    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-collector")
    c.on_message = on_message
    c.on_subscribe = lambda *a: subscribed.set()
    c.connect("127.0.0.1", port, 60)
    c.subscribe(topic, 1)
    c.loop_start()
    subscribed.wait(10)
    out.send("subscribed")
    last = -1
    while not done.wait(idle):  # stop when nothing arrived for `idle` seconds
        if len(got) == last:
            break
        last = len(got)
    c.loop_stop()
    c.disconnect()
    out.send(got)


def relay(local: int, upstream: int, ready: Connection) -> None:
    """The baseline: a bare paho relay, subscribe and republish unchanged, QoS 1."""
    pin()  # on the agent's core(s), when the run pins them
    pub = _client("bench-relay-pub", upstream)
    pub.loop_start()
    sub = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-relay-sub")

    def on_message(client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        pub.publish("relay/" + msg.topic, msg.payload, qos=1)

    sub.on_message = on_message
    sub.on_subscribe = lambda *a: ready.send("ready")
    sub.connect("127.0.0.1", local, 60)
    sub.subscribe("devices/+/up", 1)
    sub.loop_forever()


@dataclass
class Result:
    name: str
    rate: str
    n: int
    received: int
    throughput: float
    p50_ms: float
    p99_ms: float
    rss_mb: float | None = None
    ready_s: float | None = None
    stop_s: float | None = None
    cpu_us: float = float("nan")
    scrapes: int = 0
    load: float = float("nan")  # the machine's 1-minute load average at the end of the run


def _key_of(payload: bytes, kind: str) -> tuple[str, int]:
    d = json.loads(payload)
    if kind == "relay":
        return ("?", d["n"]), d["r"][0]["v"]  # type: ignore[return-value]
    m = d["message"]
    return ("?", m["deviceCounter"]), int(m["value"])  # type: ignore[return-value]


def flood_with_c_clients(
    local: LocalMosquitto,
    upstream: LocalMosquitto,
    n: int,
    topic: str,
    workdir: Path,
    signed: bool = False,
    count_token: bytes | None = None,
) -> tuple[int, list[int]]:
    """Publish n frames with one `mosquitto_pub -l` per device; return (start ns, arrival ns)
    as `mosquitto_sub` stamped them (wall clock with nanoseconds). On the batched topic each
    message's stamp counts once per envelope in it (`count_token`: the bytes that occur once
    per reading in a message that may carry several, for other gateways' formats)."""
    batched = topic.endswith("/obs-batch") or count_token is not None
    token = count_token or b'"signature"'
    workdir.mkdir(parents=True, exist_ok=True)
    files = []
    for dev in range(DEVICES):
        lines = [bench_frame(i, signed) for i in range(dev, n, DEVICES)]
        f = workdir / f"dev-{dev}.jsonl"
        f.write_bytes(b"\n".join(lines) + b"\n")
        files.append(f)
    out = workdir / "arrivals.txt"
    with open(out, "wb") as sink:
        sub = subprocess.Popen(
            [
                "mosquitto_sub",
                "-p",
                str(upstream.port),
                "-t",
                topic,
                "-q",
                "1",
                *(["-F", "%U %p"] if batched else ["-C", str(n), "-F", "%U"]),
                "-i",
                "bench-c-collector",
            ],
            stdout=sink,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)  # subscribed
        t0 = time.time_ns()
        pubs = []
        for dev, f in enumerate(files):
            with open(f, "rb") as src:
                pubs.append(
                    subprocess.Popen(
                        [
                            "mosquitto_pub",
                            "-p",
                            str(local.port),
                            "-t",
                            f"devices/dev-{dev}/up",
                            "-q",
                            "1",
                            "-l",
                            "-M",
                            "1000",
                            "-i",
                            f"bench-c-pub-{dev}",
                        ],
                        stdin=src,
                        stderr=subprocess.DEVNULL,
                    )
                )
        for p in pubs:
            p.wait(120)
        if batched:  # no message count to stop at: count envelopes until all n arrived
            seen, last_change, size = 0, time.monotonic(), 0
            while seen < n and time.monotonic() - last_change < 10:
                time.sleep(0.05)
                if out.stat().st_size != size:
                    size, last_change = out.stat().st_size, time.monotonic()
                    seen = out.read_bytes().count(token)
            sub.kill()
            sub.wait(10)
        try:
            sub.wait(60)
        except subprocess.TimeoutExpired:
            sub.kill()
    if batched:
        stamps = []
        for line in out.read_bytes().splitlines():
            stamp, _, payload = line.partition(b" ")
            if payload.endswith((b"]", b"}")):  # a message cut by the kill is not counted
                stamps += [int(stamp.replace(b".", b""))] * payload.count(token)
        return t0, stamps
    stamps = [int(line.replace(b".", b"")) for line in out.read_bytes().split() if line]
    return t0, stamps


class Scraper:
    """Fetches the agent's /metrics and /health every `every` seconds (a thread) while the load
    runs, as Prometheus and `edgence-agent status` would, only far more often."""

    def __init__(self, port: int, every: float = 0.5) -> None:
        self.port, self.every = port, every
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import urllib.request

        while not self._stop.wait(self.every):
            for path in ("/metrics", "/health"):
                url = f"http://127.0.0.1:{self.port}{path}"
                with urllib.request.urlopen(url, timeout=5) as resp:
                    resp.read()
            self.count += 1

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(10)
        return self.count


def measure(
    kind: str,
    n: int,
    rate: float | None,
    workdir: Path,
    sync: str = "normal",
    metrics: str = "on",
) -> Result:
    """One run (see `_measure`), with the machine's load average when it ended."""
    r = _measure(kind, n, rate, workdir, sync, metrics)
    r.load = os.getloadavg()[0]
    return r


def _measure(
    kind: str,
    n: int,
    rate: float | None,
    workdir: Path,
    sync: str = "normal",
    metrics: str = "on",
) -> Result:
    """kind: relay, agent (allowlisted devices) or agent-hmac (enrolled devices, signed frames).
    metrics: "on" (endpoint listening, nobody scraping: a default install), "off" or
    "scraped" (a Scraper polls it during the run)."""
    ctx = mp.get_context("spawn")
    signed = kind == "agent-hmac"
    with (
        LocalMosquitto(workdir / kind, name="local", max_inflight_messages=INFLIGHT) as local,
        LocalMosquitto(workdir / kind, name="upstream", max_inflight_messages=INFLIGHT) as upstream,
    ):
        proc: Any = None
        rss = ready_s = stop_s = None
        scraper: Scraper | None = None
        if kind == "relay":
            a, b = ctx.Pipe()
            proc = ctx.Process(target=relay, args=(local.port, upstream.port, b), daemon=True)
            proc.start()
            a.recv()
            topic = "relay/devices/#"
        else:
            port = free_port()
            extra = (
                "[metrics]\nenabled = false\n"
                if metrics == "off"
                else f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
            )
            proc, ready_s = start_agent(
                workdir / kind,
                local,
                upstream,
                sync,
                signed,
                extra,
                source=BASE_SOURCE if kind.startswith("agent-base") else None,
                bridge_toml=BATCHED_TOML if kind.endswith("batched") else "",
            )
            topic = "edgence/+/obs-batch" if kind.endswith("batched") else "edgence/+/obs/#"
            if metrics == "scraped":
                scraper = Scraper(port)
        cpu_before = cpu_seconds(proc.pid)
        profiler = _profile(proc.pid, workdir / kind)
        if rate is None:
            t0, stamps = flood_with_c_clients(
                local, upstream, n, topic, workdir / kind / "c", signed
            )
        else:
            cpa, cpb = ctx.Pipe()
            col = ctx.Process(target=collector, args=(upstream.port, n, topic, cpb), daemon=True)
            col.start()
            cpa.recv()
            ppa, ppb = ctx.Pipe()
            pub = ctx.Process(
                target=publisher, args=(local.port, n, rate, ppb, signed), daemon=True
            )
            pub.start()
            time.sleep(0.5)  # publisher connected and frames built
            ppa.send("go")
            sent: list[int] = ppa.recv()
            got: list[tuple[int, bytes]] = cpa.recv()
            pub.join(5)
            col.join(5)
        cpu_us = (cpu_seconds(proc.pid) - cpu_before) / n * 1e6
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(30)
        scrapes = scraper.stop() if scraper is not None else 0
        if kind != "relay":
            rss = peak_rss_mb(proc.pid)
            t_stop = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
            stop_s = time.monotonic() - t_stop
        else:
            proc.terminate()
    if rate is None:
        span = (max(stamps) - t0) / 1e9 if stamps else float("inf")
        return Result(
            kind,
            "max",
            n,
            len(stamps),
            len(stamps) / span,
            float("nan"),
            float("nan"),
            rss,
            ready_s,
            stop_s,
            cpu_us,
            scrapes,
        )
    # Each frame's value field is its index i: map receive to send time exactly.
    lat = []
    for t, payload in got:
        _, i = _key_of(payload, kind)
        lat.append((t - sent[i]) / 1e6)
    lat.sort()
    span = (got[-1][0] - sent[0]) / 1e9 if got else float("inf")
    return Result(
        kind,
        f"{rate:.0f}/s" if rate else "max",
        n,
        len(got),
        len(got) / span,
        statistics.median(lat) if lat else float("nan"),
        lat[int(0.99 * (len(lat) - 1))] if lat else float("nan"),
        rss,
        ready_s,
        stop_s,
        cpu_us,
        scrapes,
    )


def _profile(pid: int, d: Path) -> subprocess.Popen[bytes] | None:
    """`BENCH_PYSPY=DIR`: py-spy samples the system under test during the run (all threads,
    idle ones left out) and writes collapsed stacks to DIR/<kind>-<pid>.txt."""
    out = os.environ.get("BENCH_PYSPY")
    if not out:
        return None
    Path(out).mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--rate",
            "250",
            "--output",
            str(Path(out) / f"{d.name}-{pid}.txt"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def start_agent(
    d: Path,
    local: LocalMosquitto,
    upstream: LocalMosquitto,
    sync: str = "normal",
    enrolled: bool = False,
    metrics_toml: str = "",
    source: Path | None = None,
    bridge_toml: str = "",
) -> tuple[Any, float]:
    d.mkdir(parents=True, exist_ok=True)
    write_key_file(d / "gateway.key", GatewayKey.generate())
    devices = ", ".join(f'"dev-{i}"' for i in range(DEVICES))
    if enrolled:  # the devices are enrolled and send signed frames; none is allowlisted
        registry = DeviceRegistry(d / "data" / "devices")
        for i in range(DEVICES):
            registry.enroll(f"dev-{i}", transport=Transport.MQTT, key=device_key(i))
        registry.activate(f"dev-{i}" for i in range(DEVICES))
        devices = ""
    (d / "agent.toml").write_text(
        f'[gateway]\nkey_file = "gateway.key"\n[sources.mqtt]\nurl = "{local.url}"\n'
        f'allowed_devices = [{devices}]\n[bridge]\nurl = "{upstream.url}"\n{bridge_toml}'
        f'[journal]\nsynchronous = "{sync}"\n[log]\nlevel = "info"\n'
        "[enrollment]\nrate = 100000\nburst = 1000000\n"
        + metrics_toml
        + os.environ.get("BENCH_AGENT_EXTRA_TOML", "").replace("\\n", "\n")
    )
    log = d / "agent.log"
    t0 = time.monotonic()
    proc = spawn_agent(d / "agent.toml", log, source=source)
    wait_ready(proc, log, 20)
    return proc, time.monotonic() - t0


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _median_result(runs: list[Result]) -> tuple[Result, list[float]]:
    ordered = sorted(runs, key=lambda r: r.throughput)
    return ordered[len(ordered) // 2], [r.throughput for r in runs]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--rate", type=float, default=1000.0, help="the fixed offered rate")
    ap.add_argument("--repeat", type=int, default=3, help="runs per path and rate (median)")
    ap.add_argument("--write", action="store_true", help="write bench/RESULTS.md")
    ap.add_argument(
        "--only",
        choices=["fixed", "max", "metrics", "cost"],
        help="run one of the two load shapes, or the metrics-endpoint comparison",
    )
    ap.add_argument(
        "--auth",
        action="store_true",
        help="compare enrolled devices (HMAC-verified frames) with allowlisted ones, max rate",
    )
    ap.add_argument(
        "--base",
        type=Path,
        help="with --only cost: also run the agent package in this directory (before/after)",
    )
    args = ap.parse_args()
    if args.only == "cost":
        return cost_comparison(args.n, args.repeat, args.base, args.write)
    if args.auth:
        return compare_auth(args.n, args.repeat, args.write)
    if args.only == "metrics":
        return metrics_comparison(args.n, args.repeat, args.write)
    runs: dict[tuple[str, str], list[Result]] = {}
    plan: list[tuple[str, float | None, str]] = []
    if args.only in (None, "fixed"):
        for _ in range(args.repeat):  # latency swings from run to run on a shared machine
            plan += [("relay", args.rate, "normal"), ("agent", args.rate, "normal")]
    if args.only in (None, "max"):
        for _ in range(args.repeat):  # interleaved, so drift on the machine hits both alike
            plan += [("relay", None, "normal"), ("agent", None, "normal")]
        plan += [("agent", None, "full")]
    with tempfile.TemporaryDirectory(prefix="edgence-bench-") as tmp:
        for idx, (kind, rate, sync) in enumerate(plan):
            r = measure(kind, args.n, rate, Path(tmp) / f"{idx}-{kind}", sync)
            label = kind if sync == "normal" else f"{kind}-full"
            runs.setdefault((label, r.rate), []).append(r)
            print(
                f"  {label:<10} {r.rate:>7}: {r.received}/{r.n} in, {r.throughput:8.0f}/s  "
                f"cpu {r.cpu_us:5.0f} us/msg  "
                f"p50 {r.p50_ms:6.2f} ms  p99 {r.p99_ms:7.2f} ms",
                file=sys.stderr,
            )
    names = {
        "relay": "bare paho relay",
        "agent": "edgence-agent (synchronous=normal)",
        "agent-full": "edgence-agent (synchronous=full)",
    }
    table = [
        "| path | offered | received | throughput /s (median) | runs /s | ratio to relay "
        "| CPU µs per message (median) | p50 ms | p99 ms | agent peak RSS MB | agent ready s "
        "| agent stop s | load (1 min) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (label, offered), rs in runs.items():
        r, all_tp = _median_result(rs)
        base, _ = _median_result(runs[("relay", offered)])
        cpu = statistics.median(x.cpu_us for x in rs)
        p50 = statistics.median(x.p50_ms for x in rs)
        p99 = statistics.median(x.p99_ms for x in rs)
        lat = "| - | - " if offered == "max" else f"| {p50:.2f} | {p99:.2f} "
        rss = "" if r.rss_mb is None else f"{max(x.rss_mb or 0 for x in rs):.0f}"
        ready = "" if r.ready_s is None else f"{statistics.median(x.ready_s or 0 for x in rs):.2f}"
        stop = "" if r.stop_s is None else f"{max(x.stop_s or 0 for x in rs):.2f}"
        table.append(
            f"| {names[label]} | {offered} | {r.received}/{r.n} | {r.throughput:,.0f} | "
            f"{', '.join(f'{t:,.0f}' for t in all_tp)} | {r.throughput / base.throughput:.2f} "
            f"| {cpu:.0f} "
            f"{lat}| {rss} | {ready} | {stop} | {', '.join(f'{x.load:.1f}' for x in rs)} |"
        )
    fixed = [
        f"{names[label]}: " + ", ".join(f"{x.p50_ms:.2f} / {x.p99_ms:.2f}" for x in rs)
        for (label, offered), rs in runs.items()
        if offered != "max"
    ]
    text = "\n".join(table)
    print(text)
    if args.write:
        note = (
            "\nFixed rate, each run's p50 / p99 ms (the table shows the medians): "
            + "; ".join(fixed)
            + ".\n"
            "\nOne value per frame, 8 devices round-robin, QoS 1 end to end, 1,000 in-flight "
            "messages allowed by both brokers (the agent acknowledges a device message only after "
            "journaling it). Fixed rate: Python publisher and collector stamp every message "
            "(CLOCK_MONOTONIC shared by all processes) for latency. Max rate: load from "
            "`mosquitto_pub -l` (one per device) and `mosquitto_sub`, so that the load generator "
            "does not take the CPU from the system under test; relay and agent runs are "
            "interleaved and the median is shown. Agent ready = process spawn to its "
            "`event=ready` log line; CPU per message = user+system time of the agent or relay "
            "process (all threads) during the run / N, steadier than throughput on a shared "
            "machine; agent stop = SIGTERM right after the last reading arrived "
            "upstream to process exit (worst run); RSS = VmHWM (peak). Everything shares the "
            "2 cores.\n"
        )
        write_section(
            "ingest",
            f"python -m bench.ingest --n {args.n} --rate {args.rate:.0f} "
            f"--repeat {args.repeat} --write",
            text + "\n" + note,
        )
    return 0


def cost_comparison(n: int, repeat: int, base: Path | None, write: bool) -> int:
    """Agent CPU per observation at maximum rate with the system under test pinned to one core
    (BENCH_AGENT_CPUS, default CPU 1), against the bare relay on the same core, interleaved:
    optionally an earlier tree of the agent (`base`), and the batched upstream envelope."""
    global BASE_SOURCE
    os.environ.setdefault("BENCH_AGENT_CPUS", "1")
    BASE_SOURCE = base
    before = ["agent-base", "agent-base-batched"] if base else []
    kinds = ["relay", *before, "agent", "agent-batched"]
    runs: dict[str, list[Result]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory(prefix="edgence-bench-") as tmp:
        for rep in range(repeat):
            for kind in kinds:
                r = measure(kind, n, None, Path(tmp) / f"{rep}-{kind}")
                runs[kind].append(r)
                print(
                    f"  {kind:<13} {r.received}/{r.n} in, {r.throughput:8.0f}/s  "
                    f"cpu {r.cpu_us:5.0f} us/obs  load {r.load:.1f}",
                    file=sys.stderr,
                )
    names = {
        "relay": "bare paho relay (republish unchanged)",
        "agent-base": f"edgence-agent before ({base.name if base else ''})",
        "agent-base-batched": f"edgence-agent before ({base.name if base else ''}), "
        "envelopes_per_message = 32",
        "agent": "edgence-agent",
        "agent-batched": "edgence-agent, envelopes_per_message = 32",
    }
    relay_cpu = statistics.median(x.cpu_us for x in runs["relay"])
    table = [
        "| path (one core) | received | CPU µs per observation (median) | runs µs | CPU ratio "
        "to relay | throughput /s (median) | load average (1 min) at each run's end |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, rs in runs.items():
        r, _ = _median_result(rs)
        cpu = statistics.median(x.cpu_us for x in rs)
        table.append(
            f"| {names[kind]} | {min(x.received for x in rs)}/{n} | {cpu:.0f} | "
            f"{', '.join(f'{x.cpu_us:.0f}' for x in rs)} | {cpu / relay_cpu:.2f} | "
            f"{r.throughput:,.0f} | {', '.join(f'{x.load:.1f}' for x in rs)} |"
        )
    text = "\n".join(table)
    print(text)
    if write:
        note = (
            "\nMaximum rate, 8 devices, load from `mosquitto_pub -l` per device and "
            "`mosquitto_sub` upstream as in the ingest section; MQTT in, QoS 1 both sides, "
            "allowlisted devices, every reading signed (EIP-712) and journaled (WAL, "
            "synchronous=normal) and bridged. The system under test (agent or relay, all its "
            f"threads) is pinned with sched_setaffinity to CPU {os.environ['BENCH_AGENT_CPUS']}; "
            "brokers and load generators float. CPU per observation = user + system time of "
            "that process during the run / N: what one core spends per reading, the primary "
            "figure (throughput on this shared machine mostly measures the neighbours). Runs "
            "interleaved; median shown.\n"
        )
        cmd = f"python -m bench.ingest --only cost --n {n} --repeat {repeat}" + (
            f" --base {base}" if base else ""
        )
        write_section("ingest-cost", cmd + " --write", text + "\n" + note)
    return 0


def compare_auth(n: int, repeat: int, write: bool) -> int:
    """Max-rate ingest with enrolled devices (every frame's HMAC verified) against the same
    agent with allowlisted devices (no verification), interleaved in one run."""
    runs: dict[str, list[Result]] = {"agent": [], "agent-hmac": []}
    with tempfile.TemporaryDirectory(prefix="edgence-bench-") as tmp:
        for rep in range(repeat):
            for kind in ("agent", "agent-hmac"):
                r = measure(kind, n, None, Path(tmp) / f"{rep}-{kind}")
                runs[kind].append(r)
                print(
                    f"  {kind:<11} {r.received}/{r.n} in, {r.throughput:8.0f}/s  "
                    f"cpu {r.cpu_us:5.0f} us/msg",
                    file=sys.stderr,
                )
    base, base_all = _median_result(runs["agent"])
    auth, auth_all = _median_result(runs["agent-hmac"])
    cpu = {k: statistics.median(x.cpu_us for x in rs) for k, rs in runs.items()}
    table = "\n".join(
        [
            "| devices | received | throughput /s (median) | runs /s | ratio | CPU µs/msg |",
            "|---|---|---|---|---|---|",
            f"| allowlisted, no frame authentication | {base.received}/{base.n} | "
            f"{base.throughput:,.0f} | {', '.join(f'{t:,.0f}' for t in base_all)} | 1.00 | "
            f"{cpu['agent']:.0f} |",
            f"| enrolled, HMAC-SHA256 verified per frame | {auth.received}/{auth.n} | "
            f"{auth.throughput:,.0f} | {', '.join(f'{t:,.0f}' for t in auth_all)} | "
            f"{auth.throughput / base.throughput:.2f} | {cpu['agent-hmac']:.0f} |",
        ]
    )
    print(table)
    if write:
        write_section(
            "ingest-auth",
            f"python -m bench.ingest --auth --n {n} --repeat {repeat} --write",
            table
            + "\n\nMax rate, 8 devices, load from `mosquitto_pub -l` as in the ingest benchmark; "
            "the two configurations alternate in one run. Target: enrolled >= 0.8x allowlisted.\n",
        )
    return 0


def metrics_comparison(n: int, repeat: int, write: bool) -> int:
    """Max-rate agent runs with the metrics endpoint off and on-and-scraped, interleaved."""
    runs: dict[str, list[Result]] = {"off": [], "scraped": []}
    with tempfile.TemporaryDirectory(prefix="edgence-bench-") as tmp:
        for idx in range(repeat):
            for mode in ("off", "scraped"):
                r = measure("agent", n, None, Path(tmp) / f"{idx}-{mode}", metrics=mode)
                runs[mode].append(r)
                print(
                    f"  metrics {mode:<8}: {r.received}/{r.n} in, {r.throughput:8.0f}/s  "
                    f"cpu {r.cpu_us:5.0f} us/msg  scrapes {r.scrapes}",
                    file=sys.stderr,
                )
    base, _ = _median_result(runs["off"])
    base_cpu = statistics.median(x.cpu_us for x in runs["off"])
    table = [
        "| agent at maximum rate | received | throughput /s (median) | runs /s | ratio to off "
        "| CPU µs per message (median) | CPU ratio to off | scrapes of /metrics + /health |",
        "|---|---|---|---|---|---|---|---|",
    ]
    names = {"off": "metrics endpoint off", "scraped": "endpoint on, scraped every 0.5 s"}
    for mode, rs in runs.items():
        r, all_tp = _median_result(rs)
        cpu = statistics.median(x.cpu_us for x in rs)
        table.append(
            f"| {names[mode]} | {r.received}/{r.n} | {r.throughput:,.0f} | "
            f"{', '.join(f'{t:,.0f}' for t in all_tp)} | {r.throughput / base.throughput:.2f} "
            f"| {cpu:.0f} | {cpu / base_cpu:.2f} | {sum(x.scrapes for x in rs)} |"
        )
    text = "\n".join(table)
    print(text)
    if write:
        note = (
            "\nSame load as the ingest section's maximum rate (mosquitto_pub -l per device, QoS 1, "
            "8 devices), runs interleaved. The exporter reads the agent's counters at scrape time "
            "(a custom prometheus-client collector) and the journal's stats in the journal thread; "
            "the ingest path only keeps its existing counters and one dict entry per accepted "
            "frame (device -> source). Scraping every 0.5 s is 30x Prometheus' default "
            "interval. Throughput on this shared machine swings by +-20% between runs; the CPU "
            "per message is the steadier figure.\n"
        )
        write_section(
            "ingest-metrics",
            f"python -m bench.ingest --only metrics --n {n} --repeat {repeat} --write",
            text + "\n" + note,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
