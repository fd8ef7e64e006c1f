# An over-the-air update on the firmware's side (edgence.ota, otaboot) from the steps of /ota.json:
# ["cmd", payload] runs a command framed by the agent, ["boot"] is a reset (a new Downlink: RAM
# is gone; otaboot.boot()), ["confirm"] the first delivered reading, ["files", paths] what the
# flash holds. Runs unchanged under MicroPython (wasm) and CPython; prints one JSON object (the
# answers, boot states and file digests) that tests/firmware/test_ota.py checks on both.
import hashlib
import json
import os

FLASH = globals().get("FLASH", "/flash")
SPEC = globals().get("SPEC", "/ota.json")

with open(SPEC) as f:
    spec = json.load(f)
os.chdir(FLASH)
for path, text in spec["flash"]:
    d = ""
    for part in path.split("/")[:-1]:
        d = part if not d else d + "/" + part
        try:
            os.mkdir(d)
        except OSError:
            pass
    with open(path, "w") as f:
        f.write(text)

import otaboot  # noqa: E402
from edgence.downlink import Downlink, standard_handlers  # noqa: E402
from edgence.frame import hex_of  # noqa: E402


class Cfg:
    key = bytes.fromhex(spec["key"])
    device_id = spec["device"]
    firmware = {}  # noqa: RUF012


class Machine:
    resets = 0

    def reset(self):
        Machine.resets += 1


class Node:
    cfg = Cfg


def boot():
    node = Node()
    node.downlink = Downlink(Cfg, {}, ".")
    node.downlink.handlers = standard_handlers(node, Machine(), "0.1.0")
    return node, otaboot.boot()


def digest(path):
    try:
        with open(path, "rb") as f:
            return hex_of(hashlib.sha256(f.read()).digest())
    except OSError:
        return None


node, _ = boot()
out = []
for step in spec["steps"]:
    if step[0] == "cmd":
        a = node.downlink.handle(step[1].encode())
        node.downlink.run_after()
        out.append(None if a is None else a.decode())
    elif step[0] == "boot":
        node, st = boot()
        out.append(None if st is None else [st["st"], st["boots"]])
    elif step[0] == "confirm":
        otaboot.confirm()
        out.append(otaboot.read()["st"])
    else:
        out.append([digest(p) for p in step[1]])
print(json.dumps({"out": out, "resets": Machine.resets}))
