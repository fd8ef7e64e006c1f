"""A TCP proxy between a device and its MQTT broker that corrupts one message on its way to the
device: a fake for a fault that cannot be produced otherwise (a bit error the link did not
catch; loopback TCP never loses or changes a byte). Everything else passes unchanged.

    with CorruptingProxy(broker_port, b'"a":"ota_block"', b'"i":3,') as proxy:
        ... the device connects to proxy.port ...
        proxy.corrupted  # how many messages were changed (at most one)
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType


def _take_packet(buf: bytearray) -> bytes | None:
    """One whole MQTT control packet from the front of `buf`, or None if it is not all there."""
    if len(buf) < 2:
        return None
    length, mult, i = 0, 1, 1
    while True:
        if i >= len(buf):
            return None
        b = buf[i]
        length += (b & 0x7F) * mult
        mult *= 128
        i += 1
        if not b & 0x80:
            break
    if len(buf) < i + length:
        return None
    packet = bytes(buf[: i + length])
    del buf[: i + length]
    return packet


class CorruptingProxy:
    """Listens on a free loopback port; the first PUBLISH to the device containing every one
    of `match` gets one character of its first data piece (`"d0":"`) changed."""

    def __init__(self, upstream_port: int, *match: bytes) -> None:
        self.upstream_port = upstream_port
        self.match = match
        self.corrupted = 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self._socks: list[socket.socket] = []
        self._stop = False

    def __enter__(self) -> CorruptingProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop = True
        for s in [self.server, *self._socks]:
            s.close()

    def _accept(self) -> None:
        while not self._stop:
            try:
                device, _ = self.server.accept()
            except OSError:
                return
            broker = socket.create_connection(("127.0.0.1", self.upstream_port))
            self._socks += [device, broker]
            threading.Thread(target=self._pump, args=(device, broker, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(broker, device, True), daemon=True).start()

    def _corrupt(self, packet: bytes) -> bytes:
        if self.corrupted or packet[0] >> 4 != 3 or not all(m in packet for m in self.match):
            return packet
        at = packet.find(b'"d0":"')
        if at < 0:
            return packet
        at += 6
        self.corrupted += 1
        flipped = b"B" if packet[at : at + 1] != b"B" else b"C"
        return packet[:at] + flipped + packet[at + 1 :]

    def _pump(self, src: socket.socket, dst: socket.socket, to_device: bool) -> None:
        buf = bytearray()
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if not to_device:
                    dst.sendall(data)
                    continue
                buf += data
                while (packet := _take_packet(buf)) is not None:
                    dst.sendall(self._corrupt(packet))
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
