"""Chaos soak: steady load from an MQTT, a CoAP and a serial device into a real `edgence-agent
run` process while random faults hit it, then a full accounting of every reading and every
gateway sequence.

    python -m bench.soak --minutes 10 [--seed N] [--overflow pause|drop-oldest] [--record]

Faults, one every 8-20 s (seeded): the agent SIGKILLed and restarted; the local (device-side)
broker restarted; the upstream broker stopped for 2-8 s; the journal's disk full for 3-6 s (a
small tmpfs mounted for the run, as root; without root this fault is left out and said so).
Clock jumps are left out: they cannot be made without faking the clock. No chain part is
configured, so there is no node to restart. The journal is small (512 KiB), so upstream outages
fill it and intake pauses (or, with --overflow drop-oldest, ranges are dropped and announced).

The journal's replay window is REPLAY_WINDOW counters (see there): the MQTT device's paho client
reorders frames after a broker restart, by as many as it queued during the outage.

What counts as acknowledged to a device: MQTT, the local broker's PUBACK (the broker keeps the
frame for the agent's persistent session); CoAP, a 2.04 (or a 4.00 "replay" for a frame sent
again after its 2.04 was lost); serial has no acknowledgement, so its frames are counted as
written and delivered only. The accounting fails (exit 1) on any reading acknowledged and
neither delivered nor inside an announced dropped range, any gateway sequence 1..N neither
delivered nor announced, any sequence delivered with two different contents, or any envelope
or statement that does not verify.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
import tty
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from agent.attest.dropped import verify_dropped
from agent.attest.keys import GatewayKey, write_key_file
from agent.attest.observation import verify_envelope
from agent.devices.codecs.frame import encode_frame
from agent.devices.codecs.serial_line import encode_serial_frame
from agent.errors import EnvelopeError
from agent.localbroker import LocalMosquitto
from bench.agentproc import spawn_agent, wait_ready

JOURNAL_BYTES = 512 * 1024
TMPFS_BYTES = 8 * 2**20
MQTT_RATE, COAP_RATE, SERIAL_RATE = 60.0, 20.0, 20.0  # readings per second per device
# After a local broker restart (down up to 3 s, then paho's 1-2 s reconnect delay) the MQTT
# device's client sends a frame published while it reconnects before the ~300 it queued during
# the outage: a window of 64 (the default, sized for devices sending about once a second) would
# refuse them as replays. 60 frames/s x 5 s = 300, with room for a loaded machine.
REPLAY_WINDOW = 1024


def free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Upstream:
    """A consumer on the upstream broker (persistent session, its own paho thread)."""

    def __init__(self, port: int, gateway: str) -> None:
        self.obs: list[bytes] = []
        self.dropped: list[bytes] = []
        self.lock = threading.Lock()
        self.gateway = gateway
        subscribed = threading.Event()
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id="soak-consumer", clean_session=False)
        c.max_inflight_messages_set(0)
        c.on_connect = lambda cl, ud, fl, rc, pr: cl.subscribe(f"edgence/{gateway}/#", 1)
        c.on_subscribe = lambda *a: subscribed.set()
        c.on_message = self._on_message
        c.reconnect_delay_set(1, 1)
        c.connect("127.0.0.1", port, 30)
        c.loop_start()
        self.client = c
        if not subscribed.wait(10):
            raise RuntimeError("the consumer could not subscribe upstream")

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self.lock:
            if "/obs/" in msg.topic:
                self.obs.append(bytes(msg.payload))
            elif msg.topic.endswith("/dropped"):
                self.dropped.append(bytes(msg.payload))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@dataclass
class DeviceLog:
    """What one device sent and what it was told."""

    name: str
    sent: int = 0
    acked: set[int] = field(default_factory=set)
    busy: int = 0  # CoAP 5.03 answers (intake paused), retried after Max-Age


class MqttDevice(threading.Thread):
    """Publishes frames 1.. with QoS 1 to the local broker; paho re-sends what a broker restart
    left unacknowledged. Acknowledged = PUBACK received."""

    def __init__(self, port: int, stop: threading.Event) -> None:
        super().__init__(daemon=True, name="mqtt-device")
        self.log = DeviceLog("mqtt m-1")
        self.stop_event = stop
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id="soak-m-1", clean_session=False)
        c.max_inflight_messages_set(100)
        c.max_queued_messages_set(0)
        c.reconnect_delay_set(1, 2)
        c.on_publish = self._on_publish
        self.mids: dict[int, int] = {}
        self.early: set[int] = set()  # PUBACKs that came before publish() returned the mid
        self.lock = threading.Lock()
        c.connect("127.0.0.1", port, 30)
        c.loop_start()
        self.client = c

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, rc: Any, p: Any) -> None:
        # paho calls this holding its own locks: never call paho while holding self.lock.
        with self.lock:
            n = self.mids.pop(mid, None)
            if n is None:
                self.early.add(mid)
            else:
                self.log.acked.add(n)

    def run(self) -> None:
        while not self.stop_event.is_set():
            n = self.log.sent + 1
            info = self.client.publish(
                "devices/m-1/up", encode_frame(n, [("t", n, 0, "Cel")]), qos=1
            )
            with self.lock:
                if info.mid in self.early:
                    self.early.discard(info.mid)
                    self.log.acked.add(n)
                else:
                    self.mids[info.mid] = n
            self.log.sent = n
            time.sleep(1 / MQTT_RATE)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class CoapDevice(threading.Thread):
    """POSTs frames 1.. to /up/c-1 (aiocoap, its own loop); on a timeout or a 5.03 it sends the
    same frame again (after Max-Age), as the firmware does."""

    def __init__(self, port: int, stop: threading.Event) -> None:
        super().__init__(daemon=True, name="coap-device")
        self.log = DeviceLog("coap c-1")
        self.port = port
        self.stop_event = stop

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        import aiocoap
        from aiocoap.numbers.codes import Code

        ctx = await aiocoap.Context.create_client_context()
        uri = f"coap://127.0.0.1:{self.port}/up/c-1"
        n, retried = 0, False
        try:
            while not self.stop_event.is_set():
                if not retried:
                    n += 1
                    self.log.sent = n
                frame = encode_frame(n, [("t", n, 0, "Cel")])
                req = aiocoap.Message(code=Code.POST, uri=uri, payload=frame, content_format=50)
                try:
                    resp = await asyncio.wait_for(ctx.request(req).response, 5.0)
                except (TimeoutError, aiocoap.error.Error):
                    retried = True
                    await asyncio.sleep(0.5)
                    continue
                if resp.code == Code.CHANGED or (
                    retried and resp.code == Code.BAD_REQUEST and resp.payload == b"replay"
                ):
                    self.log.acked.add(n)
                    retried = False
                elif resp.code == Code.SERVICE_UNAVAILABLE:
                    self.log.busy += 1
                    retried = True
                    await asyncio.sleep(min(float(resp.opt.max_age or 1), 5.0))
                    continue
                else:
                    raise RuntimeError(f"coap: unexpected {resp.code} {resp.payload!r} for {n}")
                await asyncio.sleep(1 / COAP_RATE)
        finally:
            await ctx.shutdown()


class SerialDevice(threading.Thread):
    """Writes frames 1.. to a pty the agent reads (no acknowledgement exists on the line)."""

    def __init__(self, master: int, stop: threading.Event) -> None:
        super().__init__(daemon=True, name="serial-device")
        self.log = DeviceLog("serial s-1")
        self.master = master
        self.stop_event = stop

    def run(self) -> None:
        os.set_blocking(self.master, False)
        while not self.stop_event.is_set():
            n = self.log.sent + 1
            data = encode_serial_frame(encode_frame(n, [("t", n, 0, "Cel")]))
            try:
                os.write(self.master, data)
                self.log.sent = n
            except BlockingIOError:
                pass  # nobody reads the line (the agent is down): the device drops it
            time.sleep(1 / SERIAL_RATE)


class TinyDisk:
    """A tmpfs for the data directory (root only), which the disk-full fault fills."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self.mounted = False
        if os.geteuid() == 0:
            done = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(path)],
                capture_output=True,
            )
            self.mounted = done.returncode == 0

    def fill(self) -> None:
        fd = os.open(self.path / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * 65536)
        except OSError:
            pass
        finally:
            os.close(fd)

    def free(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.path / "filler").unlink()

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], check=False)


