"""The README's performance table, generated from bench/RESULTS.md so that every figure has one
source. `python -m bench.figures --write` rewrites the block between the README's
`<!-- figures:start -->` and `<!-- figures:end -->`; a unit test fails when they differ.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "RESULTS.md"
README = ROOT / "README.md"
START, END = "<!-- figures:start -->", "<!-- figures:end -->"

Row = dict[str, str]


def sections(text: str) -> dict[str, list[list[Row]]]:
    """Each `<!-- name:start -->` section of RESULTS.md as its markdown tables (rows keyed by
    the header's column names)."""
    out: dict[str, list[list[Row]]] = {}
    for m in re.finditer(r"<!-- ([\w-]+):start -->(.*?)<!-- \1:end -->", text, re.S):
        tables: list[list[Row]] = []
        header: list[str] | None = None
        for line in m.group(2).splitlines():
            if not line.startswith("|"):
                header = None
                continue
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if header is None:
                header = cells
                tables.append([])
            elif not all(set(c) <= set("-:") for c in cells):
                tables[-1].append(dict(zip(header, cells, strict=False)))
        out[m.group(1)] = tables
    return out


def number(text: str) -> float:
    return float(text.replace(",", "").lstrip("+"))


@dataclass(frozen=True)
class Source:
    section: str
    table: int
    row: Callable[[Row], bool]

    def get(self, data: dict[str, list[list[Row]]]) -> Row:
        rows = [r for r in data[self.section][self.table] if self.row(r)]
        if len(rows) != 1:
            raise LookupError(f"bench/RESULTS.md section {self.section}: {len(rows)} rows match")
        return rows[0]


def first(prefix: str, **equal: str) -> Callable[[Row], bool]:
    """A row whose first cell starts with `prefix` and whose named cells equal the given."""

    def match(r: Row) -> bool:
        cells = list(r.values())
        return cells[0].startswith(prefix) and all(r.get(k) == v for k, v in equal.items())

    return match


@dataclass(frozen=True)
class Figure:
    """One README row: what, the figure (rendered from rows of RESULTS.md), and its target."""

    what: str
    render: Callable[[dict[str, list[list[Row]]]], str]
    targets: tuple[tuple[str, Callable[[dict[str, list[list[Row]]]], bool]], ...] = ()


INGEST_AGENT = Source("ingest", 0, first("edgence-agent (synchronous=normal)", offered="max"))
INGEST_RELAY = Source("ingest", 0, first("bare paho relay", offered="max"))
INGEST_1K = Source("ingest", 0, first("edgence-agent (synchronous=normal)", offered="1000/s"))
COAP = Source("coap", 0, first("edgence-agent"))
AUTH = Source("ingest-auth", 0, first("enrolled"))
FWD_MQTT = Source("forward", 0, first("forwarded over MQTT 5"))
FWD_COAP = Source("forward", 0, first("forwarded over CoAP"))
ORACLE_MQTT = Source("oracle", 0, first("MQTT 5 oracle query"))
ORACLE_COAP = Source("oracle", 0, first("CoAP GET"))
BLE = Source("ble", 1, first("signed observation upstream"))
COST = "path (one core)"
COST_AGENT = Source("ingest-cost", 0, lambda r: r[COST] == "edgence-agent")
COST_BATCHED = Source("ingest-cost", 0, first("edgence-agent, envelopes_per_message"))
COST_RELAY = Source("ingest-cost", 0, first("bare paho relay"))


def named(name: str) -> Callable[[Row], bool]:
    """The row whose first cell is exactly `name`."""
    return lambda r: next(iter(r.values()), None) == name


MEM = {
    k: Source("memory", 0, named(k))
    for k in ("MQTT only", "MQTT only (asyncio event loop)", "all sources", "all chain features")
}
MEM_PEAK = "peak RSS MB (median)"
CATCHUP = Source("catchup", 0, first("envelopes_per_message", backlog="1,000,000"))
CATCHUP_SINGLE = Source("catchup", 0, first("one envelope per message"))
PEER_TB = Source("peer", 0, first("ThingsBoard IoT Gateway, memory storage"))
PEER_AGENT = Source("peer", 0, first("edgence-agent"))
CPU_OBS = "CPU µs per observation (median)"
LIVE = "live accepted p50 / p99 ms during drain"
SERIAL = Source("serial", 1, lambda r: True)


def _fwd(src: Source) -> Callable[[dict[str, list[list[Row]]]], str]:
    return lambda d: (
        f"{src.get(d)['added p50 ms']} ms added p50; {src.get(d)['ratio to direct']}× the direct "
        f"throughput; {src.get(d)['agent CPU µs per request']} µs agent CPU per request"
    )


def _fwd_targets(
    src: Source,
) -> tuple[tuple[str, Callable[[dict[str, list[list[Row]]]], bool]], ...]:
    return (
        ("added p50 ≤ 2 ms", lambda d: number(src.get(d)["added p50 ms"]) <= 2.0),
        ("≥ 0.5× direct", lambda d: number(src.get(d)["ratio to direct"]) >= 0.5),
    )


def _fwd_relay(d: dict[str, list[list[Row]]]) -> str:
    return (
        f"{FWD_MQTT.get(d)['ratio to relay']}× the same-hop relay's throughput; "
        f"{FWD_MQTT.get(d)['agent CPU µs per request']} µs agent CPU per request"
    )


def _p99(cell: str) -> float:
    return number(cell.split("/")[1])


FIGURES = [
    Figure(
        "CPU per observation on one core at maximum rate (MQTT in, QoS 1, signed, journaled, "
        "bridged)",
        lambda d: (
            f"{COST_AGENT.get(d)[CPU_OBS]} µs; with envelopes_per_message = 32: "
            f"{COST_BATCHED.get(d)[CPU_OBS]} µs (bare relay on the same core: "
            f"{COST_RELAY.get(d)[CPU_OBS]} µs)"
        ),
        (
            ("≤ 150 µs", lambda d: number(COST_AGENT.get(d)[CPU_OBS]) <= 150),
            ("batched ≤ 150 µs", lambda d: number(COST_BATCHED.get(d)[CPU_OBS]) <= 150),
        ),
    ),
    Figure(
        "agent peak memory at 1,000 readings/s: MQTT only (on asyncio's own event loop) / all "
        "sources / all chain features",
        lambda d: (
            f"{MEM['MQTT only'].get(d)[MEM_PEAK]} MB "
            f"({MEM['MQTT only (asyncio event loop)'].get(d)[MEM_PEAK]} MB) / "
            f"{MEM['all sources'].get(d)[MEM_PEAK]} MB / "
            f"{MEM['all chain features'].get(d)[MEM_PEAK]} MB"
        ),
        (("MQTT only ≤ 40 MB", lambda d: number(MEM["MQTT only"].get(d)[MEM_PEAK]) <= 40),),
    ),
    Figure(
        "catch-up after an outage (backlog drained while 1,000 live readings/s go on), "
        "envelopes_per_message = 32",
        lambda d: (
            f"{CATCHUP.get(d)['drain /s']} observations/s, empty after "
            f"{CATCHUP.get(d)['time to empty s']} s of {CATCHUP.get(d)['backlog']}; live "
            f"readings accepted p99 {_p99(CATCHUP.get(d)[LIVE]):g} ms (one envelope per "
            f"message, backlog {CATCHUP_SINGLE.get(d)['backlog']}: "
            f"{CATCHUP_SINGLE.get(d)['drain /s']}/s, live p99 "
            f"{_p99(CATCHUP_SINGLE.get(d)[LIVE]):g} ms)"
        ),
        (
            ("drain ≥ 10,000/s", lambda d: number(CATCHUP.get(d)["drain /s"]) >= 10_000),
            ("live p99 ≤ 50 ms", lambda d: _p99(CATCHUP.get(d)[LIVE]) <= 50),
        ),
    ),
    Figure(
        "ThingsBoard IoT Gateway (MQTT connector, memory storage) on the same load",
        lambda d: (
            f"{PEER_TB.get(d)['readings/s']} readings/s at most against "
            f"{PEER_AGENT.get(d)['readings/s']}; CPU {PEER_TB.get(d)['gateway CPU µs per reading']}"
            f" µs against {PEER_AGENT.get(d)['gateway CPU µs per reading']} µs per reading; lost "
            f"after SIGKILL {PEER_TB.get(d)['lost after SIGKILL mid-stream']} against "
            f"{PEER_AGENT.get(d)['lost after SIGKILL mid-stream']}"
        ),
    ),
    Figure(
        "ingest over MQTT, maximum rate (median of interleaved runs)",
        lambda d: (
            f"{INGEST_AGENT.get(d)['throughput /s (median)']} observations/s, "
            f"{INGEST_AGENT.get(d)['ratio to relay']}× the bare relay "
            f"({INGEST_RELAY.get(d)['throughput /s (median)']}/s)"
        ),
    ),
    Figure(
        "CPU per observation at maximum rate",
        lambda d: (
            f"{INGEST_AGENT.get(d)['CPU µs per message (median)']} µs (the relay: "
            f"{INGEST_RELAY.get(d)['CPU µs per message (median)']} µs, no checking or signing)"
        ),
    ),
    Figure(
        "reading → upstream latency at 1,000 readings/s",
        lambda d: f"p50 {INGEST_1K.get(d)['p50 ms']} ms, p99 {INGEST_1K.get(d)['p99 ms']} ms",
        (("p99 ≤ 10 ms", lambda d: number(INGEST_1K.get(d)["p99 ms"]) <= 10),),
    ),
    Figure(
        "CPU per observation at 1,000 readings/s",
        lambda d: f"{INGEST_1K.get(d)['CPU µs per message (median)']} µs",
    ),
    Figure(
        "agent peak memory / start to ready / SIGTERM to exit",
        lambda d: (
            f"{INGEST_AGENT.get(d)['agent peak RSS MB']} MB / "
            f"{INGEST_AGENT.get(d)['agent ready s']} s / {INGEST_AGENT.get(d)['agent stop s']} s"
        ),
    ),
    Figure(
        "enrolled devices (HMAC per frame) against allowlisted",
        lambda d: f"{AUTH.get(d)['ratio']}× ({AUTH.get(d)['throughput /s (median)']}/s)",
        (("≥ 0.8×", lambda d: number(AUTH.get(d)["ratio"]) >= 0.8),),
    ),
    Figure(
        "CoAP confirmable POSTs, signed and journaled, against a bare aiocoap server",
        lambda d: (
            f"{COAP.get(d)['ratio to bare']}× ({COAP.get(d)['throughput /s (median)']}/s), "
            f"p50 {COAP.get(d)['p50 ms']} ms"
        ),
        (("≥ 0.6×", lambda d: number(COAP.get(d)["ratio to bare"]) >= 0.6),),
    ),
    Figure(
        "serial at 115200 baud for 60 s",
        lambda d: (
            f"{SERIAL.get(d)['signed']} of {SERIAL.get(d)['observations expected']} observations "
            f"signed, {SERIAL.get(d)['lost']} lost, {SERIAL.get(d)['agent CPU % of one core']} % "
            f"of one core"
        ),
    ),
    Figure(
        "BLE (BTHome, encrypted) advert → signed observation upstream",
        lambda d: f"p50 {BLE.get(d)['p50 ms']} ms, p99 {BLE.get(d)['p99 ms']} ms",
    ),
    Figure(
        "dApp request forwarded over MQTT 5 (eth_call on anvil)",
        _fwd(FWD_MQTT),
        _fwd_targets(FWD_MQTT),
    ),
    Figure(
        "dApp request forwarded over MQTT 5, against a same-hop relay (paho responder, no checks)",
        _fwd_relay,
        (
            ("≥ 0.8× relay", lambda d: number(FWD_MQTT.get(d)["ratio to relay"]) >= 0.8),
            (
                "≤ 100 µs",
                lambda d: number(FWD_MQTT.get(d)["agent CPU µs per request"]) <= 100,
            ),
        ),
    ),
    Figure(
        "dApp request forwarded over CoAP",
        _fwd(FWD_COAP),
        _fwd_targets(FWD_COAP),
    ),
    Figure(
        "oracle query round trip, MQTT 5 / CoAP",
        lambda d: f"p50 {ORACLE_MQTT.get(d)['p50 ms']} ms / {ORACLE_COAP.get(d)['p50 ms']} ms",
    ),
]


def render(results: str) -> str:
    """The README block (markers included) for this RESULTS.md text."""
    data = sections(results)
    lines = [
        START,
        "<!-- generated by `python -m bench.figures --write` from bench/RESULTS.md; "
        "do not edit by hand -->",
        "",
        "| what | latest recorded result (bench/RESULTS.md) | target |",
        "|---|---|---|",
    ]
    for f in FIGURES:
        try:
            figure = f.render(data)
            target = "; ".join(
                f"{text}: {'met' if met(data) else '**missed**'}" for text, met in f.targets
            )
        except (KeyError, LookupError):  # its benchmark has not recorded this yet
            figure = "not recorded in bench/RESULTS.md"
            target = "; ".join(f"{text}: not measured" for text, _ in f.targets)
        lines.append(f"| {f.what} | {figure} | {target or '-'} |")
    lines.append(END)
    return "\n".join(lines)


def readme_block(readme: str) -> str:
    start, end = readme.index(START), readme.index(END) + len(END)
    return readme[start:end]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--write", action="store_true", help="rewrite the README's block")
    args = ap.parse_args(argv)
    block = render(RESULTS.read_text(encoding="utf-8"))
    if not args.write:
        print(block)
        return 0
    readme = README.read_text(encoding="utf-8")
    README.write_text(readme.replace(readme_block(readme), block), encoding="utf-8")
    print(f"{README}: performance table rewritten from {RESULTS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
