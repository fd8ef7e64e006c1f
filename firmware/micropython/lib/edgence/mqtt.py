"""A minimal MQTT 3.1.1 client for the firmware: CONNECT with username/password, PUBLISH at
QoS 1 waiting for its PUBACK, SUBSCRIBE to one topic (the device's commands, docs/downlink.md)
with incoming PUBLISHes acknowledged and kept in `inbox`, PINGREQ, DISCONNECT. No QoS 2.

A PUBACK means the broker holds the frame; the agent takes it from the broker at QoS 1 and
acknowledges only once it is signed and journaled (docs/device-frame.md, "Over MQTT").
Works with MicroPython's `socket` and CPython's alike.

Every wait is bounded and sliced (netwait): the connect is non-blocking and polled, reads time
out after `SLICE_S` and call `idle` (the watchdog) before waiting again, up to `timeout` in
all. An unreachable broker therefore costs `timeout` seconds and a buffered frame, never a
starved watchdog. The broker's address is looked up once and kept.
"""

import struct

from edgence import netwait

CONNECT, CONNACK, PUBLISH, PUBACK, PINGREQ, PINGRESP, DISCONNECT = 1, 2, 3, 4, 12, 13, 14
SUBSCRIBE, SUBACK = 8, 9
INBOX_MAX = 4  # commands come one at a time; more than this waiting is a flood, dropped


class MQTTError(OSError):
    """The broker refused us, or the connection broke: the caller reconnects later."""