def journal_last_seq(path: Path) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    try:
        row = conn.execute(
            "SELECT max(coalesce((SELECT max(seq) FROM entries), 0), "
            "coalesce((SELECT value FROM meta WHERE key = 'pruned_upto'), 0))"
        ).fetchone()
    finally:
        conn.close()
    return int(row[0] or 0)


def write_config(base: Path, local: LocalMosquitto, upstream: LocalMosquitto, **opts: Any) -> Path:
    text = f"""
[gateway]
key_file = "gateway.key"
data_dir = "{opts["data_dir"]}"
chain_id = 31337

[sources.mqtt]
url = "{local.url}"
allowed_devices = ["m-1"]

[sources.coap]
enabled = true
bind = "127.0.0.1"
port = {opts["coap_port"]}
allowed_devices = ["c-1"]

[[sources.serial.ports]]
path = "{opts["tty"]}"
device = "s-1"

[bridge]
url = "{upstream.url}"

[journal]
max_bytes = {opts["journal_bytes"]}
overflow = "{opts["overflow"]}"
replay_window = {REPLAY_WINDOW}

[enrollment]
rate = 100000
burst = 1000000

[metrics]
listen = "127.0.0.1:0"

[log]
level = "info"
"""
    (base / "agent.toml").write_text(text)
    return base / "agent.toml"


