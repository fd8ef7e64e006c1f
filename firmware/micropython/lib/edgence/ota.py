"""Receiving an over-the-air update through the command channel (docs/ota.md): the manifest
(ota_begin, one ota_file per file, ota_manifest with its MAC under the device key, bound to the
device id and the downlink counter of ota_begin), the blocks (ota_block: file, index, SHA-256;
appended to ota/new/), ota_apply (every file's SHA-256 checked again; otaboot switches at the
reboot that follows) and ota_status. Imported at the first ota_* command only.
"""

import hashlib
import json
import os
from binascii import a2b_base64

import otaboot

from edgence import VERSION
from edgence.downlink import CommandError, _same
from edgence.frame import hex_of, hmac_sha256

PREFIX = b"EDGENCE-OTA-1\n"
SESSION = otaboot.DIR + "/session"
MAX_FILES = 32
MAX_FILE = 65536
MAX_TOTAL = 262144
MAX_BLOCK = 240  # 5 args of 64 base64 characters
PIECES = 5
# Never replaced over the air: what switches and rolls back, and the device's own secrets.
FIXED = ("boot.py", "lib/otaboot.py", "lib/otaboot.mpy", "config.json")
_OK = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-"
refused = 0


def _refuse(status, msg):
    """A refused step, answered with `status` (docs/ota.md lists them), counted and logged."""
    global refused
    refused += 1
    otaboot.log("ota_refused", reason=status, total=refused)
    return CommandError(status, msg)


def _int(args, k, lo, hi):
    v = args.get(k)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise _refuse("bad_args", "%s must be an integer in %d..%d" % (k, lo, hi))
    return v


def _text(args, k):
    v = args.get(k)
    if not isinstance(v, str) or not v:
        raise _refuse("bad_args", k + " must be text")
    return v


def check_path(p):
    if len(p) > 64 or p[:1] == "/" or p in FIXED or p.startswith(otaboot.DIR + "/"):
        return False
    for part in p.split("/"):
        if not part or part == "." or part == "..":
            return False
        for c in part:
            if c not in _OK:
                return False
    return p.endswith(".py") or p.endswith(".mpy")


def _load():
    try:
        with open(SESSION) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _save(s):
    otaboot.mkdirs(SESSION)
    with open(SESSION, "w") as f:
        f.write(json.dumps(s))


