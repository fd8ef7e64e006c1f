"""Side by side with ThingsBoard IoT Gateway: the same load through its MQTT connector and
through edgence-agent, same brokers, same load generators and collector, runs interleaved.

    python -m bench.peer [--n 20000] [--rate 1000] [--write]

The peer is installed by this benchmark into a virtual environment of its own under
$XDG_CACHE_HOME/edgence-bench/tbgw (default ~/.cache), from the package index pip is set up
for (`pip install thingsboard-gateway`). Its configuration is in bench/peer/ (ports and paths
filled in per run): the MQTT connector subscribing to `devices/+/up` with its JSON converter,
device name from the topic, rate limits off (`0:0,`), statistics and remote configuration off,
logging at WARNING, a persistent MQTT session like the agent's; storage `memory` or `file` (its
two documented storages). It publishes to the upstream Mosquitto as to a ThingsBoard server
(the ThingsBoard device MQTT API, `v1/gateway/telemetry`); the one thing a ThingsBoard server
does that Mosquitto cannot, answering the gateway's `getSessionLimits` RPC (the gateway sends
nothing until it has an answer), is done by a stub here with "no limits".

Per system: maximum-rate throughput and CPU per reading (one `mosquitto_pub -l` per device,
`mosquitto_sub` upstream), p50/p99 at `--rate` (Python publisher and collector, one clock),
peak RSS, and readings lost when the gateway is SIGKILLed halfway through a fixed-rate stream
and started again at once.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from agent.attest.keys import GatewayKey, write_key_file
from agent.localbroker import LocalMosquitto, free_port
from bench.agentproc import cpu_seconds, spawn_agent, wait_ready
from bench.ingest import DEVICES, collector, flood_with_c_clients, peak_rss_mb, publisher
from bench.results import write_section

PEER_DIR = Path(__file__).resolve().parent / "peer"
SYSTEMS = ("tb-memory", "edgence-agent", "tb-file")
NAMES = {
    "tb-memory": "ThingsBoard IoT Gateway, memory storage",
    "tb-file": "ThingsBoard IoT Gateway, file storage",
    "edgence-agent": "edgence-agent (signed, journaled)",
}


def peer_python() -> Path:
    """The peer's own environment, created and filled on first use."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgence-bench"
    venv = cache / "tbgw"
    exe = venv / "bin" / "thingsboard-gateway"
    if not exe.exists():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", "thingsboard-gateway"], check=True
        )
    return exe


class SessionLimitsStub:
    """Answers the gateway's `getSessionLimits` RPC on the upstream broker as a ThingsBoard
    server would, with no limits."""

    def __init__(self, port: int) -> None:
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"tb-stub-{port}")
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port, 30)
        self.c.subscribe("v1/devices/me/rpc/request/+", 1)
        self.c.loop_start()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        request_id = msg.topic.rsplit("/", 1)[1]
        answer = {"rateLimits": {}, "maxInflightMessages": 1000, "maxPayloadSize": 65536}
        client.publish(f"v1/devices/me/rpc/response/{request_id}", json.dumps(answer), qos=1)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


class Gateway:
    """One system under test between the two brokers; `start()` again after a kill."""

    def __init__(self, system: str, local: LocalMosquitto, up: LocalMosquitto, d: Path) -> None:
        self.system, self.d = system, d
        d.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        if system == "edgence-agent":
            write_key_file(d / "gateway.key", GatewayKey.generate())
            devices = ", ".join(f'"dev-{i}"' for i in range(DEVICES))
            (d / "agent.toml").write_text(
                f'[gateway]\nkey_file = "gateway.key"\n[sources.mqtt]\nurl = "{local.url}"\n'
                f'allowed_devices = [{devices}]\n[bridge]\nurl = "{up.url}"\n'
                '[log]\nlevel = "info"\n[enrollment]\nrate = 100000\nburst = 1000000\n'
                f'[metrics]\nlisten = "127.0.0.1:{free_port()}"\n'
            )
            self.topic, self.token = "edgence/+/obs/#", b'"signature"'
        else:
            cfg = d / "config"
            cfg.mkdir(exist_ok=True)
            for f in PEER_DIR.glob("*.json"):
                text = (
                    f.read_text()
                    .replace('"{UPSTREAM_PORT}"', str(up.port))
                    .replace('"{LOCAL_PORT}"', str(local.port))
                    .replace("{STORAGE}", system.split("-", 1)[1])
                    .replace("{DATA_DIR}", str(d / "data"))
                )
                (cfg / f.name).write_text(text)
            self.topic, self.token = "v1/gateway/telemetry", b'"ts":'
            self.stub = SessionLimitsStub(up.port)

    def start(self) -> None:
        log = self.d / "gateway.log"
        if self.system == "edgence-agent":
            self.proc = spawn_agent(self.d / "agent.toml", log)
            wait_ready(self.proc, log, 60)
            return
        env = dict(os.environ, TB_GW_CONFIG_DIR=str(self.d / "config"))
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(peer_python())], env=env, cwd=self.d, stdout=out, stderr=subprocess.STDOUT
            )
        time.sleep(8)  # it connects, asks for its session limits and starts its connector

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.system != "edgence-agent" and sig != signal.SIGKILL:
            self.stub.close()


def readings_of(system: str, payload: bytes) -> list[int]:
    """The reading indexes (the value each frame carried) in one upstream message."""
    d = json.loads(payload)
    if system == "edgence-agent":
        return [int(d["message"]["value"])]
    return [int(e["values"]["t"]) for entries in d.values() for e in entries]