class Agent:
    def __init__(self, config: Path, logdir: Path) -> None:
        self.config, self.logdir = config, logdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = self.logdir / f"agent-{self.starts}.log"
        self.proc = spawn_agent(self.config, log)
        wait_ready(self.proc, log, 60)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.logdir.glob("agent-*")))


def run_faults(
    rng: random.Random,
    until: float,
    agent: Agent,
    local: LocalMosquitto,
    upstream: LocalMosquitto,
    disk: TinyDisk,
    faults: Counter[str],
) -> None:
    kinds = ["agent_sigkill", "local_broker_restart", "upstream_outage"]
    if disk.mounted:
        kinds.append("disk_full")
    while time.monotonic() < until:
        time.sleep(rng.uniform(8, 20))
        if time.monotonic() >= until:
            break
        kind = rng.choice(kinds)
        faults[kind] += 1
        print(f"fault {sum(faults.values())}: {kind}", flush=True)
        if kind == "agent_sigkill":
            agent.kill()
            time.sleep(rng.uniform(0.2, 2.0))
            agent.start()
        elif kind == "local_broker_restart":
            local.stop()
            time.sleep(rng.uniform(0.5, 3.0))
            local.start()
        elif kind == "upstream_outage":
            upstream.stop()
            time.sleep(rng.uniform(2.0, 8.0))
            upstream.start()
        elif kind == "disk_full":
            disk.fill()
            time.sleep(rng.uniform(3.0, 6.0))
            disk.free()


@dataclass
class Accounting:
    rows: list[tuple[str, str]]
    failures: list[str]


_VERIFIED: dict[bytes, tuple[str, str, int] | None] = {}  # body -> (signer, transport, counter)


def _verified(body: bytes) -> tuple[str, str, int] | None:
    if body not in _VERIFIED:
        try:
            v = verify_envelope(body)
            _VERIFIED[body] = (v.signer, v.reading.transport.value, v.reading.counter)
        except (EnvelopeError, ValueError):  # counted and reported
            _VERIFIED[body] = None
    return _VERIFIED[body]


