# Runs under MicroPython: what the firmware makes of the shared frame vectors' inputs.
# Prints one JSON object; the pytest side compares it with tests/vectors/device_frames.json.
import json
import sys
from binascii import unhexlify

from edgence import frame

with open("/vectors.json") as f:
    vectors = json.load(f)["device_frames"]
out = []
for v in vectors:
    key = unhexlify(v["key"])
    readings = [tuple(r) for r in v["readings"]]
    canon = frame.canonical_bytes(v["device_id"], v["counter"], v["timestamp"], readings)
    out.append(
        {
            "unsigned": frame.encode_frame(
                v["counter"], readings, timestamp=v["timestamp"]
            ).decode(),
            "canonical": canon.decode(),
            "mac": frame.hex_of(frame.hmac_sha256(key, canon)),
            "signed": frame.encode_signed_frame(
                key, v["device_id"], v["counter"], readings, timestamp=v["timestamp"]
            ).decode(),
        }
    )
print(json.dumps({"implementation": sys.implementation.name, "results": out}))
