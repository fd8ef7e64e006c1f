# The firmware's command handling (edgence.downlink) on commands framed by the agent: runs each
# payload of /cmds.json, "reboots" (a new Downlink on the same flash) and runs the rest. Runs
# unchanged under MicroPython (wasm) and CPython; prints one JSON object that
# tests/firmware/test_downlink.py checks on both.
import json

from edgence.downlink import CommandError, Downlink

FLASH = globals().get("FLASH", "/flash")
CMDS = globals().get("CMDS", "/cmds.json")

with open(CMDS) as f:
    spec = json.load(f)


class Cfg:
    key = bytes.fromhex(spec["key"])
    device_id = spec["device"]


pins = {}


def set_output(args):
    if args.get("pin") not in (2, 4):
        raise CommandError("pin not allowed")
    pins[args["pin"]] = args["value"]
    return {"pin": args["pin"], "value": args["value"]}


def boom(args):
    raise RuntimeError("sensor bus stuck")


HANDLERS = {
    "set_output": set_output,
    "version": lambda args: {"version": "0.1.0"},
    "boom": boom,
}


def run(dl, payloads):
    out = []
    for p in payloads:
        a = dl.handle(p.encode())
        out.append(None if a is None else a.decode())
    return out


dl = Downlink(Cfg, HANDLERS, FLASH, clock=lambda: spec["now"])
first = run(dl, spec["before"])
executed_before = dl.executed
dl2 = Downlink(Cfg, HANDLERS, FLASH, clock=lambda: spec["now"])  # a reboot: RAM is gone
last_after_reboot = dl2.last
second = run(dl2, spec["after"])
print(
    json.dumps(
        {
            "before": first,
            "after": second,
            "executed": [executed_before, dl2.executed],
            "refused": [dl.refused, dl2.refused],
            "last_after_reboot": last_after_reboot,
            "pins": {str(k): pins[k] for k in pins},
        }
    )
)
