# The firmware's whole loop (app.Node) under MicroPython: config.json parsed, simulated sensor,
# block counter and outbox in flash, watchdog, and a UART link whose far end goes away for two
# cycles. Prints one JSON object: the serial lines written and the counts (tests/firmware).
import json

from edgence import board, config, mqtt  # noqa: F401  (board, mqtt: they must load here too)
from edgence.app import Node
from edgence.counter import BlockCounter
from edgence.outbox import Outbox
from edgence.sensors import SimulatedSensor
from edgence.serialline import UartLink
from edgence.watchdog import Watchdog

FLASH = globals().get("FLASH", "/flash")
BUNDLE = {
    "edgence": 1,
    "device_id": "uart-1",
    "name": "uart-1",
    "transport": "serial",
    "key_kind": "hmac",
    "key": "0f" * 32,
    "counter_start": 5,
    "sensors": [["temperature", "Cel"]],
    "serial": {"port": "/dev/ttyAMA0"},
    "firmware": {"interval_s": 0.01, "counter_block": 3, "watchdog_s": 0.001},
}


class Uart:  # stands in for machine.UART: the far end takes bytes only while `up`
    def __init__(self):
        self.up = True
        self.lines = []
        self.part = ""

    def write(self, data):
        if not self.up:
            return 0
        self.part += bytes(data).decode()
        if self.part.endswith("\r\n"):
            self.lines.append(self.part)
            self.part = ""
        return len(data)


class Wdt:  # stands in for machine.WDT: counts feeds
    def __init__(self):
        self.fed = 0

    def feed(self):
        self.fed += 1


# boot.py and main.py need `machine` to run; here they must at least compile.
compiled = []
for path in globals().get("SOURCES", ["/boot.py", "/main.py"]):
    with open(path) as f:
        compile(f.read(), path, "exec")
    compiled.append(path.split("/")[-1])

cfg = config.parse(json.dumps(BUNDLE))
uart, wdt = Uart(), Wdt()
dog = Watchdog(wdt, cfg.firmware["watchdog_s"])
counter = BlockCounter(FLASH, cfg.counter_start, cfg.firmware["counter_block"])
node = Node(
    cfg,
    UartLink(uart),
    [SimulatedSensor(seed=3)],
    counter,
    Outbox(FLASH, 4),
    dog,
    clock=lambda: 1764000000,
)
# A 1 ms watchdog window: only a delivery itself feeds the watchdog (sleep slices come later).
feeds = []
node.run(cycles=2)
feeds.append(wdt.fed)
uart.up = False
node.run(cycles=2)
buffered = len(node.outbox)
feeds.append(wdt.fed)
uart.up = True
node.run(cycles=1)
feeds.append(wdt.fed)
print(
    json.dumps(
        {
            "lines": uart.lines,
            "sent": node.sent,
            "buffered_while_down": buffered,
            "left": len(node.outbox),
            "flash_writes": counter.writes,
            "next": counter.peek(),
            "feeds_after_each_phase": feeds,
            "compiled": compiled,
        }
    )
)
