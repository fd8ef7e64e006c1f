"""CoAP (RFC 7252) confirmable POST of a frame to the agent's `/up/{device}`, over UDP.

The message codec is pure; `CoapLink` adds the socket and the retransmission rule (ACK_TIMEOUT
2 s, doubled per try, MAX_RETRANSMIT 4). A frame counts as delivered when the agent's ACK
carries a 2.xx code (piggybacked response); 4.xx means it was refused and retrying is useless.
"""

import os
import struct

CON, NON, ACK, RST = 0, 1, 2, 3
POST = 2
CREATED, CHANGED = 0x41, 0x44  # 2.01, 2.04
OPT_URI_PATH = 11
OPT_CONTENT_FORMAT = 12
JSON_FORMAT = 50
ACK_TIMEOUT = 2.0
MAX_RETRANSMIT = 4


class CoapError(Exception):
    pass


def _opt_nibble(n):
    if n < 13:
        return n, b""
    if n < 269:
        return 13, bytes((n - 13,))
    return 14, struct.pack(">H", n - 269)


def encode_options(options):
    """options: [(number, bytes)] in any order; emitted sorted with delta encoding."""
    out = bytearray()
    last = 0
    # Repeated options (Uri-Path) keep their order; MicroPython's sort is not stable, so the
    # position breaks ties explicitly.
    ordered = sorted([(o[0], i, o[1]) for i, o in enumerate(options)])
    for number, _, value in ordered:
        d, dx = _opt_nibble(number - last)
        ln, lx = _opt_nibble(len(value))
        out.append((d << 4) | ln)
        out += dx + lx + value
        last = number
    return bytes(out)


def encode_post(message_id, token, path, payload, content_format=JSON_FORMAT):
    """A confirmable POST: path like "/up/dev-1", payload the frame bytes."""
    if not 0 <= len(token) <= 8:
        raise CoapError("token must be 0-8 bytes")
    opts = [(OPT_URI_PATH, seg.encode()) for seg in path.split("/") if seg]
    cf = b"" if content_format == 0 else bytes((content_format,))
    opts.append((OPT_CONTENT_FORMAT, cf))
    head = struct.pack(">BBH", 0x40 | (CON << 4) | len(token), POST, message_id & 0xFFFF)
    return head + token + encode_options(opts) + b"\xff" + payload


def decode_header(data):
    """(type, code, message id, token, payload) of a received message."""
    if len(data) < 4 or data[0] >> 6 != 1:
        raise CoapError("not a CoAP version 1 message")
    tkl = data[0] & 0x0F
    if tkl > 8 or len(data) < 4 + tkl:
        raise CoapError("bad token length")
    mtype = (data[0] >> 4) & 0x03
    code = data[1]
    mid = struct.unpack(">H", data[2:4])[0]
    token = data[4 : 4 + tkl]
    i = data.find(b"\xff", 4 + tkl)
    payload = data[i + 1 :] if i >= 0 else b""
    return mtype, code, mid, token, payload


def code_text(code):
    return "%d.%02d" % (code >> 5, code & 0x1F)


class CoapLink:
    def __init__(self, host, port=5683, path="/up/dev", sock_module=None, ack_timeout=ACK_TIMEOUT):
        if sock_module is None:
            import socket as sock_module
        self.socket_mod = sock_module
        self.host, self.port, self.path = host, port, path
        self.ack_timeout = ack_timeout
        self.sock = None
        self.addr = None
        self.mid = int.from_bytes(os.urandom(2), "big")
        self.refused = 0
        self.separate = 0  # answers that came apart from their ACK (the agent was slow)
        self.last_code = None
        self.last_payload = b""  # the agent's answer: a pending command rides on a 2.04
        self.downlink = None  # an edgence.downlink.Downlink: commands are taken when set
        self.idle = None  # called about once a second while waiting (feeds the watchdog)

    def connect(self):
        s = self.socket_mod
        if self.addr is None:  # looked up once: a name lookup is a wait that cannot be sliced
            if self.idle is not None:
                self.idle()
            self.addr = s.getaddrinfo(self.host, self.port)[0][-1]
        self.sock = s.socket(s.AF_INET, s.SOCK_DGRAM)

    def send(self, frame):
        """True when the frame is done with: the agent answered 2.xx, or 4.xx (refused for good:
        counted in `refused`, resending cannot help). False when it should be sent again later:
        every retransmission went unanswered, a reset, or 5.xx (e.g. the journal is full)."""
        try:
            if self.sock is None:
                self.connect()
            done = self._exchange(frame, self.path)
            if done and self.downlink is not None and self.last_payload[:1] == b"{":
                self._command(self.last_payload)
            return done
        except OSError:
            self.close()
            return False

    def _command(self, payload):
        """A command that came with the answer to our POST: run it, POST the answer to
        /ack/<id> (docs/downlink.md). A lost answer is sent again when the command comes back."""
        answer = self.downlink.handle(payload)
        if answer is not None:
            self._exchange(answer, "/ack/" + self.path.rsplit("/", 1)[-1])
            self.downlink.run_after()

    def _wait(self, seconds):
        """One datagram, or None after `seconds` (waiting in 1 s slices, calling idle)."""
        waited = 0.0
        while waited < seconds:
            step = min(1.0, seconds - waited)
            self.sock.settimeout(step)
            try:
                return self.sock.recv(1280)
            except OSError:  # a timeout (socket.timeout is an OSError on both)
                waited += step
                if self.idle is not None:
                    self.idle()
        return None

    def _verdict(self, code):
        self.last_code = code
        if code >> 5 == 2:
            return True
        if code >> 5 == 4:
            self.refused += 1
            return True
        return False

    def _exchange(self, frame, path):
        self.mid = (self.mid + 1) & 0xFFFF
        token = os.urandom(4)
        msg = encode_post(self.mid, token, path, frame)
        self.last_payload = b""
        timeout = self.ack_timeout
        acked = False  # an empty ACK came: the response follows separately (RFC 7252, 5.2.2)
        tries = 0
        while tries <= MAX_RETRANSMIT:
            if not acked:
                self.sock.sendto(msg, self.addr)
                tries += 1
            data = self._wait(timeout)
            if data is None:
                if acked:
                    return False
                timeout *= 2
                continue
            try:
                mtype, code, mid, tok, payload = decode_header(data)
            except CoapError:
                continue
            if mtype in (ACK, RST) and mid == self.mid:
                if mtype == RST:
                    return False
                if code == 0:
                    acked = True
                    self.separate += 1
                    timeout = ACK_TIMEOUT * 2**MAX_RETRANSMIT
                    continue
                if tok == token:
                    self.last_payload = payload
                    return self._verdict(code)
            elif tok == token and mtype in (CON, NON):
                if mtype == CON:
                    self.sock.sendto(struct.pack(">BBH", 0x60, 0, mid), self.addr)
                self.last_payload = payload
                return self._verdict(code)
        return False

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None
