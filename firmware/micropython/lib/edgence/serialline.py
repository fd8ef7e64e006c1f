"""A frame as one serial (UART) line: frame JSON, '*', its CRC-32 as 8 lowercase hex digits,
CR LF. The CRC (IEEE 802.3, as zlib.crc32) covers the frame's bytes from '{' up to the '*'.

Pure: no I/O. binascii.crc32 is used where the port has it, a table-free bitwise CRC
otherwise (slow but a few hundred bytes per minute is nothing).
"""

try:
    from binascii import crc32 as _crc32
except ImportError:  # pragma: no cover - ports built without MICROPY_PY_BINASCII_CRC32
    _crc32 = None


def crc32(data):
    if _crc32 is not None:
        return _crc32(data) & 0xFFFFFFFF
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0xEDB88320 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def encode_line(frame):
    if b"\n" in frame or b"\r" in frame:
        raise ValueError("a serial frame must be on one line")
    return frame + b"*" + ("%08x" % crc32(frame)).encode() + b"\r\n"


class UartLink:
    """Sends frames over a UART (machine.UART, or any object with write()). A serial line has
    no acknowledgement, so a frame counts as sent once the UART took all its bytes."""

    def __init__(self, uart):
        self.uart = uart

    def connect(self):
        pass

    def send(self, frame):
        # Written in two pieces (frame, then '*CRC\r\n'): no copy of the frame is made.
        if b"\n" in frame or b"\r" in frame:
            raise ValueError("a serial frame must be on one line")
        n1 = self.uart.write(frame)
        tail = b"*%08x\r\n" % crc32(frame)
        n2 = self.uart.write(tail)
        return (n1 is None or n1 == len(frame)) and (n2 is None or n2 == len(tail))

    def close(self):
        pass
