"""BTHome v2 advertisements (service data of UUID 0xFCD2), plain and AES-CCM encrypted.

Pure: no radio. Encryption follows the BTHome v2 spec: nonce = MAC (6) + UUID (d2 fc) +
device info (1) + counter (4, little endian); AES-CCM with a 4-byte MIC and no associated
data. CCM is built here from an AES-ECB block function (RFC 3610), because MicroPython's
`cryptolib` offers only ECB/CBC/CTR; `aes_ecb` is any callable encrypting one 16-byte block.

A legacy advertisement is at most 31 bytes: `plain_adverts` and `encrypted_adverts` split the
objects of one reading over as many adverts as needed (each with its own packet id or
counter), and a plain advert carries the device name only when it still fits.
"""

import struct

UUID16 = b"\xd2\xfc"  # 0xFCD2, little endian as it is sent
INFO_PLAIN = 0x40  # version 2, not encrypted, sent regularly
INFO_ENCRYPTED = 0x41
MIC_LEN = 4
ADV_MAX = 31
# Room for objects: flags (3) + service data header (len, 0x16, UUID, info: 5); encrypted
# adverts also carry the counter (4) and the MIC (4).
PLAIN_ROOM = ADV_MAX - 3 - 5
SEALED_ROOM = PLAIN_ROOM - 4 - MIC_LEN

# object id: (struct format, factor exponent) — the value sent is reading * 10^-exp
OBJECTS = {
    0x00: ("<B", 0),  # packet id
    0x01: ("<B", 0),  # battery, %
    0x02: ("<h", -2),  # temperature, 0.01 Cel
    0x03: ("<H", -2),  # humidity, 0.01 %
    0x04: (None, -2),  # pressure, 0.01 hPa, uint24
    0x0C: ("<H", -3),  # voltage, 0.001 V
}
# (sensor unit) -> object id, for readings the firmware takes
BY_UNIT = {"Cel": 0x02, "%": 0x03, "hPa": 0x04, "V": 0x0C}


class BTHomeError(ValueError):
    pass


