"""Serial benchmark: (1) the frame parser alone, lines/s, against the least any parser must do
(split at LF and one CRC-32 per line) in the same run; (2) the agent reading a pseudo-terminal
fed at the full line rate of a 115200-baud 8N1 link (11,520 bytes/s) for --seconds: every valid
frame sent must come out signed and journaled.

    python -m bench.serial_bench [--lines 200000] [--seconds 60] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import sys
import tempfile
import time
import tty
import zlib
from collections.abc import Callable
from pathlib import Path

from agent.attest.keys import GatewayKey
from agent.config import config_from_dict
from agent.devices.codecs.frame import encode_frame, parse_frame
from agent.devices.codecs.nmea import encode_nmea
from agent.devices.codecs.serial_line import (
    LineKind,
    LineSplitter,
    classify_line,
    encode_serial_frame,
    frame_payload,
)
from agent.runtime import Agent
from bench.results import write_section

BAUD = 115200
BYTES_PER_S = BAUD // 10  # 8N1: start bit, 8 data bits, stop bit
CHUNK = 4096


# Frames carry the gateway's clock of this run: a `ts` outside pipeline.max_ts_age is refused.
BENCH_TS = int(time.time())


def frame_line(n: int) -> bytes:
    return encode_serial_frame(
        encode_frame(
            n,
            [("temperature", 2000 + n % 1000, -2, "Cel"), ("humidity", 400 + n % 300, -1, "%")],
            timestamp=BENCH_TS - n % 1000,
        )
    )


def best_of(runs: int, fn: object) -> float:
    assert callable(fn)
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def parser_rates(lines: int) -> list[tuple[str, float]]:
    stream = b"".join(frame_line(n) for n in range(lines))
    chunks = [stream[i : i + CHUNK] for i in range(0, len(stream), CHUNK)]

    def baseline() -> None:
        crc = zlib.crc32
        for line in stream.split(b"\n"):
            crc(line)

    def framing() -> None:
        sp = LineSplitter()
        n = 0
        for c in chunks:
            for line in sp.feed(c):
                if classify_line(line) is LineKind.FRAME:
                    frame_payload(line)
                    n += 1
        assert n == lines

    def framing_and_json() -> None:
        sp = LineSplitter()
        for c in chunks:
            for line in sp.feed(c):
                if classify_line(line) is LineKind.FRAME:
                    parse_frame(frame_payload(line)[0])

    return [
        ("split at LF + CRC-32 per line (baseline)", lines / best_of(3, baseline)),
        ("serial framing: split, bound, classify, CRC check", lines / best_of(3, framing)),
        ("framing + device-frame JSON parse", lines / best_of(3, framing_and_json)),
    ]


def writer(master: int, seconds: float, out: mp.connection.Connection) -> None:
    """Feeds the pty at exactly the link's byte rate, cutting lines anywhere (a UART does not
    know about lines); one NMEA GGA per second as a GPS would send. Reports what it sent."""
    gga = encode_nmea("GPGGA,123519.00,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,")
    buf = bytearray()
    n = frames = ggas = 0
    t0 = time.monotonic()
    sent = 0
    next_gga = 1.0
    while True:
        now = time.monotonic() - t0
        if now >= seconds:
            break
        due = int(now * BYTES_PER_S) - sent
        while len(buf) < due:
            if now >= next_gga:
                buf += gga
                ggas += 1
                next_gga += 1.0
            n += 1
            buf += frame_line(n)
            frames += 1
        if due > 0:
            sent += os.write(master, bytes(buf[:due]))
            del buf[:due]
        time.sleep(0.005)
    # The last line is finished so that every frame counted as sent is whole on the wire.
    rest = bytes(buf[: buf.index(b"\n") + 1]) if b"\n" in buf else b""
    if rest:
        os.write(master, rest)
        sent += len(rest)
    frames_whole = frames - (buf.count(b"\n") - (1 if rest else 0))
    out.send((frames_whole, ggas, sent))


async def until(pred: Callable[[], bool], limit: float) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(0.02)
    return False


async def line_rate(seconds: float) -> dict[str, float]:
    master, slave = os.openpty()
    tty.setraw(slave)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        link = base / "ttyUSB-bench"
        link.symlink_to(os.ttyname(slave))
        cfg = config_from_dict(
            {
                "gateway": {"key_file": "k", "data_dir": "data"},
                "sources": {
                    "mqtt": {"enabled": False},
                    "serial": {
                        "ports": [{"path": str(link), "device": "ser-1", "gps_device": "gps-1"}]
                    },
                },
                "bridge": {"enabled": False},
                # ~85 frames/s from one device: above the default per-device rate limit.
                "enrollment": {"rate": 1000, "burst": 1000},
            },
            str(base / "agent.toml"),
            base,
        )
        agent = Agent(cfg, GatewayKey.generate())
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        await agent.ready.wait()
        m = agent.metrics
        await until(lambda: m.get("serial_opened") >= 1, 10)
        ctx = mp.get_context("fork")
        r, w = ctx.Pipe(duplex=False)
        cpu0, t0 = time.process_time(), time.monotonic()
        proc = ctx.Process(target=writer, args=(master, seconds, w))
        proc.start()
        await until(r.poll, seconds + 30)
        frames, ggas, sent = r.recv()
        elapsed = time.monotonic() - t0
        want = frames * 2 + ggas * 5  # two values per frame, five per GGA fix
        await until(lambda: m.get("observations_signed") >= want, 30)  # else: counted as lost
        cpu = time.process_time() - cpu0
        proc.join(5)
        stop.set()
        await task
        os.close(master)
        os.close(slave)
        return {
            "seconds": elapsed,
            "bytes": sent,
            "frames": frames,
            "ggas": ggas,
            "signed": m.get("observations_signed"),
            "want": want,
            "rejected": m.get("frames_rejected"),
            "cpu_pct": 100 * cpu / elapsed,
        }


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--lines", type=int, default=200_000)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--write", action="store_true", help="record in bench/RESULTS.md")
    a = ap.parse_args()
    rates = parser_rates(a.lines)
    base = rates[0][1]
    out = [
        f"Parser alone, {a.lines:,} frame lines (2 values each, ~{len(frame_line(1))} bytes), "
        f"fed in {CHUNK}-byte chunks, best of 3:",
        "",
        "| what | lines/s | ratio to baseline |",
        "|---|---|---|",
    ]
    out += [f"| {name} | {rate:,.0f} | {rate / base:.2f} |" for name, rate in rates]
    print("\n".join(out), flush=True)
    res = asyncio.run(line_rate(a.seconds))
    lost = res["want"] - res["signed"]
    out += [
        "",
        f"Line rate: a pty fed at {BYTES_PER_S:,} bytes/s ({BAUD} baud 8N1) for "
        f"{res['seconds']:.0f} s by a separate process, lines cut at arbitrary chunk "
        "boundaries, plus one NMEA GGA per second; the in-process agent (bridge disabled) "
        "reads, parses, signs and journals:",
        "",
        "| bytes | frames sent | GGA sent | observations expected | signed | lost "
        "| rejected | agent CPU % of one core |",
        "|---|---|---|---|---|---|---|---|",
        f"| {res['bytes']:,} | {res['frames']:,} | {res['ggas']} | {res['want']:,} "
        f"| {res['signed']:,} | {lost} | {res['rejected']} | {res['cpu_pct']:.1f} |",
    ]
    text = "\n".join(out) + "\n"
    print(text)
    if a.write:
        cmd = f"python -m bench.serial_bench --lines {a.lines} --seconds {a.seconds:g} --write"
        write_section("serial", cmd, text)
    return 0 if lost == 0 and res["rejected"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
