# A day in the field for the firmware's loop under MicroPython on a fixed heap, one cycle per
# runPython call (run_steps.mjs): online, then the gateway's UART end gone for OUTAGE cycles
# (24 h of one reading a minute by default), then back until the backlog is delivered.
# Four readings per frame (a BME280 and a battery voltage). Prints one JSON object from
# report(): heap figures, what reached the gateway, what the outbox dropped and reported.
import gc
import json

import micropython  # noqa: F401  (the port's own module: this runs on MicroPython only)

_heap0 = gc.mem_free() + gc.mem_alloc()  # mem_free counts the areas the port may add
_boot0 = gc.mem_alloc()

from edgence import app, config  # noqa: E402
from edgence.app import Node  # noqa: E402
from edgence.counter import BlockCounter  # noqa: E402
from edgence.outbox import Outbox  # noqa: E402
from edgence.serialline import UartLink  # noqa: E402

ONLINE, OUTAGE, CAPACITY = globals().get("PLAN", (10, 1440, 256))
BUNDLE = {
    "edgence": 1,
    "device_id": "field-0001",
    "transport": "serial",
    "key": "0f" * 32,
    "counter_start": 0,
    "serial": {"port": "/dev/ttyAMA0"},
    "firmware": {"interval_s": 60, "counter_block": 64, "outbox": CAPACITY},
}


class Uart:  # stands in for machine.UART: the far end takes bytes only while `up`
    def __init__(self):
        self.up = True
        self.lines = 0
        self.last = None
        self.reported_drops = 0

    def write(self, data):
        if not self.up:
            return 0
        if data.endswith(b"\r\n"):  # the line's end ('*', CRC-32, CR LF), or a whole line
            self.lines += 1
            if data[:1] == b"*":
                return len(data)
        n = int(data[data.find(b'"n":') + 4 : data.find(b",", data.find(b'"n":'))])
        self.in_order = self.last is None or n > self.last
        if not self.in_order:
            raise AssertionError("counter %d after %d" % (n, self.last))
        self.last = n
        i = data.find(b'"s":"outbox_dropped","v":')
        if i >= 0:  # the total lost since boot
            self.reported_drops = int(data[i + 25 : data.find(b",", i + 25)])
        return len(data)


class Bme280AndBattery:  # stands in for the sensor drivers: four readings, exact integers
    kind = "bme280"

    def __init__(self):
        self.k = 0

    def read(self):
        self.k += 1
        return [
            ("temperature", 2100 + self.k % 50, -2, "Cel"),
            ("humidity", 45000 + self.k % 300, -3, "%"),
            ("pressure", 101325 + self.k % 20, -2, "hPa"),
            ("battery", 3700 - self.k % 10, -3, "V"),
        ]


cfg = config.parse(json.dumps(BUNDLE))
uart = Uart()
node = Node(
    cfg,
    UartLink(uart),
    [Bme280AndBattery()],
    BlockCounter("/flash", cfg.counter_start, cfg.firmware["counter_block"]),
    Outbox("/flash", cfg.firmware["outbox"]),
    clock=lambda: 1764000000 + node.counter.peek() * 60,
)
app.gc = None  # the runner collects between calls; a collection inside a call is not possible
app.log = lambda event, **kv: None  # the console lines cost the same on every cycle: not here
gc.collect()
stats = {
    "boot_live": gc.mem_alloc(),
    "boot_peak_grew": gc.mem_free() + gc.mem_alloc() - _heap0,
    "cycle_peak": 0,  # heap in use at the end of a cycle, before its collection
    "cycle_alloc": 0,  # allocated within one cycle
    "live_after": 0,  # heap in use after the collection between cycles
    "grew": 0,  # cycles that needed more heap than the fixed size
    "buffered_max": 0,
    "outage_cycles": 0,
}


def step(i):
    live = gc.mem_alloc()
    if live > stats["live_after"]:
        stats["live_after"] = live
    uart.up = not (ONLINE <= i < ONLINE + OUTAGE)
    if not uart.up:
        stats["outage_cycles"] += 1
    node.step()
    end = gc.mem_alloc()
    if end > stats["cycle_peak"]:
        stats["cycle_peak"] = end
    if end - live > stats["cycle_alloc"]:
        stats["cycle_alloc"] = end - live
    if gc.mem_free() + end - _heap0 > 0:
        stats["grew"] += 1
    if len(node.outbox) > stats["buffered_max"]:
        stats["buffered_max"] = len(node.outbox)


def report():
    stats.update(
        heap=_heap0 - 134217728 if _heap0 > 134217728 else _heap0,
        delivered=uart.lines,
        sent=node.sent,
        left=len(node.outbox),
        dropped=node.outbox.dropped,
        reported_drops=uart.reported_drops,
        outbox_records_written=getattr(node.outbox, "writes", None),
        counter_writes=node.counter.writes,
        next=node.counter.peek(),
        encode_errors=getattr(node, "encode_errors", None),
    )
    print(json.dumps(stats))