def scaled(value, exponent, want_exp):
    """value*10^exponent expressed in units of 10^want_exp, rounded half away from zero."""
    shift = exponent - want_exp
    if shift >= 0:
        return value * 10**shift
    d = 10 ** (-shift)
    q = (abs(value) + d // 2) // d
    return q if value >= 0 else -q


def encode_object(obj_id, raw):
    if obj_id not in OBJECTS:
        raise BTHomeError("object id 0x%02x is not supported by this encoder" % obj_id)
    fmt = OBJECTS[obj_id][0]
    try:
        if fmt is None:
            if not 0 <= raw < 1 << 24:
                raise BTHomeError("object 0x%02x: %d does not fit 24 bits" % (obj_id, raw))
            body = bytes((raw & 0xFF, (raw >> 8) & 0xFF, raw >> 16))
        else:
            lo, hi = {"<B": (0, 255), "<h": (-32768, 32767), "<H": (0, 65535)}[fmt]
            if not lo <= raw <= hi:
                raise BTHomeError("object 0x%02x: %d out of range" % (obj_id, raw))
            body = struct.pack(fmt, raw)
    except (OverflowError, struct.error):
        raise BTHomeError("object 0x%02x: %r out of range" % (obj_id, raw)) from None
    return bytes((obj_id,)) + body


def objects_from_readings(readings, packet_id=None):
    """[(sensor, value, exponent, unit)] -> BTHome objects, sorted by object id as v2 wants."""
    objs = []
    if packet_id is not None:
        objs.append((0x00, packet_id & 0xFF))
    for s, v, e, u in readings:
        if u not in BY_UNIT:
            raise BTHomeError("%s: unit %s has no BTHome object here" % (s, u))
        oid = BY_UNIT[u]
        objs.append((oid, scaled(v, e, OBJECTS[oid][1])))
    # Sorted by id; the position breaks ties, since MicroPython's sort is not stable.
    ordered = sorted([(o[0], i, o[1]) for i, o in enumerate(objs)])
    return b"".join(encode_object(o, raw) for o, _, raw in ordered)


def encoded_objects(readings):
    """Each reading as one encoded BTHome object, sorted by object id (v2 wants ids rising)."""
    objs = []
    for i in range(len(readings)):
        s, v, e, u = readings[i]
        if u not in BY_UNIT:
            raise BTHomeError("%s: unit %s has no BTHome object here" % (s, u))
        oid = BY_UNIT[u]
        objs.append((oid, i, encode_object(oid, scaled(v, e, OBJECTS[oid][1]))))
    objs.sort()  # the position breaks ties, since MicroPython's sort is not stable
    return [o[2] for o in objs]


def groups(objs, room):
    """Consecutive runs of encoded objects, each at most `room` bytes."""
    out, cur, used = [], [], 0
    for o in objs:
        if cur and used + len(o) > room:
            out.append(b"".join(cur))
            cur, used = [], 0
        cur.append(o)
        used += len(o)
    if cur:
        out.append(b"".join(cur))
    return out


def plain_adverts(readings, next_id, name=None):
    """Plain adverts for one reading; `next_id()` numbers each (its low byte is the packet
    id). The name goes into an advert only where it fits."""
    out = []
    for g in groups(encoded_objects(readings), PLAIN_ROOM - 2):
        out.append(advertisement(encode_object(0x00, next_id() & 0xFF) + g, name=name))
    return out


def encrypted_adverts(aes_ecb, mac, readings, next_counter):
    out = []
    for g in groups(encoded_objects(readings), SEALED_ROOM):
        out.append(encrypted_advertisement(aes_ecb, mac, next_counter() & 0xFFFFFFFF, g))
    return out


def service_data(objects, info=INFO_PLAIN):
    """The service data AD structure for plain objects: len, 0x16, UUID, info, objects."""
    body = b"\x16" + UUID16 + bytes((info,)) + objects
    return bytes((len(body),)) + body


def advertisement(objects, name=None):
    """Flags + service data (+ complete local name, if it still fits): the bytes handed to
    gap_advertise."""
    adv = b"\x02\x01\x06" + service_data(objects)
    if name and len(adv) + 2 + len(name) <= ADV_MAX:
        adv += bytes((len(name) + 1, 0x09)) + name.encode()
    if len(adv) > ADV_MAX:
        raise BTHomeError("advertisement is %d bytes, legacy advertising allows 31" % len(adv))
    return adv


def _xor(a, b):
    return bytes(x ^ y for x, y in zip(a, b))


def ccm_encrypt(aes_ecb, nonce, plaintext, mic_len=MIC_LEN):
    """AES-CCM (RFC 3610), no associated data: returns ciphertext + MIC."""
    if len(nonce) != 13:
        raise BTHomeError("CCM nonce must be 13 bytes")
    L = 15 - len(nonce)  # 2 length bytes
    n = len(plaintext)
    # CBC-MAC over B0 and the zero-padded message
    flags = 8 * ((mic_len - 2) // 2) + (L - 1)
    x = aes_ecb(bytes((flags,)) + nonce + n.to_bytes(L, "big"))
    for i in range(0, n, 16):
        block = plaintext[i : i + 16]
        block = block + bytes(16 - len(block))
        x = aes_ecb(_xor(x, block))

    # CTR: A_i = flags(L-1) | nonce | i
    def a(i):
        return bytes((L - 1,)) + nonce + i.to_bytes(L, "big")

    out = bytearray()
    for j, i in enumerate(range(0, n, 16)):
        out += _xor(plaintext[i : i + 16], aes_ecb(a(j + 1)))
    tag = _xor(x[:mic_len], aes_ecb(a(0))[:mic_len])
    return bytes(out) + tag


def encrypted_service_payload(aes_ecb, mac, counter, objects):
    """What follows the UUID in encrypted service data: info, ciphertext, counter, MIC.
    `mac` is the advertiser's address, 6 bytes, most significant first."""
    if len(mac) != 6:
        raise BTHomeError("mac must be 6 bytes")
    ctr = counter.to_bytes(4, "little")
    nonce = mac + UUID16 + bytes((INFO_ENCRYPTED,)) + ctr
    sealed = ccm_encrypt(aes_ecb, nonce, objects)
    return bytes((INFO_ENCRYPTED,)) + sealed[:-MIC_LEN] + ctr + sealed[-MIC_LEN:]


def encrypted_advertisement(aes_ecb, mac, counter, objects):
    body = b"\x16" + UUID16 + encrypted_service_payload(aes_ecb, mac, counter, objects)
    adv = b"\x02\x01\x06" + bytes((len(body),)) + body
    if len(adv) > ADV_MAX:
        raise BTHomeError("advertisement is %d bytes, legacy advertising allows 31" % len(adv))
    return adv


def aes_ecb(key):
    """An AES-ECB block function: MicroPython's cryptolib where the port has it (ESP32 and
    most others), else the pure-Python edgence.aes."""
    try:
        import cryptolib
    except ImportError:
        from edgence import aes

        return aes.ecb(key)

    cipher = cryptolib.aes(key, 1)  # mode 1 = ECB: stateless, so one object serves every block
    return cipher.encrypt
