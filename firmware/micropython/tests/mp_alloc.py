# Bytes the firmware allocates for one signed 4-reading frame and for the BTHome adverts of
# one reading (plain with the device name, and encrypted), under MicroPython: gc.mem_alloc()
# before and after, collections disabled in between. Prints one JSON object.
import gc
import json

from edgence import bthome
from edgence.aes import ecb
from edgence.frame import encode_signed_frame

KEY = bytes(range(32))
BINDKEY = bytes(range(16))
MAC = b"\x54\x48\xe6\x8f\x80\xa5"
READINGS = [
    ("temperature", 2137, -2, "Cel"),
    ("humidity", 45500, -3, "%"),
    ("pressure", 101325, -2, "hPa"),
    ("battery", 3700, -3, "V"),
]


class Numbers:
    def __init__(self):
        self.n = 0

    def next(self):
        self.n += 1
        return self.n


def allocated(fn, rounds=8):
    fn()  # first use builds the per-key pads and per-shape templates
    gc.collect()
    gc.disable()
    a = gc.mem_alloc()
    for _ in range(rounds):
        fn()
    b = gc.mem_alloc()
    gc.enable()
    gc.collect()
    return (b - a) // rounds


nums = Numbers()
aes = ecb(BINDKEY)
if not hasattr(bthome, "plain_adverts"):  # firmware 0.1 (bench/firmware_bench.py "before")

    def _plain(readings, next_id, name=None):
        objs = bthome.objects_from_readings(readings, packet_id=next_id())
        try:
            return [bthome.advertisement(objs, name=name)]
        except bthome.BTHomeError:  # 33 bytes with the name: 0.1 raised here
            return [bthome.advertisement(objs)]

    def _sealed(aes_ecb, mac, readings, next_counter):
        objs = bthome.objects_from_readings(readings)
        return [bthome.encrypted_advertisement(aes_ecb, mac, next_counter(), objs)]

    bthome.plain_adverts, bthome.encrypted_adverts = _plain, _sealed
out = {
    "frame": allocated(lambda: encode_signed_frame(KEY, "dev-0001", 7, READINGS, 1764000000)),
    "frame_len": len(encode_signed_frame(KEY, "dev-0001", 7, READINGS, 1764000000)),
    "advert_plain": allocated(lambda: bthome.plain_adverts(READINGS, nums.next, "dev-0001")),
    "advert_encrypted": allocated(
        lambda: bthome.encrypted_adverts(aes, MAC, READINGS, nums.next), rounds=2
    ),
}
print(json.dumps(out))
