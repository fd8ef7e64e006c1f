"""Ingest benchmark: N readings published to a local Mosquitto -> observations received on an
upstream Mosquitto, through the real agent (`edgence-agent run`, a child process), against a
bare paho relay (subscribe, republish unchanged) through the same two brokers, same run.

    python -m bench.ingest [--n 20000] [--rate 1000] [--write]

Publisher, collector, relay and agent are separate processes; latency is measured on
CLOCK_MONOTONIC, which all processes of this machine share.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
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
from agent.devices.codecs.frame import encode_frame
from agent.localbroker import LocalMosquitto
from bench.results import write_section

DEVICES = 8


def _client(client_id: str, port: int) -> paho.Client:
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    c.max_inflight_messages_set(1000)
    c.connect("127.0.0.1", port, 60)
    return c


def publisher(port: int, n: int, rate: float | None, out: Connection) -> None:
    """Publishes n frames (QoS 1) round-robin over DEVICES devices; sends back send times."""
    c = _client("bench-pub", port)
    c.loop_start()
    frames = [
        (
            f"devices/dev-{i % DEVICES}/up",
            encode_frame(i // DEVICES + 1, [("t", i, -2, "Cel")], timestamp=1_764_000_000),
        )
        for i in range(n)
    ]
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


def collector(port: int, n: int, topic: str, out: Connection) -> None:
    """Subscribes upstream and records (receive time, payload) for n messages."""
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
    while not done.wait(5):  # stop when nothing arrived for 5 s
        if len(got) == last:
            break
        last = len(got)
    c.loop_stop()
    c.disconnect()
    out.send(got)


def relay(local: int, upstream: int, ready: Connection) -> None:
    """The baseline: a bare paho relay, subscribe and republish unchanged, QoS 1."""
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


def _key_of(payload: bytes, kind: str) -> tuple[str, int]:
    d = json.loads(payload)
    if kind == "relay":
        return ("?", d["n"]), d["r"][0]["v"]  # type: ignore[return-value]
    m = d["message"]
    return ("?", m["deviceCounter"]), int(m["value"])  # type: ignore[return-value]


def measure(kind: str, n: int, rate: float | None, workdir: Path) -> Result:
    ctx = mp.get_context("spawn")
    with (
        LocalMosquitto(workdir / kind, name="local") as local,
        LocalMosquitto(workdir / kind, name="upstream") as upstream,
    ):
        proc: Any = None
        rss = ready_s = None
        if kind == "relay":
            a, b = ctx.Pipe()
            proc = ctx.Process(target=relay, args=(local.port, upstream.port, b), daemon=True)
            proc.start()
            a.recv()
            topic = "relay/devices/#"
        else:
            proc, ready_s = start_agent(workdir / kind, local, upstream)
            topic = "edgence/+/obs/#"
        cpa, cpb = ctx.Pipe()
        col = ctx.Process(target=collector, args=(upstream.port, n, topic, cpb), daemon=True)
        col.start()
        cpa.recv()
        ppa, ppb = ctx.Pipe()
        pub = ctx.Process(target=publisher, args=(local.port, n, rate, ppb), daemon=True)
        pub.start()
        time.sleep(0.5)  # publisher connected and frames built
        ppa.send("go")
        sent: list[int] = ppa.recv()
        got: list[tuple[int, bytes]] = cpa.recv()
        if kind == "agent":
            rss = peak_rss_mb(proc.pid)
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
        else:
            proc.terminate()
        pub.join(5)
        col.join(5)
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
    )


def start_agent(d: Path, local: LocalMosquitto, upstream: LocalMosquitto) -> tuple[Any, float]:
    d.mkdir(parents=True, exist_ok=True)
    write_key_file(d / "gateway.key", GatewayKey.generate())
    devices = ", ".join(f'"dev-{i}"' for i in range(DEVICES))
    (d / "agent.toml").write_text(
        f'[gateway]\nkey_file = "gateway.key"\n[sources.mqtt]\nurl = "{local.url}"\n'
        f'allowed_devices = [{devices}]\n[bridge]\nurl = "{upstream.url}"\n'
        '[log]\nlevel = "info"\n'
    )
    log = d / "agent.log"
    t0 = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", "--config", str(d / "agent.toml")],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    while "event=ready" not in log.read_text():
        if proc.poll() is not None or time.monotonic() - t0 > 20:
            raise RuntimeError("agent did not start: " + log.read_text()[-2000:])
        time.sleep(0.005)
    return proc, time.monotonic() - t0


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--rate", type=float, default=1000.0, help="the fixed offered rate")
    ap.add_argument("--write", action="store_true", help="write bench/RESULTS.md")
    ap.add_argument("--only", choices=["fixed", "max"], help="run one of the two load shapes")
    args = ap.parse_args()
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="edgence-bench-") as tmp:
        rates = {"fixed": [args.rate], "max": [None], None: [args.rate, None]}[args.only]
        for rate in rates:
            for kind in ("relay", "agent"):
                r = measure(kind, args.n, rate, Path(tmp) / f"{kind}-{rate}")
                results.append(r)
                print(
                    f"  {r.name:<6} {r.rate:>7}: {r.received}/{r.n} in, "
                    f"{r.throughput:8.0f}/s  p50 {r.p50_ms:6.2f} ms  p99 {r.p99_ms:7.2f} ms",
                    file=sys.stderr,
                )
    table = [
        "| path | offered | received | throughput /s | ratio to relay | p50 ms | p99 ms "
        "| agent peak RSS MB | agent ready s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        base = next(b for b in results if b.name == "relay" and b.rate == r.rate)
        table.append(
            f"| {'bare paho relay' if r.name == 'relay' else 'edgence-agent'} | {r.rate} | "
            f"{r.received}/{r.n} | {r.throughput:,.0f} | {r.throughput / base.throughput:.2f} | "
            f"{r.p50_ms:.2f} | {r.p99_ms:.2f} | "
            f"{'' if r.rss_mb is None else f'{r.rss_mb:.0f}'} | "
            f"{'' if r.ready_s is None else f'{r.ready_s:.2f}'} |"
        )
    text = "\n".join(table)
    print(text)
    if args.write:
        note = (
            "\nReadings: one value per frame, 8 devices round-robin, QoS 1 end to end; journal at "
            "`synchronous=normal`. Agent ready = from process spawn to its `event=ready` log line. "
            "Latency = publish call to receipt upstream (CLOCK_MONOTONIC shared by all processes). "
            "Everything (publisher, collector, 2 brokers, agent or relay) shares the 2 cores.\n"
        )
        write_section(
            "ingest",
            f"python -m bench.ingest --n {args.n} --rate {args.rate:.0f} --write",
            text + "\n" + note,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