def account(
    devices: list[DeviceLog], consumer: Upstream, last_seq: int, gateway: str
) -> Accounting:
    with consumer.lock:
        obs_raw, dropped_raw = list(consumer.obs), list(consumer.dropped)
    failures: list[str] = []
    by_seq: dict[int, bytes] = {}
    duplicates = reused = bad = 0
    delivered: dict[str, set[int]] = {"mqtt": set(), "coap": set(), "serial": set()}
    for body in obs_raw:
        doc = json.loads(body)
        seq = doc["message"]["gatewaySequence"]
        if seq in by_seq:
            if by_seq[seq] == body:
                duplicates += 1
            else:
                reused += 1
            continue
        by_seq[seq] = body
        v = _verified(body)
        if v is None or v[0] != gateway:
            bad += 1
            continue
        delivered[v[1]].add(v[2])
    announced: set[int] = set()
    overlapping = 0
    for body in dict.fromkeys(dropped_raw):  # a statement may arrive twice, identical
        try:
            d = verify_dropped(body)
        except (EnvelopeError, ValueError):  # counted and reported
            bad += 1
            continue
        span = set(range(d.first_sequence, d.last_sequence + 1))
        overlapping += len(span & announced)
        announced |= span
    seqs = set(by_seq)
    missing = set(range(1, last_seq + 1)) - seqs - announced
    # Frames signed after a frame of the same device with a higher counter (out of order, e.g.
    # overtaken after a broker restart): what the replay window let through.
    late: Counter[str] = Counter()
    highest: dict[str, int] = {}
    for seq in sorted(by_seq):
        v = _verified(by_seq[seq])
        if v is not None:
            if v[2] < highest.get(v[1], -1):
                late[v[1]] += 1
            highest[v[1]] = max(highest.get(v[1], -1), v[2])
    beyond = {s for s in seqs if s > last_seq}
    rows: list[tuple[str, str]] = []
    acked_total = unaccounted_readings = 0
    for dev, transport in zip(devices, ("mqtt", "coap", "serial"), strict=True):
        got = delivered[transport]
        if transport == "serial":
            rows.append(
                (
                    f"{dev.name}: written / delivered (no acknowledgement on a serial line)",
                    f"{dev.sent} / {len(got)}",
                )
            )
            continue
        lost = dev.acked - got
        acked_total += len(dev.acked)
        unaccounted_readings += len(lost)
        rows.append(
            (
                f"{dev.name}: sent / acknowledged / delivered",
                f"{dev.sent} / {len(dev.acked)} / {len(dev.acked & got)}",
            )
        )
        if dev.busy:
            rows.append((f"{dev.name}: 5.03 answers (intake paused), retried", str(dev.busy)))
        extra = got - set(range(1, dev.sent + 1))
        if extra:
            failures.append(f"{dev.name}: delivered counters never sent: {sorted(extra)[:5]}")
    # A reading acknowledged and not delivered is accounted for only by an announced drop.
    unaccounted = max(0, unaccounted_readings - len(announced))
    rows += [
        ("readings acknowledged to devices (MQTT + CoAP)", str(acked_total)),
        ("acknowledged, not delivered", str(unaccounted_readings)),
        ("gateway sequences 1..N (N = journal's last)", str(last_seq)),
        ("sequences delivered upstream (distinct)", str(len(seqs))),
        ("sequences announced dropped (verified Dropped statements)", str(len(announced))),
        ("of those, delivered too (in flight when dropped)", str(len(announced & seqs))),
        ("duplicates upstream, byte-identical", str(duplicates)),
        (
            "readings signed out of order (below a counter signed before them: replay window)",
            ", ".join(f"{t} {late[t]}" for t in ("mqtt", "coap", "serial")),
        ),
        ("sequences reused (same number, other content)", str(reused)),
        ("sequences neither delivered nor announced (gaps)", str(len(missing))),
        ("envelopes or statements that do not verify", str(bad)),
        ("**unaccounted readings**", f"**{unaccounted}**"),
    ]
    if unaccounted:
        failures.append(f"{unaccounted} acknowledged readings unaccounted")
    if missing:
        failures.append(f"{len(missing)} sequences missing, e.g. {sorted(missing)[:10]}")
    if reused:
        failures.append(f"{reused} sequences reused for different content")
    if bad:
        failures.append(f"{bad} envelopes or statements do not verify")
    if beyond:
        failures.append(f"sequences above the journal's last: {sorted(beyond)[:5]}")
    if overlapping:
        failures.append(f"{overlapping} sequences announced dropped twice")
    return Accounting(rows, failures)


