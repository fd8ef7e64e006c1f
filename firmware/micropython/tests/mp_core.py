# The firmware's device-independent core on a fixed scenario: block counter across "reboots",
# RTC retention, the outbox in flash, BTHome (plain and AES-CCM with the pure-Python AES),
# the serial line and a CoAP POST. Runs unchanged under MicroPython (wasm) and CPython; prints
# one JSON object that tests/firmware/test_core.py checks on both.
import json
import os

from edgence import bthome, coap, frame, serialline
from edgence.aes import ecb
from edgence.counter import BlockCounter, CounterError
from edgence.outbox import Outbox
from edgence.slots import Slots

FLASH = globals().get("FLASH", "/flash")
out = {}


def stored():
    return Slots(FLASH + "/counter").read()[0]


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def new_dir(name):
    d = FLASH + "/" + name
    os.mkdir(d)
    return d


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
c = BlockCounter(FLASH, start=10, block=4, rtc=rtc)  # a watchdog reset: exact, no reuse
out["counter"]["reset_after_wake"] = c.next()
out["counter"]["rotated"] = BlockCounter(FLASH, start=1000, block=4).next()
# A power cut mid-write tears only the newest of the two slot files: the previous end is
# read (its block was never used, the write comes first). Both torn is not a power cut.
cases = []
d = new_dir("pc")
c = BlockCounter(d, start=0, block=4)
for _ in range(5):
    c.next()  # ends 4 (counter.a) and 8 (counter.b) written
write(d + "/counter.b", b"1 8 ")
cases.append(BlockCounter(d, start=0, block=4).peek())
write(d + "/counter.a", b"0 4 00")
try:
    BlockCounter(d, start=0, block=4)
    cases.append("accepted")
except CounterError:
    cases.append("CounterError")
# Firmware 0.1's counter.dat is read once and replaced by the slots; a torn one is refused.
d = new_dir("old")
write(d + "/counter.dat", b"500\n")
c = BlockCounter(d, start=0, block=4)
cases.append(c.next())
cases.append(sorted(os.listdir(d)))
d = new_dir("oldbad")
write(d + "/counter.dat", b"5x")
try:
    BlockCounter(d, start=0, block=4)
    cases.append("accepted")
except CounterError:
    cases.append("CounterError")
out["counter"]["power_cut_cases"] = cases

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
box["files_left"] = [n for n in os.listdir(FLASH) if n.startswith("ob.")]
# Segments of two records (capacity 8): the oldest segment goes whole when over budget; a
# partial delivery is resumed after a reboot; a torn tail and a corrupt record are skipped.
d = new_dir("ob8")
o = Outbox(d, capacity=8)
for i in range(11):
    o.put(b'{"i":%d}' % i)
box["seg_frames"] = [f.decode() for f in o.frames()]
box["seg_dropped"] = o.dropped
box["seg_files"] = len([n for n in os.listdir(d) if n.startswith("ob.")])
box["seg_pop"] = o.pop().decode()
o.commit()
o = Outbox(d, capacity=8)
box["seg_after_reboot"] = [o.peek().decode(), len(o)]
last = sorted(n for n in os.listdir(d) if n.startswith("ob."))[-1]
with open(d + "/" + last, "ab") as f:
    f.write(b"\x00\x30{partial")  # a record cut short by a power cut
o = Outbox(d, capacity=8)
box["seg_torn_tail"] = len(o)
o.pop()
with open(d + "/" + sorted(n for n in os.listdir(d) if n.startswith("ob."))[0], "r+b") as f:
    f.seek(3)
    f.write(b"X")  # flips a byte of the next record: its CRC fails
o = Outbox(d, capacity=8)
got = []
while len(o):
    got.append(o.pop().decode())
box["seg_corrupt"] = [got, o.dropped]
box["seg_files_left"] = [n for n in os.listdir(d) if n.startswith("ob.")]
d = new_dir("ob01")
write(d + "/outbox.txt", b'{"n":1}\n{"n":2}\n{"n":')  # firmware 0.1's, cut by a power loss
o = Outbox(d, capacity=8)
box["migrated"] = [[f.decode() for f in o.frames()], sorted(os.listdir(d))]
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
