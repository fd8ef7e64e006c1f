"""Forwarding benchmark: dApp JSON-RPC requests through the real agent (`edgence-agent run`, a
child process, [forward] over MQTT 5 and CoAP) against direct JSON-RPC over HTTP to the same
anvil, in the same run.

    python -m bench.forward [--n 2000] [--window 32] [--repeat 3] [--write]

The request is an `eth_call` of Counter.number() (a typical dApp read). Latency: one request at
a time, N of them (p50, p99; added latency = forwarded p50 - direct p50). Throughput: N
requests with `--window` outstanding at once. Direct runs and forwarded runs are interleaved
and the median of `--repeat` runs is shown. Everything (anvil, Mosquitto, the agent, the load
generator) shares the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiocoap
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.attest.keys import GatewayKey, write_key_file
from agent.chainclient.anvil import DEV_PRIVATE_KEY, LocalAnvil
from agent.chainclient.build import build
from agent.chainclient.contracts import load_artifact
from agent.chainclient.rpc import RpcClient
from agent.chainclient.tx import Eip1559Tx, contract_address, encode_call
from agent.config import BrokerEndpoint
from agent.localbroker import LocalMosquitto, free_port
from agent.mqtt import MqttConnection
from agent.responder import publish_json_reply
from bench.agentproc import cpu_seconds, pin, spawn_agent, wait_ready
from bench.results import write_section

Ask = Callable[[bytes], Awaitable[bytes]]
SAME_HOP = "same-hop relay over MQTT 5 (no checks)"


def deploy_counter(node: LocalAnvil) -> str:
    build()
    art = load_artifact("Counter")
    key = GatewayKey.from_bytes(DEV_PRIVATE_KEY)
    tx = Eip1559Tx(node.chain_id, 0, 10**9, 10 * 10**9, 1_000_000, None, 0, art.bytecode)
    node.rpc("eth_sendRawTransaction", [tx.sign(key).raw_hex])
    addr = contract_address(key.address, 0)
    for _ in range(200):
        if node.rpc("eth_getCode", [addr, "latest"]) != "0x":
            return addr
        time.sleep(0.02)
    raise RuntimeError("Counter was not deployed")


RELAY = "relay"  # the same-hop relay's name in the request topic (edgence/relay/rpc/req/<asker>)


def same_hop_relay(broker_port: int, rpc_url: str, ready: Any) -> None:
    """The baseline for forwarding (a child process): a minimal MQTT 5 responder that passes
    each request to the node over the agent's own HTTP client (RpcClient, keep-alive pool) and
    publishes the answer to the request's Response Topic with its Correlation Data, on the
    agent's own MQTT plumbing (MqttConnection on the event loop). No allowlist, no limits, no
    batching, no checks: the same hops and nothing else."""
    pin()

    async def main() -> None:
        rpc = RpcClient(rpc_url, pool_size=64)
        conn = MqttConnection(
            BrokerEndpoint("127.0.0.1", broker_port, protocol=5),
            client_id="bench-relay",
            clean_start=True,
            name="relay",
            max_inflight=1000,
            nodelay=True,
        )
        c = conn.client
        tasks: set[asyncio.Task[None]] = set()

        async def serve(body: bytes, reply_to: str, corr: bytes | None) -> None:
            publish_json_reply(c, reply_to, await rpc.post(body), corr, qos=0)

        def on_message(client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
            props = msg.properties
            t = asyncio.get_running_loop().create_task(
                serve(bytes(msg.payload), props.ResponseTopic, props.CorrelationData)  # type: ignore[union-attr]
            )
            tasks.add(t)
            t.add_done_callback(tasks.discard)

        c.on_message = on_message
        c.on_subscribe = lambda *a: ready.set()

        def subscribe(session_present: bool) -> None:
            c.subscribe(f"edgence/{RELAY}/rpc/req/+", 0)

        conn.on_connected = subscribe
        await conn.run()

    asyncio.run(main())


def start_agent(d: Path, node: LocalAnvil, broker: LocalMosquitto, coap_port: int) -> Any:
    d.mkdir(parents=True, exist_ok=True)
    key = GatewayKey.generate()
    write_key_file(d / "gateway.key", key)
    (d / "agent.toml").write_text(
        f'[gateway]\nkey_file = "gateway.key"\n[sources.mqtt]\nurl = "{broker.url}"\n'
        '[bridge]\nenabled = false\n[log]\nlevel = "info"\n[metrics]\nenabled = false\n'
        f'[chain]\nrpc_url = "{node.url}"\n'
        "[forward]\nenabled = true\nrate = 100000\nburst = 100000\nmax_inflight = 1000\n"
        f'[forward.coap]\nenabled = true\nbind = "127.0.0.1:{coap_port}"\n'
    )
    return spawn_agent(d / "agent.toml", d / "agent.log"), key.address


class Prepacked(Properties):
    """Request properties packed once, before the clock starts, by paho itself: paho's
    Properties cost more to pack than the rest of a publish, and the load generator shares the
    cores with what it measures."""

    _packed: bytes

    def __init__(self, real: Properties) -> None:
        for k, v in vars(real).items():
            object.__setattr__(self, k, v)
        object.__setattr__(self, "_packed", real.pack())  # type: ignore[no-untyped-call]

    def pack(self) -> bytes:
        return self._packed


class MqttDapp:
    """A dApp over MQTT 5 on the event loop: paho driven by the agent's own MqttConnection
    (buffered reads, no network thread), so the load generator costs about what the direct
    path's aiohttp client does. Correlation data -> waiting future."""

    def __init__(self, port: int, gateway: str) -> None:
        self.req = f"edgence/{gateway}/rpc/req/bench"
        self.reply = f"edgence/{gateway}/rpc/res/bench"
        self.waiting: dict[bytes, asyncio.Future[bytes]] = {}
        self.n = 0
        self._blast: Callable[[bytes], None] | None = None
        self._subscribed = asyncio.Event()
        self.conn = MqttConnection(
            BrokerEndpoint("127.0.0.1", port, protocol=5),
            client_id=f"bench-dapp-{gateway[:12]}",
            clean_start=True,
            name="bench-dapp",
            max_inflight=1000,
            nodelay=True,
        )
        self.c = self.conn.client
        self.c.on_message = self._on_message
        self.c.on_subscribe = lambda *a: self._subscribed.set()
        self.conn.on_connected = self._subscribe
        self._task = asyncio.create_task(self.conn.run())

    def _subscribe(self, session_present: bool) -> None:
        self.c.subscribe(self.reply, 0)

    async def ready(self) -> None:
        await asyncio.wait_for(self._subscribed.wait(), 10)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        if self._blast is not None:
            self._blast(bytes(msg.payload))
            return
        corr = msg.properties.CorrelationData  # type: ignore[union-attr]
        fut = self.waiting.pop(corr, None)
        if fut is not None and not fut.done():
            fut.set_result(bytes(msg.payload))

    def _request_properties(self) -> Properties:
        self.n += 1
        p = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        p.ResponseTopic = self.reply
        p.CorrelationData = self.n.to_bytes(8)
        return p

    async def ask(self, body: bytes) -> bytes:
        props = self._request_properties()
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.waiting[self.n.to_bytes(8)] = fut
        self.c.publish(self.req, body, qos=0, properties=props)
        return await asyncio.wait_for(fut, 10)

    async def blast(self, body: bytes, n: int, window: int) -> float:
        """Throughput: `window` requests outstanding, the next one sent as each answer
        arrives."""
        props = [Prepacked(self._request_properties()) for _ in range(n)]
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        state = {"sent": min(window, n), "got": 0}

        def on_answer(payload: bytes) -> None:
            if b'"result"' not in payload:
                raise RuntimeError(f"unexpected answer {payload[:200]!r}")
            state["got"] += 1
            nxt = state["sent"]
            if nxt < n:
                state["sent"] += 1
                self.c.publish(self.req, body, qos=0, properties=props[nxt])
            if state["got"] == n and not done.done():
                done.set_result(None)

        self._blast = on_answer
        t0 = time.perf_counter()
        for i in range(min(window, n)):
            self.c.publish(self.req, body, qos=0, properties=props[i])
        try:
            await asyncio.wait_for(done, 120)
        except TimeoutError:
            raise RuntimeError(f"only {state['got']} of {n} answers") from None
        finally:
            self._blast = None
        return n / (time.perf_counter() - t0)

    async def close(self) -> None:
        await self.conn.stop()
        await self._task