def soak(
    minutes: float, seed: int, overflow: str, workdir: Path, journal_bytes: int = JOURNAL_BYTES
) -> tuple[Accounting, str]:
    rng = random.Random(seed)
    faults: Counter[str] = Counter()
    etc = workdir / "etc"
    etc.mkdir(parents=True)
    key = GatewayKey.generate()
    write_key_file(etc / "gateway.key", key)
    disk = TinyDisk(workdir / "disk")
    data_dir = disk.path / "data" if disk.mounted else workdir / "data"
    master, slave = os.openpty()
    tty.setraw(slave)
    stop = threading.Event()
    with (
        LocalMosquitto(workdir / "mosq", name="local", persistence=True) as local,
        LocalMosquitto(workdir / "mosq", name="upstream", persistence=True) as upstream,
    ):
        coap_port = free_udp_port()
        config = write_config(
            etc,
            local,
            upstream,
            data_dir=data_dir,
            coap_port=coap_port,
            tty=os.ttyname(slave),
            overflow=overflow,
            journal_bytes=journal_bytes,
        )
        consumer = Upstream(upstream.port, key.address)
        agent = Agent(config, workdir)
        devices: list[Any] = []
        try:
            agent.start()
            devices = [
                MqttDevice(local.port, stop),
                CoapDevice(coap_port, stop),
                SerialDevice(master, stop),
            ]
            for d in devices:
                d.start()
            t0 = time.monotonic()
            run_faults(rng, t0 + minutes * 60, agent, local, upstream, disk, faults)
            if agent.proc is None or agent.proc.poll() is not None:
                agent.start()
            stop.set()
            for d in devices:
                d.join(30)
            # Settle: the devices stopped; wait until upstream has everything acknowledged.
            logs = [d.log for d in devices]
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                time.sleep(2)
                last = journal_last_seq(data_dir / "journal.sqlite")
                if not account(logs, consumer, last, key.address).failures:
                    break
            code = agent.terminate()
            if code != 0:
                raise RuntimeError(f"the agent exited {code} on SIGTERM")
            time.sleep(1)
            result = account(
                logs, consumer, journal_last_seq(data_dir / "journal.sqlite"), key.address
            )
        finally:
            stop.set()
            agent.kill()
            for d in devices:
                if isinstance(d, MqttDevice):
                    d.close()
            consumer.close()
            os.close(master)
            os.close(slave)
            log_text = agent.logs()
            disk.close()
    fault_text = ", ".join(f"{k} {v}" for k, v in sorted(faults.items())) or "none"
    skipped = [] if disk.mounted else ["disk_full (needs root to mount a tmpfs)"]
    skipped += ["clock jumps (not without faking the clock)", "node restarts (no chain part)"]
    result.rows[:0] = [
        (
            "duration",
            f"{minutes:g} min, seed {seed}, journal.overflow = {overflow}, "
            f"journal.max_bytes = {journal_bytes}",
        ),
        ("faults", fault_text),
        ("faults left out", "; ".join(skipped)),
        ("agent starts", str(agent.starts)),
        ("intake paused (journal full) lines", str(log_text.count("event=journal_full_paused"))),
    ]
    return result, log_text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--overflow", choices=("pause", "drop-oldest"), default="pause")
    ap.add_argument("--record", action="store_true", help="write the table to bench/RESULTS.md")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="edgence-soak-"))
    try:
        result, _ = soak(args.minutes, args.seed, args.overflow, workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    table = "| what | count |\n| --- | --- |\n" + "".join(
        f"| {k} | {v} |\n" for k, v in result.rows
    )
    verdict = "PASS" if not result.failures else "FAIL: " + "; ".join(result.failures)
    print(table)
    print(verdict)
    if args.record:
        from bench.results import write_section

        command = f"python -m bench.soak --minutes {args.minutes:g} --seed {args.seed}"
        if args.overflow != "pause":
            command += f" --overflow {args.overflow}"
        write_section(f"soak-{args.overflow}", command, table + f"\n{verdict}\n")
    return 0 if not result.failures else 1


if __name__ == "__main__":
    raise SystemExit(main())