def _varlen(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def _str(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack(">H", len(b)) + b


def packet(ptype, flags, body):
    return bytes(((ptype << 4) | flags,)) + _varlen(len(body)) + body


def connect_packet(client_id, username=None, password=None, keepalive=60, clean=True):
    flags = 0x02 if clean else 0
    payload = _str(client_id)
    if username is not None:
        flags |= 0x80
        payload += _str(username)
        if password is not None:
            flags |= 0x40
            payload += _str(password)
    body = _str("MQTT") + bytes((4, flags)) + struct.pack(">H", keepalive) + payload
    return packet(CONNECT, 0, body)


def publish_packet(topic, payload, pid, qos=1, dup=False):
    flags = (qos << 1) | (0x08 if dup else 0)
    body = _str(topic) + (struct.pack(">H", pid) if qos else b"") + payload
    return packet(PUBLISH, flags, body)


class MQTTClient:
    def __init__(
        self,
        client_id,
        host,
        port=1883,
        username=None,
        password=None,
        keepalive=60,
        timeout=10,
        sock_module=None,
    ):
        if sock_module is None:
            import socket as sock_module
        self.socket_mod = sock_module
        self.client_id, self.host, self.port = client_id, host, port
        self.username, self.password = username, password
        self.keepalive, self.timeout = keepalive, timeout
        self.sock = None
        self.pid = 0
        self.addr = None
        self.idle = None  # called about once a second while waiting (feeds the watchdog)
        self.inbox = []  # (topic, payload) of PUBLISHes received, oldest first

    def _recv_exact(self, n):
        buf = b""
        waited = 0
        while len(buf) < n:
            try:
                chunk = self.sock.recv(n - len(buf))
            except OSError as exc:
                if not netwait.timed_out(exc):
                    raise
                waited += netwait.SLICE_S
                if waited >= self.timeout:
                    raise MQTTError(
                        "no answer from %s:%d in %d s" % (self.host, self.port, waited)
                    ) from None
                netwait.call(self.idle)
                continue
            if not chunk:
                raise MQTTError("the broker closed the connection")
            buf += chunk
        return buf

    def _read_packet(self):
        head = self._recv_exact(1)[0]
        n, shift = 0, 0
        while True:
            b = self._recv_exact(1)[0]
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
            if shift > 21:
                raise MQTTError("malformed remaining length")
        return head >> 4, head & 0x0F, self._recv_exact(n) if n else b""

    def connect(self):
        s = self.socket_mod
        if self.addr is None:
            netwait.call(self.idle)
            self.addr = s.getaddrinfo(self.host, self.port)[0][-1]
        sock = s.socket()
        self.sock = sock  # closed by close() on any failure below
        try:
            netwait.connect(sock, self.addr, self.timeout, self.idle)
            sock.sendall(
                connect_packet(self.client_id, self.username, self.password, self.keepalive)
            )
            ptype, _, body = self._read_packet()
        except OSError:
            self.close()
            raise
        if ptype != CONNACK or len(body) != 2:
            self.close()
            raise MQTTError("no CONNACK from %s:%d" % (self.host, self.port))
        if body[1] != 0:
            self.close()
            # 4: bad user name or password, 5: not authorised (docs of MQTT 3.1.1, 3.2.2.3)
            raise MQTTError("broker refused the connection: return code %d" % body[1])

    def _incoming(self, flags, body):
        """A PUBLISH from the broker: acknowledge it (QoS 1) and keep it in the inbox."""
        n = struct.unpack(">H", body[:2])[0]
        topic = body[2 : 2 + n].decode()
        pos = 2 + n
        if flags & 0x06:
            pid = body[pos : pos + 2]
            pos += 2
            self.sock.sendall(packet(PUBACK, 0, pid))
        if len(self.inbox) < INBOX_MAX:
            self.inbox.append((topic, body[pos:]))

    def _dispatch(self, ptype, flags, body):
        if ptype == PUBLISH:
            self._incoming(flags, body)

    def subscribe(self, topic, qos=1):
        """SUBSCRIBE and wait for the SUBACK (retained messages may arrive first: kept)."""
        self.pid = self.pid % 0xFFFF + 1
        self.sock.sendall(
            packet(SUBSCRIBE, 2, struct.pack(">H", self.pid) + _str(topic) + bytes((qos,)))
        )
        while True:
            ptype, flags, body = self._read_packet()
            if ptype == SUBACK:
                if body[2:3] == b"\x80":
                    raise MQTTError("the broker refused the subscription to %s" % topic)
                return
            self._dispatch(ptype, flags, body)

    def poll(self, seconds):
        """Read what the broker sends for up to `seconds` (at least one slice); returns the
        inbox's messages and empties it."""
        if self.sock is None:
            raise MQTTError("not connected")
        waited = 0
        while not self.inbox and waited < seconds:
            try:
                head = self.sock.recv(1)
            except OSError as exc:
                if not netwait.timed_out(exc):
                    raise
                waited += netwait.SLICE_S
                netwait.call(self.idle)
                continue
            if not head:
                raise MQTTError("the broker closed the connection")
            n, shift = 0, 0
            while True:
                b = self._recv_exact(1)[0]
                n |= (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    break
            self._dispatch(head[0] >> 4, head[0] & 0x0F, self._recv_exact(n) if n else b"")
        got, self.inbox = self.inbox, []
        return got

    def publish(self, topic, payload):
        """QoS 1: returns once the PUBACK for this packet arrived, raises MQTTError if not."""
        if self.sock is None:
            raise MQTTError("not connected")
        self.pid = self.pid % 0xFFFF + 1
        try:
            self.sock.sendall(publish_packet(topic, payload, self.pid))
            while True:
                ptype, flags, body = self._read_packet()
                if ptype == PUBACK and struct.unpack(">H", body[:2])[0] == self.pid:
                    return
                self._dispatch(ptype, flags, body)
                # PINGRESP or a PUBACK of an earlier try: keep reading.
        except OSError as exc:
            self.close()
            raise MQTTError("publish to %s failed: %s" % (topic, exc)) from None

    def ping(self):
        self.sock.sendall(packet(PINGREQ, 0, b""))
        while self._read_packet()[0] != PINGRESP:
            pass

    def disconnect(self):
        if self.sock is not None:
            try:
                self.sock.sendall(packet(DISCONNECT, 0, b""))
            except OSError:
                pass
        self.close()

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None


class MqttLink:
    """The firmware's MQTT transport: one client, reconnected when a publish fails."""

    def __init__(self, cfg, sock_module=None):
        m = cfg.mqtt
        self.topic = m["topic"]
        self.client = MQTTClient(
            cfg.device_id,
            m["host"],
            m.get("port", 1883),
            m.get("username"),
            m.get("password"),
            sock_module=sock_module,
        )
        self.connected = False
        self.down_topic = m.get("down_topic", "devices/%s/down" % cfg.device_id)
        self.ack_topic = m.get("ack_topic", "devices/%s/ack" % cfg.device_id)
        self.downlink = None  # an edgence.downlink.Downlink: commands are taken when set

    @property
    def idle(self):
        return self.client.idle

    @idle.setter
    def idle(self, fn):
        self.client.idle = fn

    def connect(self):
        self.client.connect()
        if self.downlink is not None:
            try:
                self.client.subscribe(self.down_topic)
            except OSError:
                self.client.close()
                raise
        self.connected = True
        self.serve()

    def serve(self):
        """Answer the commands received so far (a retained one arrives on subscribing)."""
        if self.downlink is None:
            return
        got, self.client.inbox = self.client.inbox, []
        for topic, payload in got:
            if topic == self.down_topic:
                answer = self.downlink.handle(payload)
                if answer is not None:
                    self.client.publish(self.ack_topic, answer)
                    self.downlink.run_after()

    def listen(self, seconds):
        """Wait up to `seconds` for commands and answer them; False if the link is down."""
        try:
            if not self.connected:
                self.connect()
            self.client.inbox = self.client.poll(seconds)
            self.serve()
            return True
        except OSError:
            self.connected = False
            self.client.close()
            return False

    def send(self, frame):
        """True once the broker acknowledged the frame (PUBACK); False if the link is down."""
        try:
            if not self.connected:
                self.connect()
            self.client.publish(self.topic, frame)
            self.serve()  # a command that arrived while we waited for the PUBACK
            return True
        except OSError:
            self.connected = False
            self.client.close()
            return False

    def close(self):
        self.client.disconnect()
        self.connected = False
