# The firmware's device-independent core on a fixed scenario: block counter across "reboots",
# RTC retention, the outbox in flash, BTHome (plain and AES-CCM with the pure-Python AES),
# the serial line and a CoAP POST. Runs unchanged under MicroPython (wasm) and CPython; prints
# one JSON object that tests/firmware/test_core.py checks on both.
import json
import os

from edgence import bthome, coap, frame, serialline
from edgence.aes import ecb
from edgence.counter import BlockCounter
from edgence.outbox import Outbox

FLASH = globals().get("FLASH", "/flash")
out = {}


def stored():
    with open(FLASH + "/counter.dat") as f:
        return int(f.read())


class RTC:  # stands in for machine.RTC: memory that survives deep sleep
    def __init__(self):
        self.mem = b""

    def memory(self, data=None):
        if data is None:
            return self.mem
        self.mem = bytes(data)


c = BlockCounter(FLASH, start=10, block=4)
first = [c.next() for _ in range(6)]
out["counter"] = {"first": first, "writes": c.writes, "stored": stored()}
c = BlockCounter(FLASH, start=10, block=4)  # power cycle: continue after the reserved block
out["counter"]["after_reboot"] = [c.next()]
out["counter"]["writes_after_reboot"] = c.writes
rtc = RTC()
c.retain()  # no RTC: nothing kept
c = BlockCounter(FLASH, start=10, block=4, rtc=rtc)
n = c.next()
c.retain()
c = BlockCounter(FLASH, start=10, block=4, rtc=rtc)  # deep sleep: RTC memory survived
out["counter"]["deep_sleep"] = [n, c.next(), c.next()]
out["counter"]["deep_sleep_writes"] = c.writes
c = BlockCounter(FLASH, start=10, block=4, rtc=rtc)  # a reset without retain(): no reuse
out["counter"]["reset_after_wake"] = c.next()
out["counter"]["rotated"] = BlockCounter(FLASH, start=1000, block=4).next()
# A power cut mid-write on a filesystem without atomic rename leaves a .tmp copy beside (or
# instead of) the file: the larger complete value wins, a torn one is ignored.
tmp_cases = []
for tmp_text in ("2000\n", "x", "1"):
    with open(FLASH + "/counter.dat.tmp", "w") as f:
        f.write(tmp_text)
    tmp_cases.append(BlockCounter(FLASH, start=0, block=4).peek())
os.remove(FLASH + "/counter.dat")
tmp_cases.append(BlockCounter(FLASH, start=0, block=4).peek())
os.remove(FLASH + "/counter.dat.tmp")
out["counter"]["tmp_cases"] = tmp_cases

o = Outbox(FLASH, capacity=3)
for i in range(5):
    o.put(b'{"i":%d}' % i)
box = {"frames": [f.decode() for f in o.frames()], "dropped": o.dropped}
o = Outbox(FLASH, capacity=3)
box["reloaded"] = [f.decode() for f in o.frames()]
o.pop()
box["after_pop"] = [f.decode() for f in Outbox(FLASH, capacity=3).frames()]
o.pop()
o.pop()
box["file_left"] = "outbox.txt" in os.listdir(FLASH)
out["outbox"] = box

readings = [("temperature", 2506, -2, "Cel"), ("humidity", 50551, -3, "%")]
objs = bthome.objects_from_readings(readings)
out["bthome_objects"] = frame.hex_of(objs)
out["bthome_plain"] = frame.hex_of(
    bthome.advertisement(bthome.objects_from_readings(readings, packet_id=7), name="b1")
)
key = bytes(
    [0x23, 0x1D, 0x39, 0xC1, 0xD7, 0xCC, 0x1A, 0xB1, 0xAE, 0xE2, 0x24, 0xCD, 0x09, 0x6D, 0xB9, 0x32]
)
mac = bytes([0x54, 0x48, 0xE6, 0x8F, 0x80, 0xA5])
out["bthome_encrypted"] = frame.hex_of(
    bthome.encrypted_service_payload(ecb(key), mac, 0x33221100, objs)
)

fr = frame.encode_signed_frame(
    bytes(range(32)), "dev-1", 42, [("temperature", 2137, -2, "Cel")], timestamp=1764000000
)
out["serial_line"] = serialline.encode_line(fr).decode()
out["crc32"] = "%08x" % serialline.crc32(fr)
out["coap_post"] = frame.hex_of(coap.encode_post(0x1234, b"\x01\x02\x03\x04", "/up/dev-1", fr))
print(json.dumps(out))
