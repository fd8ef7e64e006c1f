"""AES-128 encryption of one block in pure Python (FIPS-197), for ports without `cryptolib`
and for running the BTHome encoder under MicroPython builds that lack it. Encryption only:
CCM never needs the inverse cipher. Slow (a few ms per block on a microcontroller), which is
fine for one advertisement per reading.
"""


def _xtime(a):
    a <<= 1
    return (a ^ 0x11B) if a & 0x100 else a


def _make_sbox():
    # S-box from the multiplicative inverse in GF(2^8) and the affine map (FIPS-197, 5.1.1).
    exp, log = [0] * 256, [0] * 256
    x = 1
    for i in range(255):
        exp[i] = x
        log[x] = i
        x ^= _xtime(x)  # multiply by 3, a generator
    sbox = bytearray(256)
    for a in range(256):
        inv = 0 if a == 0 else exp[(255 - log[a]) % 255]
        s = inv
        for k in range(1, 5):
            s ^= ((inv << k) | (inv >> (8 - k))) & 0xFF
        sbox[a] = s ^ 0x63
    return bytes(sbox)


SBOX = _make_sbox()
XTIME = bytes(_xtime(a) & 0xFF for a in range(256))  # multiplication by 2 in GF(2^8)


def expand_key(key):
    if len(key) != 16:
        raise ValueError("AES-128 needs a 16-byte key")
    w = bytearray(key)
    rcon = 1
    for i in range(16, 176, 4):
        t = w[i - 4 : i]
        if i % 16 == 0:
            t = bytearray((SBOX[t[1]] ^ rcon, SBOX[t[2]], SBOX[t[3]], SBOX[t[0]]))
            rcon = _xtime(rcon)
        for j in range(4):
            w.append(w[i - 16 + j] ^ t[j])
    return bytes(w)


def encrypt_block(round_keys, block):
    # Two 16-byte states and small integers only: no slices or generators per round.
    s = bytearray(16)
    t = bytearray(16)
    for i in range(16):
        s[i] = block[i] ^ round_keys[i]
    for rnd in range(1, 11):
        # SubBytes + ShiftRows (state is column-major: byte r + 4c)
        for c in range(4):
            for r in range(4):
                t[r + 4 * c] = SBOX[s[r + 4 * ((c + r) % 4)]]
        if rnd < 10:  # MixColumns
            for c in range(0, 16, 4):
                a0 = t[c]
                a1 = t[c + 1]
                a2 = t[c + 2]
                a3 = t[c + 3]
                x = a0 ^ a1 ^ a2 ^ a3
                t[c] = a0 ^ x ^ XTIME[a0 ^ a1]
                t[c + 1] = a1 ^ x ^ XTIME[a1 ^ a2]
                t[c + 2] = a2 ^ x ^ XTIME[a2 ^ a3]
                t[c + 3] = a3 ^ x ^ XTIME[a3 ^ a0]
        k = 16 * rnd
        for i in range(16):
            s[i] = t[i] ^ round_keys[k + i]
    return bytes(s)


def ecb(key):
    """An AES-ECB block function like bthome.cryptolib_ecb's, in pure Python."""
    rk = expand_key(key)

    def enc(block):
        return encrypt_block(rk, block)

    return enc