def _size(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return -1


def _sha_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(256)
            if not b:
                break
            h.update(b)
    return hex_of(h.digest())


def _clear(d=otaboot.NEW[:-1]):
    """Remove a staging tree (files, then the directories)."""
    try:
        names = os.listdir(d)
    except OSError:
        return
    for name in names:
        p = d + "/" + name
        if os.stat(p)[0] & 0x4000:
            _clear(p)
        else:
            otaboot.remove(p)
    try:
        os.rmdir(d)
    except OSError:
        pass


def manifest_body(s):
    """<version>\\n<block size>\\n<max boots>\\n then <path>\\t<size>\\t<sha256>\\n per file."""
    body = "%s\n%d\n%d\n" % (s["v"], s["bs"], s["boots"])
    for p, n, h in s["files"]:
        body += "%s\t%d\t%s\n" % (p, n, h)
    return body.encode()


def _session(verified=True):
    s = _load()
    if s is None:
        raise _refuse("no_session", "no update in progress: start with ota_begin")
    if verified and not s["ok"]:
        raise _refuse("no_manifest", "the manifest is not complete and verified yet")
    return s


def _next(s):
    """(file, block) the device wants next; a file cut mid-block is staged again from 0."""
    bs = s["bs"]
    for k in range(len(s["files"])):
        p, n, _ = s["files"][k]
        got = _size(otaboot.NEW + p)
        if n and got < n:  # an empty file has no blocks: ota_apply creates it
            if got > 0 and got % bs:
                otaboot.remove(otaboot.NEW + p)
                got = 0
            return k, max(got, 0) // bs
    return len(s["files"]), 0


def begin(dl, args):
    st = otaboot.read()
    if st is not None and st.get("st") in ("pending", "trial"):
        raise _refuse("busy", "update %s is not confirmed yet" % st["v"])
    v = _text(args, "v")
    s = {
        "n": dl.last,  # this command's downlink counter: the manifest's MAC is bound to it
        "v": v[:32],
        "bs": _int(args, "bs", 16, MAX_BLOCK),
        "cnt": _int(args, "count", 1, MAX_FILES),
        "boots": _int(args, "boots", 1, 10),
        "files": [],
        "ok": 0,
    }
    _clear()
    _save(s)
    otaboot.log("ota_begin", version=v, files=s["cnt"], session=s["n"])
    return {"session": s["n"]}


def add_file(args):
    s = _session(False)
    k = _int(args, "k", 0, MAX_FILES - 1)
    if s["ok"] or k != len(s["files"]) or k >= s["cnt"]:
        raise _refuse("out_of_order", "file %d: expected %d of %d" % (k, len(s["files"]), s["cnt"]))
    p, n, h = _text(args, "p"), _int(args, "s", 0, MAX_FILE), _text(args, "h")
    if not check_path(p):
        raise _refuse("bad_path", "path not allowed: " + p[:40])
    if len(h) != 64:
        raise _refuse("bad_args", "h must be a SHA-256 in hex")
    if sum(f[1] for f in s["files"]) + n > MAX_TOTAL:
        raise _refuse("oversize", "the update is above %d bytes" % MAX_TOTAL)
    s["files"].append([p, n, h])
    _save(s)
    return {"k": k}


def verify_manifest(dl, args):
    s = _session(False)
    if len(s["files"]) != s["cnt"]:
        raise _refuse("no_manifest", "%d of %d files declared" % (len(s["files"]), s["cnt"]))
    canon = PREFIX + ("%s\n%d\n" % (dl.device_id, s["n"])).encode() + manifest_body(s)
    mac = args.get("mac")
    want = hex_of(hmac_sha256(dl.key, canon)).encode()
    if not isinstance(mac, str) or not _same(want, mac.encode()):
        otaboot.remove(SESSION)
        _clear()
        raise _refuse("bad_manifest_mac", "manifest mac does not verify: nothing staged")
    s["ok"] = 1
    _save(s)
    return {"files": s["cnt"]}


def block(args):
    s = _session()
    k = _int(args, "k", 0, len(s["files"]) - 1)
    i = _int(args, "i", 0, MAX_FILE)
    p, n, fh = s["files"][k]
    want_k, want_i = _next(s)
    if k < want_k or (k == want_k and i < want_i):
        return {"k": want_k, "next": want_i}  # already staged (a resend): nothing written
    if k > want_k or i > want_i:
        raise _refuse(
            "out_of_order", "block %d of file %d; next is %d of %d" % (i, k, want_i, want_k)
        )
    data = ""
    for j in range(PIECES + 1):
        piece = args.get("d%d" % j)
        if piece is None:
            break
        data += piece
    if len(data) > (MAX_BLOCK * 4) // 3:
        raise _refuse("oversize", "block above %d bytes" % MAX_BLOCK)
    try:
        data = a2b_base64(data.encode())
    except Exception:  # MicroPython raises a bare Exception for bad padding
        raise _refuse("bad_block", "block %d of file %d is not base64" % (i, k)) from None
    bs = s["bs"]
    if len(data) > bs:
        raise _refuse("oversize", "block %d of file %d: above %d bytes" % (i, k, bs))
    if len(data) != min(bs, n - i * bs):
        raise _refuse("bad_block", "block %d of file %d has %d bytes" % (i, k, len(data)))
    if hex_of(hashlib.sha256(data).digest()) != args.get("h"):
        raise _refuse("bad_block", "block %d of file %d: sha-256 differs" % (i, k))
    path = otaboot.NEW + p
    otaboot.mkdirs(path)
    with open(path, "ab") as f:
        f.write(data)
    data = None
    if (i + 1) * bs >= n:
        if _sha_file(path) != fh:
            otaboot.remove(path)
            raise _refuse("bad_file", "file %d: sha-256 differs from the manifest" % k)
        return {"k": k + 1, "next": 0}
    return {"k": k, "next": i + 1}


def apply(node, machine):
    s = _session()
    files = []
    added = []
    for p, n, h in s["files"]:
        path = otaboot.NEW + p
        if n == 0 and _size(path) < 0:
            otaboot.mkdirs(path)
            open(path, "wb").close()
        if _size(path) != n or _sha_file(path) != h:
            raise _refuse("incomplete", "file %s is not staged in full" % p[:40])
        files.append(p)
        if not otaboot.exists(p):
            added.append(p)
    st = {"st": "pending", "v": s["v"], "from": VERSION, "files": files, "added": added}
    st["boots"], st["max"] = 0, s["boots"]
    otaboot.write(st)
    otaboot.remove(SESSION)
    otaboot.log("ota_staged", version=s["v"], files=len(files))
    node.downlink.after = machine.reset  # after the answer went out
    return {"version": s["v"]}


def status():
    st = otaboot.read() or {}
    s = _load()
    out = {"running": VERSION, "state": st.get("st", "none"), "v": st.get("v", "")}
    if s is not None:
        out["session"] = s["n"]
        if s["ok"]:
            out["mh"] = hex_of(hashlib.sha256(manifest_body(s)).digest())
            out["k"], out["i"] = _next(s)
    return out


def handle(node, machine, action, args):
    dl = node.downlink
    if action == "ota_begin":
        return begin(dl, args)
    if action == "ota_file":
        return add_file(args)
    if action == "ota_manifest":
        return verify_manifest(dl, args)
    if action == "ota_block":
        return block(args)
    if action == "ota_apply":
        return apply(node, machine)
    return status()
