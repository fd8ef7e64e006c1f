# An update on a fixed heap (run_steps.mjs): boot imports what a board running the MQTT loop
# has for commands (otaboot, edgence.downlink with its handler table) and takes the manifest
# steps (/flash/p1../flash/p4, one command each, read as a board receives them: one at a time);
# each step(i) then handles one ota_block command, as a board would between two readings, and
# the last ota_apply. Prints one JSON object from report(): heap figures.
import gc
import json

import micropython  # noqa: F401  (the port's own module: this runs on MicroPython only)

_heap0 = gc.mem_free() + gc.mem_alloc()

import os  # noqa: E402

import otaboot  # noqa: E402
from edgence.downlink import Downlink, standard_handlers  # noqa: E402

os.chdir("/flash")


def _payload(n):
    with open("p%d" % n) as f:
        return f.read()


class Cfg:
    key = bytes(range(32))
    device_id = "dev-1"
    firmware = {}  # noqa: RUF012


class Machine:
    resets = 0

    def reset(self):
        Machine.resets += 1


class Node:
    cfg = Cfg


otaboot.boot()
node = Node()
node.downlink = Downlink(Cfg, {}, ".")
node.downlink.handlers = standard_handlers(node, Machine(), "0.1.0")
_statuses = []
_MANIFEST = 4  # ota_status, ota_begin, ota_file, ota_manifest


def _run(payload):
    a = node.downlink.handle(payload.encode())
    node.downlink.run_after()
    _statuses.append(a[a.find(b'"st":"') + 6 : a.find(b'","r"')].decode())


for _n in range(1, _MANIFEST + 1):
    _run(_payload(_n))
gc.collect()
stats = {
    "heap": _heap0 - 134217728 if _heap0 > 134217728 else _heap0,  # as mp_field.py reports it
    "boot_live": gc.mem_alloc(),
    "boot_grew": gc.mem_free() + gc.mem_alloc() - _heap0,
    "step_peak": 0,
    "grew": 0,
}


def step(i):
    _run(_payload(_MANIFEST + 1 + i))
    end = gc.mem_alloc()
    if end > stats["step_peak"]:
        stats["step_peak"] = end
    if gc.mem_free() + end - _heap0 > 0:
        stats["grew"] += 1


def report():
    gc.collect()
    stats["live_after"] = gc.mem_alloc()
    stats["statuses"] = _statuses
    stats["resets"] = Machine.resets
    print(json.dumps(stats))