def fixed_rate(
    gw: Gateway, local: LocalMosquitto, up: LocalMosquitto, n: int, rate: float, kill: bool
) -> tuple[list[float], int]:
    """(latencies ms, distinct readings received) for n readings at `rate`; with `kill`, the
    gateway is SIGKILLed halfway and started again at once."""
    ctx = mp.get_context("spawn")
    cpa, cpb = ctx.Pipe()
    # The collector stops on silence only (12 s): a message count would also count the
    # at-least-once duplicates after a restart and stop before the last readings.
    col = ctx.Process(target=collector, args=(up.port, 10 * n, gw.topic, cpb, 12.0), daemon=True)
    col.start()
    cpa.recv()
    ppa, ppb = ctx.Pipe()
    pub = ctx.Process(target=publisher, args=(local.port, n, rate, ppb, False), daemon=True)
    pub.start()
    time.sleep(0.5)
    ppa.send("go")
    if kill:
        time.sleep(n / rate / 2)
        gw.stop(signal.SIGKILL)
        gw.start()
    sent: list[int] = ppa.recv()
    got: list[tuple[int, bytes]] = cpa.recv()
    pub.join(10)
    col.join(10)
    lat, seen = [], set()
    for t, payload in got:
        for i in readings_of(gw.system, payload):
            if i not in seen:
                seen.add(i)
                lat.append((t - sent[i]) / 1e6)
    return sorted(lat), len(seen)


def measure(system: str, n: int, rate: float, work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"load": []}
    with (
        LocalMosquitto(work / "max", name="local") as local,
        LocalMosquitto(work / "max", name="up") as up,
    ):
        gw = Gateway(system, local, up, work / "max" / "gw")
        gw.start()
        c0 = cpu_seconds(gw.pid)
        t0, stamps = flood_with_c_clients(
            local, up, n, gw.topic, work / "max" / "c", count_token=gw.token
        )
        out["cpu_us"] = (cpu_seconds(gw.pid) - c0) / n * 1e6
        out["max_received"] = len(stamps)
        out["throughput"] = len(stamps) / ((max(stamps) - t0) / 1e9) if stamps else 0.0
        out["rss"] = peak_rss_mb(gw.pid)
        out["load"].append(os.getloadavg()[0])
        gw.stop()
    with (
        LocalMosquitto(work / "fixed", name="local") as local,
        LocalMosquitto(work / "fixed", name="up") as up,
    ):
        gw = Gateway(system, local, up, work / "fixed" / "gw")
        gw.start()
        m = int(rate * 10)
        lat, got = fixed_rate(gw, local, up, m, rate, kill=False)
        out["p50"], out["p99"] = statistics.median(lat), lat[int(0.99 * (len(lat) - 1))]
        out["fixed_received"], out["fixed_n"] = got, m
        out["load"].append(os.getloadavg()[0])
        gw.stop()
    with (  # a fresh pair and gateway: the same device counters again would be replays
        LocalMosquitto(work / "kill", name="local") as local,
        LocalMosquitto(work / "kill", name="up") as up,
    ):
        gw = Gateway(system, local, up, work / "kill" / "gw")
        gw.start()
        _, got = fixed_rate(gw, local, up, m, rate, kill=True)
        out["lost"] = m - got
        gw.stop()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    peer_python()
    results = {}
    with tempfile.TemporaryDirectory(prefix="edgence-peer-") as tmp:
        for system in SYSTEMS:  # interleaved: peer, agent, peer
            r = measure(system, args.n, args.rate, Path(tmp) / system)
            results[system] = r
            print(f"  {system}: {r}", file=sys.stderr)
    base = results["edgence-agent"]
    rows = [
        "| gateway | max rate: received | readings/s | ratio to edgence-agent | gateway CPU µs "
        f"per reading | p50 ms at {args.rate:.0f}/s | p99 ms | received at {args.rate:.0f}/s | "
        "peak RSS MB | lost after SIGKILL mid-stream | load (1 min) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for system, r in results.items():
        rows.append(
            f"| {NAMES[system]} | {r['max_received']}/{args.n} | {r['throughput']:,.0f} | "
            f"{r['throughput'] / base['throughput']:.2f} | {r['cpu_us']:.0f} | {r['p50']:.2f} | "
            f"{r['p99']:.2f} | {r['fixed_received']}/{r['fixed_n']} | {r['rss']:.0f} | "
            f"{r['lost']} of {r['fixed_n']} | {', '.join(f'{x:.1f}' for x in r['load'])} |"
        )
    text = "\n".join(rows)
    print(text)
    if args.write:
        note = (
            "\nSame brokers (two Mosquitto), same load and collector for every row: 8 devices, "
            "one value per frame, QoS 1; maximum rate from `mosquitto_pub -l` per device and "
            "`mosquitto_sub` upstream (readings counted in the messages: ThingsBoard packs "
            "several into one `v1/gateway/telemetry` message), fixed rate from a Python "
            "publisher and collector for 10 s. Lost after SIGKILL: a second 10 s stream at the "
            "fixed rate, the gateway killed at 5 s and started again at once, distinct readings "
            "missing upstream at the end. ThingsBoard's gateway publishes the readings as they "
            "came; edgence-agent signs each (EIP-712) and journals it before acknowledging it. "
            "Peer configuration: bench/peer/ (see bench/peer.py). One run per system, "
            "interleaved, on the shared 2-core machine.\n"
        )
        write_section(
            "peer",
            f"python -m bench.peer --n {args.n} --rate {args.rate:.0f} --write",
            text + "\n" + note,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
