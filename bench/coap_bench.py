"""CoAP ingest benchmark: confirmable POSTs of device frames answered by the real agent
(`edgence-agent run`, a child process: 2.04 only after signing and journaling) against a bare
aiocoap server that answers every POST with 2.04 and does nothing else, in the same run.

    python -m bench.coap_bench [--n 6000] [--clients 2] [--concurrency 8] [--repeat 3] [--write]

Load: `--clients` processes, each running `--concurrency` devices: a loop of sequential CON
POSTs from its own aiocoap client context (own UDP port; aiocoap allows one confirmable
exchange in flight per peer, NSTART=1), so counters rise per device. Throughput = N / (last
response - start); latency per request, p50 and p99, over all requests. Everything shares the
machine's cores, load generator included; agent and bare runs are interleaved.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import aiocoap
import aiocoap.resource
from aiocoap.numbers.codes import Code

from agent.attest.keys import GatewayKey, write_key_file
from agent.devices.codecs.frame import encode_frame
from bench.agentproc import cpu_seconds, spawn_agent, wait_ready
from bench.results import write_section


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Changed(aiocoap.resource.Resource, aiocoap.resource.PathCapable):  # type: ignore[misc]
    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        return aiocoap.Message(code=Code.CHANGED)


def bare_server(port: int, ready: Connection) -> None:
    """The baseline: aiocoap answering 2.04 to POST /up/<anything>, on the same event loop
    the agent uses (uvloop when installed)."""

    async def main() -> None:
        site = aiocoap.resource.Site()
        site.add_resource(("up",), Changed())
        ctx = await aiocoap.Context.create_server_context(
            site, bind=("127.0.0.1", port), transports=["udp6"]
        )
        ready.send("ok")
        try:
            await asyncio.Event().wait()
        finally:
            await ctx.shutdown()

    from agent.cli.run import run_event_loop

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    run_event_loop(main())


def client(
    port: int, first_device: int, concurrency: int, per_loop: int, go: Connection, out: Connection
) -> None:
    """`concurrency` loops of sequential CON POSTs; sends back (latencies ns, codes, end)."""

    async def main() -> None:
        # One context (one UDP socket) per loop: each is a device of its own. aiocoap keeps
        # NSTART=1, one confirmable exchange in flight per peer, so loops sharing a context
        # would queue behind each other instead of running concurrently.
        ctxs = [
            await aiocoap.Context.create_client_context(transports=["udp6"])
            for _ in range(concurrency)
        ]
        frames = [
            [
                encode_frame(n, [("t", n, -2, "Cel")], timestamp=int(time.time()))
                for n in range(1, per_loop + 1)
            ]
            for _ in range(concurrency)
        ]
        lat: list[int] = []
        codes: dict[str, int] = {}

        async def loop(i: int) -> None:
            uri = f"coap://127.0.0.1:{port}/up/b-{first_device + i}"
            for payload in frames[i]:
                msg = aiocoap.Message(code=Code.POST, uri=uri, payload=payload)
                msg.opt.content_format = 50
                t = time.monotonic_ns()
                r = await ctxs[i].request(msg).response
                lat.append(time.monotonic_ns() - t)
                codes[r.code.dotted] = codes.get(r.code.dotted, 0) + 1

        out.send("ready")
        go.recv()
        await asyncio.gather(*(loop(i) for i in range(concurrency)))
        out.send((lat, codes, time.monotonic_ns()))
        for ctx in ctxs:
            await ctx.shutdown()

    asyncio.run(main())


@dataclass
class Run:
    name: str
    n: int
    throughput: float
    p50_ms: float
    p99_ms: float
    codes: dict[str, int]
    cpu_us: float = 0.0  # server process CPU time (all threads) per request


def load(name: str, pid: int, port: int, n: int, clients: int, concurrency: int) -> Run:
    per_loop = n // (clients * concurrency)
    ctx = mp.get_context("fork")
    gos, outs, procs = [], [], []
    for c in range(clients):
        go_r, go_w = ctx.Pipe(duplex=False)
        out_r, out_w = ctx.Pipe(duplex=False)
        p = ctx.Process(
            target=client, args=(port, c * concurrency, concurrency, per_loop, go_r, out_w)
        )
        p.start()
        gos.append(go_w)
        outs.append(out_r)
        procs.append(p)
    for o in outs:
        assert o.recv() == "ready"
    cpu0 = cpu_seconds(pid)
    t0 = time.monotonic_ns()
    for g in gos:
        g.send("go")
    lat: list[int] = []
    codes: dict[str, int] = {}
    end = t0
    for o in outs:
        ls, cs, e = o.recv()
        lat += ls
        for k, v in cs.items():
            codes[k] = codes.get(k, 0) + v
        end = max(end, e)
    cpu = cpu_seconds(pid) - cpu0
    for p in procs:
        p.join(10)
    q = statistics.quantiles(lat, n=100)
    total = per_loop * clients * concurrency
    rate = total / ((end - t0) / 1e9)
    return Run(name, total, rate, q[49] / 1e6, q[98] / 1e6, codes, cpu / total * 1e6)


def start_agent(d: Path, port: int, devices: int) -> subprocess.Popen[bytes]:
    d.mkdir(parents=True, exist_ok=True)
    write_key_file(d / "gateway.key", GatewayKey.generate())
    allowed = ", ".join(f'"b-{i}"' for i in range(devices))
    (d / "agent.toml").write_text(
        '[gateway]\nkey_file = "gateway.key"\n[sources.mqtt]\nenabled = false\n'
        f'[sources.coap]\nenabled = true\nbind = "127.0.0.1"\nport = {port}\n'
        f"allowed_devices = [{allowed}]\n[bridge]\nenabled = false\n"
        # Each device posts as fast as it is answered: above the default per-device limit.
        "[enrollment]\nrate = 100000\nburst = 1000\n"
        # e.g. BENCH_AGENT_EXTRA_TOML='[pipeline]\nlinger_ms = 0' to try other settings
        + os.environ.get("BENCH_AGENT_EXTRA_TOML", "").replace("\\n", "\n")
    )
    log = d / "agent.log"
    proc = spawn_agent(d / "agent.toml", log)
    wait_ready(proc, log, 20)
    return proc


def run_bare(n: int, clients: int, concurrency: int) -> Run:
    port = free_udp_port()
    ctx = mp.get_context("fork")
    ready_r, ready_w = ctx.Pipe(duplex=False)
    server = ctx.Process(target=bare_server, args=(port, ready_w))
    server.start()
    try:
        ready_r.recv()
        assert server.pid is not None
        return load("bare aiocoap server (2.04 only)", server.pid, port, n, clients, concurrency)
    finally:
        server.terminate()
        server.join(10)


def run_agent(base: Path, i: int, n: int, clients: int, concurrency: int) -> Run:
    port = free_udp_port()
    proc = start_agent(base / f"agent-{i}", port, clients * concurrency)
    try:
        name = "edgence-agent (signed + journaled)"
        return load(name, proc.pid, port, n, clients, concurrency)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--n", type=int, default=6000)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--write", action="store_true", help="record in bench/RESULTS.md")
    a = ap.parse_args()
    runs: dict[str, list[Run]] = {"bare": [], "agent": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.repeat):
            runs["bare"].append(run_bare(a.n, a.clients, a.concurrency))
            runs["agent"].append(run_agent(Path(tmp), i, a.n, a.clients, a.concurrency))
            for r in (runs["bare"][-1], runs["agent"][-1]):
                print(f"{r.name:38} {r.throughput:8,.0f}/s p50 {r.p50_ms:6.2f} ms "
                      f"p99 {r.p99_ms:6.2f} ms cpu {r.cpu_us:5.0f} us/req {r.codes}",
                      flush=True)  # fmt: skip

    def median(rs: list[Run]) -> Run:
        return sorted(rs, key=lambda r: r.throughput)[len(rs) // 2]

    bare, agent = median(runs["bare"]), median(runs["agent"])
    lines = [
        "| server | requests | answered | throughput /s (median) | runs /s | ratio to bare "
        "| p50 ms | p99 ms | server CPU µs per request |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, med in (("bare", bare), ("agent", agent)):
        rs = ", ".join(f"{r.throughput:,.0f}" for r in runs[key])
        codes = ", ".join(f"{k}: {v}" for k, v in sorted(med.codes.items()))
        lines.append(
            f"| {med.name} | {med.n} | {codes} | {med.throughput:,.0f} | {rs} "
            f"| {med.throughput / bare.throughput:.2f} | {med.p50_ms:.2f} | {med.p99_ms:.2f} "
            f"| {med.cpu_us:.0f} |"
        )
    ratio = agent.throughput / bare.throughput
    pairs = [a.throughput / b.throughput for a, b in zip(runs["agent"], runs["bare"], strict=True)]
    cpu_ratio = statistics.median(r.cpu_us for r in runs["bare"]) / statistics.median(
        r.cpu_us for r in runs["agent"]
    )
    note = (
        f"\n{a.clients} client processes x {a.concurrency} devices, each a loop of sequential "
        "confirmable POSTs from its own UDP port (aiocoap's NSTART=1 allows one exchange in "
        "flight per peer); one JSON frame with one value per POST; aiocoap on both "
        "sides, loopback UDP. The agent answers 2.04 only after the frame is signed (EIP-712) "
        "and journaled (sqlite WAL, synchronous=normal); its upstream bridge is disabled in "
        "this run. The bare server is aiocoap's stock Site and Context; the agent's routes "
        "/up without the Site's deep copy of each request and names its render tasks by a "
        "constant, not the request's repr (agent/coapsite.py). Bare and agent runs are "
        "interleaved; the median run is shown. Load "
        f"generator and server share the 2 cores, and other work on this shared machine "
        f"moves both from run to run. Ratio of the medians {ratio:.2f} (target >= 0.6: "
        f"{'met' if ratio >= 0.6 else 'NOT met'}); ratio within each interleaved pair "
        f"{', '.join(f'{p:.2f}' for p in pairs)} (median {statistics.median(pairs):.2f}); "
        f"server CPU per request, bare / agent (medians): {cpu_ratio:.2f}, the steadier "
        "measure of what the agent's work costs.\n"
    )
    table = "\n".join(lines) + "\n" + note
    print(table)
    if a.write:
        cmd = (
            f"python -m bench.coap_bench --n {a.n} --clients {a.clients} "
            f"--concurrency {a.concurrency} --repeat {a.repeat} --write"
        )
        write_section("coap", cmd, table)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
