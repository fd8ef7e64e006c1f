"""Modbus benchmark. (1) Modbus TCP on loopback, pymodbus' server in a child process: register
reads per second and CPU per poll of the agent's source (polling as fast as it can, into a
counting intake; then the whole in-process agent, signing and journaling every poll) against a
bare pymodbus client reading the same map from the same server in the same run. (2) Modbus RTU
at 9600 baud: the same server behind a pty wire that takes as long as a real 9600-baud line
(11-bit characters), and the share of the line's capacity the source and a bare client reach.

    python -m bench.modbus_bench [--seconds 10] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.framer import FramerType

from agent.attest.keys import GatewayKey
from agent.config import config_from_dict
from agent.config.reader import Section
from agent.config.sources.modbus import read_modbus_source
from agent.devices.modbus import ModbusSource
from agent.metrics import Metrics
from agent.pipeline import Arrival
from agent.runtime import Agent
from bench.results import write_section
from tests.support.modbus_peers import (
    RtuWire,
    start_rtu_server,
    start_tcp_server,
)

# An energy meter's poll: 30 float32 input registers (60 registers, one read) and 20 int16
# holding registers (one read): 80 registers, two requests per poll.
FLOATS = 30
INTS = 20
REGISTERS_PER_POLL = 2 * FLOATS + INTS
BAUD = 9600
BITS_PER_CHAR = 11  # start, 8 data, parity or a second stop bit, stop


def register_map() -> list[dict[str, Any]]:
    regs: list[dict[str, Any]] = [
        {
            "sensor": f"f{i}",
            "table": "input",
            "address": 2 * i,
            "type": "float32",
            "decimals": 3,
            "unit": "V",
        }
        for i in range(FLOATS)
    ]
    regs += [
        {"sensor": f"h{i}", "address": i, "type": "int16", "scale": -1, "unit": "Cel"}
        for i in range(INTS)
    ]
    return regs


def meter() -> Any:
    from pymodbus.simulator import DataType, SimData, SimDevice

    floats: list[int] = []
    for i in range(FLOATS):
        floats += AsyncModbusTcpClient.convert_to_registers(
            230.0 + i / 8, AsyncModbusTcpClient.DATATYPE.FLOAT32
        )
    return SimDevice(
        id=1,
        simdata=(
            [SimData(0, values=[False], datatype=DataType.BITS)],
            [SimData(0, values=[False], datatype=DataType.BITS)],
            [SimData(0, values=list(range(INTS)), datatype=DataType.REGISTERS)],
            [SimData(0, values=floats, datatype=DataType.REGISTERS)],
        ),
    )


# -- the peers, in a child process (their CPU is not the client's) --------------------------
def serve(kind: str, out: Connection) -> None:
    async def main() -> None:
        if kind == "tcp":
            _, port = await start_tcp_server([meter()])
            out.send(port)
        else:
            d = Path(tempfile.mkdtemp(prefix="modbus-bench-"))
            wire = RtuWire(d, baud=BAUD, bits_per_char=BITS_PER_CHAR)
            await start_rtu_server(wire.server_port, [meter()], baud=BAUD)
            wire.start()
            out.send(str(wire.link))
        await asyncio.Event().wait()

    asyncio.run(main())


class CountingIntake:
    """Stands in for the pipeline where only the source is measured: counts what it offers."""

    def __init__(self) -> None:
        self.offered = 0

    def offer(self, arrival: Arrival) -> bool:
        self.offered += 1
        return True

    async def wait_for_space(self) -> None:
        return None

    def reject(self, source: str, device: str, reason: str, detail: str) -> None:
        raise AssertionError(f"{device}: {reason} {detail}")

    def last_counter(self, device_id: str) -> int | None:
        return None


def source_config(where: dict[str, Any], interval: str, port: str | None = None) -> Any:
    """[sources.modbus] for the meter at `where` (host/port, or bus/unit with the bus at
    `port`), polled every `interval`."""
    raw: dict[str, Any] = {
        "interval": interval,
        "devices": [{"id": "meter-1", **where, "registers": register_map()}],
    }
    if port is not None:
        raw["buses"] = [{"name": "b", "port": port, "framing": "8N2", "timeout": "1s"}]
    return raw


HALT = asyncio.Event()


def progress(what: str) -> None:
    print(f"modbus_bench: {what}", file=sys.stderr, flush=True)


async def measure(
    run: Callable[[], Coroutine[Any, Any, None]], polls: Callable[[], int], seconds: float
) -> tuple[float, float]:
    """(polls per second, CPU ms per poll) of `run` over `seconds` after a one-second warm-up."""
    progress(f"measuring {getattr(run, '__qualname__', run)}")
    task = asyncio.create_task(run())
    await asyncio.sleep(0.5)
    p0, c0, t0 = polls(), time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    p1, c1, t1 = polls(), time.process_time(), time.monotonic()
    HALT.set()  # the bare loop checks it: on 3.11 a cancel racing an answer can be lost
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=5)
    if not done:
        progress("a measured task did not end within 5 s of its cancellation; left behind")
    HALT.clear()
    n = max(p1 - p0, 1)
    return n / (t1 - t0), (c1 - c0) * 1000 / n


async def bare_client(
    client: AsyncModbusTcpClient | AsyncModbusSerialClient, count: list[int]
) -> None:
    """The least a poller can do: the same two reads, back to back, and nothing else."""
    await client.connect()
    try:
        while not HALT.is_set():
            rr = await client.read_input_registers(0, count=2 * FLOATS, device_id=1)
            hr = await client.read_holding_registers(0, count=INTS, device_id=1)
            assert not rr.isError() and not hr.isError()
            count[0] += 1
    finally:
        client.close()


async def source_run(raw: dict[str, Any], file: str) -> tuple[ModbusSource, CountingIntake]:
    cfg = read_modbus_source(Section(file, "sources.modbus", raw, Path(".")))
    intake = CountingIntake()
    return ModbusSource(cfg, pipeline=intake, metrics=Metrics()), intake


ROUNDS = 1


def _add(total: list[float], rate: float, cpu_ms: float, seconds: float) -> None:
    polls = rate * seconds
    total[0] += polls
    total[1] += seconds
    total[2] += cpu_ms * polls / 1000


async def tcp_rows(port: int, seconds: float) -> list[tuple[str, float, float]]:
    rows: list[tuple[str, float, float]] = []
    # ROUNDS > 1 alternates the two in slices (polls and CPU summed), so that other work on a
    # shared machine weighs on both alike.
    totals = {"bare": [0.0, 0.0, 0.0], "source": [0.0, 0.0, 0.0]}  # polls, seconds, CPU s
    for _ in range(ROUNDS):
        count = [0]
        client = AsyncModbusTcpClient(
            "127.0.0.1", port=port, timeout=2, retries=0, reconnect_delay=0
        )
        rate, cpu = await measure(
            partial(bare_client, client, count), partial(count.__getitem__, 0), seconds / ROUNDS
        )
        _add(totals["bare"], rate, cpu, seconds / ROUNDS)
        src, _ = await source_run(
            source_config({"host": "127.0.0.1", "port": port}, "0.1ms"), "bench"
        )
        rate, cpu = await measure(src.run, partial(getattr, src, "polls"), seconds / ROUNDS)
        _add(totals["source"], rate, cpu, seconds / ROUNDS)
    for name, key in (
        ("bare pymodbus client (baseline)", "bare"),
        ("agent source -> counting intake", "source"),
    ):
        polls, secs, cpu_s = totals[key]
        rows.append((name, polls / secs, cpu_s * 1000 / polls))
    with tempfile.TemporaryDirectory() as d:
        raw = {
            "gateway": {"key_file": "k", "data_dir": d, "chain_id": 31337},
            "sources": {
                "mqtt": {"enabled": False},
                "modbus": source_config({"host": "127.0.0.1", "port": port}, "0.1ms"),
            },
            "bridge": {"enabled": False},
            "metrics": {"enabled": False},
            "enrollment": {"enabled": False},
        }
        agent = Agent(
            config_from_dict(raw, str(Path(d) / "agent.toml"), Path(d)), GatewayKey.generate()
        )
        stop = asyncio.Event()
        assert agent.modbus is not None

        progress("measuring the whole agent")
        task = asyncio.create_task(agent.run(stop))
        await asyncio.sleep(1.0)
        m = agent.metrics
        per_poll = FLOATS + INTS  # readings per poll: one per value
        s0, c0, t0 = m.get("observations_signed"), time.process_time(), time.monotonic()
        await asyncio.sleep(seconds)
        s1, c1, t1 = m.get("observations_signed"), time.process_time(), time.monotonic()
        stop.set()
        await task
        # Polls whose readings were signed and journaled in the window (the source pauses
        # when the pipeline's queue is full, so this is the sustained rate).
        n = max((s1 - s0) / per_poll, 1e-9)
        rows.append(("whole agent: signed and journaled", n / (t1 - t0), (c1 - c0) * 1000 / n))
    return rows


async def rtu_rows(link: str, seconds: float) -> list[tuple[str, float, float]]:
    rows = []
    count = [0]
    client = AsyncModbusSerialClient(
        link,
        framer=FramerType.RTU,
        baudrate=BAUD,
        parity="N",
        stopbits=2,
        timeout=1,
        retries=0,
        reconnect_delay=0,
    )
    rate, cpu = await measure(lambda: bare_client(client, count), lambda: count[0], seconds)
    rows.append(("bare pymodbus client (baseline)", rate, cpu))
    src, _ = await source_run(source_config({"bus": "b", "unit": 1}, "0.1ms", link), "bench")
    rate, cpu = await measure(src.run, lambda: src.polls, seconds)
    rows.append(("agent source -> counting intake", rate, cpu))
    return rows


def child(kind: str) -> tuple[Any, Any]:
    ctx = mp.get_context("spawn")
    r, w = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=serve, args=(kind, w), daemon=True)
    proc.start()
    return proc, r.recv()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    out: list[str] = []

    t0 = time.monotonic()
    proc, port = child("tcp")
    try:
        rows = asyncio.run(tcp_rows(port, args.seconds))
    finally:
        proc.kill()
    base_rate, base_cpu = rows[0][1], rows[0][2]
    out.append(
        "| Modbus TCP, loopback | polls/s | registers/s | ratio | CPU ms per poll | CPU ratio |"
    )
    out.append("|---|---:|---:|---:|---:|---:|")
    for name, rate, cpu in rows:
        out.append(
            f"| {name} | {rate:,.0f} | {rate * REGISTERS_PER_POLL:,.0f} | {rate / base_rate:.2f} "
            f"| {cpu:.3f} | {cpu / base_cpu:.2f} |"
        )

    proc, link = child("rtu")
    try:
        rows = asyncio.run(rtu_rows(link, args.seconds))
    finally:
        proc.kill()
    # Bytes on the wire per poll: two requests of 8 bytes; answers of 5 + 2 bytes per register.
    wire_bytes = 2 * 8 + (5 + 4 * FLOATS) + (5 + 2 * INTS)
    line_polls = BAUD / BITS_PER_CHAR / wire_bytes
    # The standard's silences: 3.5 characters before each of the 4 frames of a poll.
    gap_polls = BAUD / BITS_PER_CHAR / (wire_bytes + 4 * 3.5)
    base_rate = rows[0][1]
    out.append("")
    out.append(
        f"| Modbus RTU, {BAUD} baud, pty wire | polls/s | registers/s | ratio "
        "| line utilisation | of the limit with 3.5-char gaps |"
    )
    out.append("|---|---:|---:|---:|---:|---:|")
    for name, rate, _cpu in rows:
        out.append(
            f"| {name} | {rate:.2f} | {rate * REGISTERS_PER_POLL:,.0f} | {rate / base_rate:.2f} "
            f"| {rate / line_polls:.1%} | {rate / gap_polls:.1%} |"
        )
    out.append(
        f"| the line's limit (bytes only / with gaps) | {line_polls:.2f} / {gap_polls:.2f} "
        "| | | 100% | |"
    )
    table = "\n".join(out)
    print(table)
    note = (
        f"\nOne poll = 2 reads, {REGISTERS_PER_POLL} registers ({FLOATS} float32 input registers "
        f"and {INTS} int16 holding registers, an energy meter's map); {args.seconds:g} s per row "
        "after 0.5 s warm-up (bare client, then source, then whole agent). "
        "pymodbus' server runs in a child process (its CPU is not counted); CPU "
        "is this process's per poll. `agent source` polls back to back (interval 0.1 ms) into a "
        "counting intake: decoding, exact decimals and frames, no signing; `whole agent` is the "
        "in-process agent with the pipeline signing and journaling every reading (bridge off). "
        f"RTU: the wire relays each frame after the time it takes at {BAUD} baud, "
        f"{wire_bytes} bytes per poll. Took {time.monotonic() - t0:.0f} s.\n"
    )
    print(note)
    if args.write:
        write_section(
            "modbus",
            f"python -m bench.modbus_bench --seconds {args.seconds:g} --write",
            "```\n" + table + "\n```\n" + note,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
