"""Commands from the gateway (docs/downlink.md): check each command's MAC and downlink counter,
run its handler once, and build the authenticated answer.

The downlink counter is separate from the frame counter. The last executed counter is kept in
flash (edgence.slots, one small write per command, before the handler runs), so after a power
cut or a reboot a resent command is never executed again; a command at or below it is answered
`replay` (or, for the very last one, with the answer already given) and not executed.
Pure apart from that one file: handlers are passed in.
"""

import json

from edgence.frame import hex_of, hmac_sha256
from edgence.slots import Slots

COMMAND_PREFIX = b"EDGENCE-CMD-1\n"
ANSWER_PREFIX = b"EDGENCE-ACK-1\n"
FILE = "downlink"  # downlink.a / downlink.b
_FIELDS = ("v", "id", "n", "exp", "a", "args", "mac")


class CommandError(ValueError):
    """A handler's refusal: CommandError(message) is answered `bad_args` with the message,
    CommandError(status, message) with that status."""


def _lines(args):
    out = ""
    for k in sorted(args):
        v = args[k]
        if isinstance(v, int) and not isinstance(v, bool):
            out += "%s\ti\t%d\n" % (k, v)
        else:
            out += "%s\ts\t%s\n" % (k, v)
    return out


def command_canonical(device_id, n, cid, exp, action, args):
    text = "%s\n%d\n%s\n%d\n%s\n" % (device_id, n, cid, exp, action) + _lines(args)
    return COMMAND_PREFIX + text.encode()


def answer_canonical(device_id, n, cid, status, result):
    return (
        ANSWER_PREFIX + ("%s\n%d\n%s\n%s\n" % (device_id, n, cid, status) + _lines(result)).encode()
    )


def _json_value(v):
    if isinstance(v, int) and not isinstance(v, bool):
        return "%d" % v
    return '"' + v + '"'  # result text: printable ASCII without quote or backslash


def encode_answer(key, device_id, n, cid, status, result):
    """The answer's JSON, key order and separators as the agent's encode_answer."""
    mac = hmac_sha256(key, answer_canonical(device_id, n, cid, status, result))
    r = ",".join('"%s":%s' % (k, _json_value(result[k])) for k in sorted(result))
    return (
        '{"v":1,"id":"%s","n":%d,"st":"%s","r":{%s},"mac":"%s"}' % (cid, n, status, r, hex_of(mac))
    ).encode()


def _same(a, b):
    # Constant time: a forger learns nothing from how long the comparison took.
    if len(a) != len(b):
        return False
    d = 0
    for i in range(len(a)):
        d |= a[i] ^ b[i]
    return d == 0


class Downlink:
    """handle(payload) -> the answer to publish (bytes), or None for what must not be answered
    (not a command, a MAC that does not verify: a forger gets no oracle)."""

    def __init__(self, cfg, handlers, directory=".", clock=None):
        self.key, self.device_id = cfg.key, cfg.device_id
        self.handlers = handlers
        self.clock = clock
        self.slots = Slots(directory.rstrip("/") + "/" + FILE)
        got = self.slots.read()
        self.last = got[0] if got else 0
        self.cached = None  # (counter, answer) of the last executed command: resends get it
        self.refused = 0  # commands dropped unanswered (bad MAC, malformed)
        self.executed = 0
        self.after = None  # set by a handler that must run after its answer went out (reboot)

    def _drop(self, reason):
        self.refused += 1
        print("edgence event=command_refused reason=" + reason)
        return None

    def handle(self, payload):
        if not payload:
            return None  # the gateway cleared its retained command
        try:
            obj = json.loads(payload)
        except ValueError:
            return self._drop("not_json")
        if not isinstance(obj, dict) or len(obj) != len(_FIELDS):
            return self._drop("bad_fields")
        for k in _FIELDS:
            if k not in obj:
                return self._drop("bad_fields")
        n, cid, exp, action, args, mac = (
            obj["n"],
            obj["id"],
            obj["exp"],
            obj["a"],
            obj["args"],
            obj["mac"],
        )
        if obj["v"] != 1 or not isinstance(n, int) or not isinstance(exp, int):
            return self._drop("bad_fields")
        if not isinstance(cid, str) or not isinstance(action, str) or not isinstance(args, dict):
            return self._drop("bad_fields")
        for k in args:
            v = args[k]
            if not (isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool))):
                return self._drop("bad_fields")
        want = hex_of(
            hmac_sha256(self.key, command_canonical(self.device_id, n, cid, exp, action, args))
        )
        if not isinstance(mac, str) or not _same(want.encode(), mac.encode()):
            return self._drop("bad_mac")
        if n <= self.last:
            if self.cached is not None and self.cached[0] == n:
                return self.cached[1]  # the gateway missed our answer: same answer, not re-run
            status = "duplicate" if n == self.last else "replay"
            print("edgence event=command_refused reason=%s n=%d last=%d" % (status, n, self.last))
            return encode_answer(self.key, self.device_id, n, cid, status, {})
        # Consumed before the handler runs: a reboot in the middle never runs it again.
        self.slots.write((n,))
        self.last = n
        now = self.clock() if self.clock is not None else None
        result = {}
        if now is not None and now > exp:
            status = "expired"
        else:
            handler = self.handlers.get(action)
            if handler is None:
                status = "unknown_action"
            else:
                try:
                    result = handler(args) or {}
                    status = "ok"
                    self.executed += 1
                except CommandError as exc:
                    a = exc.args
                    status, msg = (a[0], a[1]) if len(a) > 1 else ("bad_args", str(exc))
                    result = {"error": msg[:64]}
                except Exception as exc:  # a failing handler is answered, never fatal
                    status, result = "failed", {"error": type(exc).__name__}
        answer = encode_answer(self.key, self.device_id, n, cid, status, result)
        self.cached = (n, answer)
        print("edgence event=command n=%d action=%s status=%s" % (n, action, status))
        return answer

    def run_after(self):
        """Run what a handler deferred until its answer was sent (a reboot)."""
        fn, self.after = self.after, None
        if fn is not None:
            fn()


def standard_handlers(node, machine, version):
    """The firmware's handler table: set an output, set the report interval, reboot, version,
    and the steps of an over-the-air update (edgence.ota).
    Outputs are only the pins listed in firmware.outputs (a command cannot drive any pin)."""
    fw = node.cfg.firmware
    outputs = fw.get("outputs") or []
    pins = {}

    def _int(args, k, lo, hi):
        v = args.get(k)
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise CommandError("%s must be an integer in %d..%d" % (k, lo, hi))
        return v

    def set_output(args):
        pin = _int(args, "pin", 0, 255)
        if pin not in outputs:
            raise CommandError("pin %d is not in firmware.outputs" % pin)
        value = _int(args, "value", 0, 1)
        p = pins.get(pin)
        if p is None:
            p = pins[pin] = machine.Pin(pin, machine.Pin.OUT)
        p.value(value)
        return {"pin": pin, "value": value}

    def set_interval(args):
        s = _int(args, "s", 1, 86400)
        fw["interval_s"] = s
        return {"interval_s": s}

    def reboot(args):
        node.downlink.after = machine.reset
        return {}

    def report_version(args):
        return {"version": version}

    def ota(action):
        def step(args):
            from edgence import ota  # imported at the first update only (docs/ota.md)

            return ota.handle(node, machine, action, args)

        return step

    table = {
        "set_output": set_output,
        "set_interval": set_interval,
        "reboot": reboot,
        "version": report_version,
    }
    for a in ("ota_begin", "ota_file", "ota_manifest", "ota_block", "ota_apply", "ota_status"):
        table[a] = ota(a)
    return table
