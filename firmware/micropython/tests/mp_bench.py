# Times the firmware's signed-frame encoding under MicroPython (bench/firmware_bench.py).
import json
import time

from edgence.frame import encode_signed_frame

N = 2000
KEY = bytes(range(32))
READINGS = [("temperature", 2137, -2, "Cel"), ("humidity", 45500, -3, "%")]
t0 = time.ticks_ms()
for n in range(N):
    encode_signed_frame(KEY, "dev-1", n, READINGS, timestamp=1764000000)
ms = time.ticks_diff(time.ticks_ms(), t0)
print(json.dumps({"frames": N, "ms": ms}))