async def latency(ask: Ask, body: bytes, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        answer = await ask(body)
        out.append((time.perf_counter() - t0) * 1000)
        if b'"result"' not in answer:
            raise RuntimeError(f"unexpected answer {answer[:200]!r}")
    return out


async def throughput(ask: Ask, body: bytes, n: int, window: int) -> float:
    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            answer = await ask(body)
            if b'"result"' not in answer:
                raise RuntimeError(f"unexpected answer {answer[:200]!r}")

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(window)))
    return n / (time.perf_counter() - t0)


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


async def run(n: int, window: int, repeat: int) -> str:
    work = Path(tempfile.mkdtemp(prefix="bench-forward-"))
    node = LocalAnvil(work / "anvil")
    # As the README advises for a broker that carries RPC: no Nagle delay on small answers.
    broker = LocalMosquitto(work / "mosq", name="local", extra="set_tcp_nodelay true")
    node.start()
    broker.start()
    coap_port = free_port()
    proc, gateway = start_agent(work / "agent", node, broker, coap_port)
    try:
        counter = deploy_counter(node)
        data = "0x" + encode_call(load_artifact("Counter").function("number")).hex()
        body = json.dumps(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "eth_call",
                "params": [{"to": counter, "data": data}, "latest"],
            }
        ).encode()
        direct_client = RpcClient(node.url, pool_size=window)
        await asyncio.to_thread(wait_ready, proc, work / "agent" / "agent.log")
        mqtt = MqttDapp(broker.port, gateway)
        await mqtt.ready()
        relay_ready = mp.get_context("spawn").Event()
        relay_proc = mp.get_context("spawn").Process(
            target=same_hop_relay, args=(broker.port, node.url, relay_ready), daemon=True
        )
        relay_proc.start()
        await asyncio.to_thread(relay_ready.wait, 30)
        relay = MqttDapp(broker.port, RELAY)
        await relay.ready()
        # One CoAP client (its own UDP endpoint) per outstanding request: a CoAP client keeps
        # one request outstanding per server (NSTART = 1, RFC 7252), so fewer clients could not
        # fill the window. Each request takes an idle client and gives it back.
        idle: asyncio.Queue[aiocoap.Context] = asyncio.Queue()
        coap_ctxs = [await aiocoap.Context.create_client_context() for _ in range(window)]
        for ctx in coap_ctxs:
            idle.put_nowait(ctx)
        uri = f"coap://127.0.0.1:{coap_port}/rpc"

        async def coap_ask(b: bytes) -> bytes:
            ctx = await idle.get()
            try:
                resp = await ctx.request(
                    aiocoap.Message(code=aiocoap.POST, uri=uri, payload=b)
                ).response
            finally:
                idle.put_nowait(ctx)
            return bytes(resp.payload)

        paths: dict[str, Ask] = {
            "direct JSON-RPC over HTTP (baseline)": direct_client.post,
            SAME_HOP: relay.ask,
            "forwarded over MQTT 5 (Mosquitto)": mqtt.ask,
            "forwarded over CoAP": coap_ask,
        }
        for ask in paths.values():  # warm up connections and caches
            await latency(ask, body, 50)
        lat: dict[str, list[float]] = {k: [] for k in paths}
        tput: dict[str, list[float]] = {k: [] for k in paths}
        cpu: dict[str, list[float]] = {k: [] for k in paths}
        # CPU per request of each process during the throughput runs (who uses the 2 cores)
        assert node.proc is not None and broker.proc is not None
        pids = {"agent": proc.pid, "Mosquitto": broker.proc.pid, "anvil": node.proc.pid}
        share: dict[str, dict[str, list[float]]] = {
            k: {c: [] for c in ("load generator", *pids)} for k in paths
        }
        for _ in range(repeat):
            for name, ask in paths.items():
                lat[name] += await latency(ask, body, n)
                # the system under test: the agent, or the relay on the relay's row
                sut = int(relay_proc.pid or 0) if name == SAME_HOP else proc.pid
                c0 = cpu_seconds(sut)
                s0 = {c: cpu_seconds(pid) for c, pid in pids.items()}
                g0 = time.process_time()
                if ask == mqtt.ask:
                    tput[name].append(await mqtt.blast(body, n, window))
                elif ask == relay.ask:
                    tput[name].append(await relay.blast(body, n, window))
                else:
                    tput[name].append(await throughput(ask, body, n, window))
                cpu[name].append((cpu_seconds(sut) - c0) / n * 1e6)
                share[name]["load generator"].append((time.process_time() - g0) / n * 1e6)
                for c, pid in pids.items():
                    share[name][c].append((cpu_seconds(pid) - s0[c]) / n * 1e6)
        await mqtt.close()
        await relay.close()
        relay_proc.kill()
        for ctx in coap_ctxs:
            await ctx.shutdown()
        await direct_client.close()
    finally:
        proc.terminate()
        proc.wait(10)
        broker.stop()
        node.stop()
    base = "direct JSON-RPC over HTTP (baseline)"
    base_p50 = statistics.median(lat[base])
    base_tput = statistics.median(tput[base])
    relay_tput = statistics.median(tput[SAME_HOP])
    load = os.getloadavg()[0]
    rows = [
        "| path | p50 ms | p99 ms | added p50 ms | throughput req/s (median) | runs | "
        "ratio to direct | ratio to relay | agent CPU µs per request | load (1 min) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in paths:
        p50 = statistics.median(lat[name])
        t = statistics.median(tput[name])
        rows.append(
            f"| {name} | {p50:.2f} | {pct(lat[name], 0.99):.2f} | "
            f"{'-' if name == base else f'{p50 - base_p50:+.2f}'} | {t:,.0f} | "
            f"{', '.join(f'{x:,.0f}' for x in tput[name])} | {t / base_tput:.2f} | "
            f"{'-' if name == base else f'{t / relay_tput:.2f}'} | "
            f"{'-' if name == base else f'{statistics.median(cpu[name]):.0f}'} | {load:.1f} |"
        )
    cores = os.cpu_count() or 1
    rows += [
        "",
        "| CPU µs per request, throughput runs (median) | load generator | Mosquitto | agent "
        f"| anvil | all | most req/s {cores} cores allow at that cost | the same with an agent "
        "costing nothing, ratio to direct |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in paths:
        if name == SAME_HOP:
            continue  # its process is not among the shares' columns
        med = {c: statistics.median(v) for c, v in share[name].items()}
        total = sum(med.values())
        free = cores * 1e6 / (total - med["agent"])
        rows.append(
            f"| {name} | {med['load generator']:.0f} | {med['Mosquitto']:.0f} | "
            f"{med['agent']:.0f} | {med['anvil']:.0f} | {total:.0f} | "
            f"{cores * 1e6 / total:,.0f} | "
            f"{'-' if name == base else f'{free:,.0f} ({free / base_tput:.2f})'} |"
        )
    rows.append("")
    rows.append(
        f"Same-hop relay (the forwarding baseline): a child process, a paho MQTT 5 responder on "
        "the agent's MqttConnection passing each request to anvil over the agent's RpcClient "
        "and answering to its Response Topic, no checks and no batching; its row's CPU column "
        "is the relay's own. Targets (issue 23): forwarded over MQTT 5 >= 0.8x the relay's "
        "throughput and <= 100 µs agent CPU per request. "
        f"eth_call of Counter.number() on anvil; latency: {n} "
        f"requests one at a time per run ({repeat} runs pooled); throughput: {n} requests with "
        f"{window} outstanding, median of {repeat} interleaved runs. Direct: aiohttp keep-alive "
        "client to anvil. MQTT 5: a paho client on the event loop (the agent's own "
        "MqttConnection: buffered reads, no network thread) publishes with Response Topic and "
        "Correlation Data (QoS 0; for throughput, properties packed before the clock, and the "
        "next request sent as each answer arrives) to Mosquitto; the agent (a child process) "
        "checks each request "
        "against its allowlist and limits and posts it to anvil over a keep-alive pool, "
        "requests that arrive while a post is with the node going together as one batch (a "
        "second post only once one has been out 2 ms). "
        f"CoAP: {window} aiocoap clients (one per outstanding request, as NSTART = 1 "
        "allows one per client), confirmable POST /rpc. "
        "Agent CPU: user + system time of the agent process (all threads) during the "
        "throughput runs / requests, the steadier measure on a shared machine. "
        "Targets: added p50 <= 2 ms, throughput >= 0.5x direct. "
        f"All processes, the load generator included, share the {cores} cores: the second "
        "table shows what each costs per request (user + system CPU of each process over the "
        "throughput runs; the load generator is this process, all its threads) and the "
        "throughput those costs allow, and would allow if the agent cost nothing."
    )
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--write", action="store_true", help="write bench/RESULTS.md")
    args = ap.parse_args()
    table = asyncio.run(run(args.n, args.window, args.repeat))
    print(table)
    if args.write:
        cmd = f"python -m bench.forward --n {args.n} --window {args.window} --repeat {args.repeat}"
        write_section("forward", cmd + " --write", table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
