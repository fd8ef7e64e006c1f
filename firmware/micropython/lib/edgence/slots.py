"""A few integers kept in flash so that a power cut never loses the last complete value, on
littlefs and on FAT alike: two small files, written in turn, each a generation number, the
values and a CRC-32 over them. A torn write spoils only the file being written; the other
still holds the previous generation. Nothing is renamed or rewritten in place.
"""

import os

from edgence.serialline import crc32


def _parse(data):
    # "gen v1 v2 ... crc\n"; None unless complete and the CRC matches.
    if not data.endswith(b"\n"):
        return None
    body, _, crc = data[:-1].rpartition(b" ")
    try:
        if int(crc, 16) != crc32(body):
            return None
        return [int(x) for x in body.split()]
    except ValueError:
        return None


class Slots:
    """read() -> the newest complete list of integers (or None); write(values) stores one."""

    def __init__(self, path):
        self.paths = (path + ".a", path + ".b")
        self.gen = -1
        self.slot = 1  # the next write goes to the other file than the newest one

    def read(self):
        best = None
        for i in (0, 1):
            try:
                with open(self.paths[i], "rb") as f:
                    rec = _parse(f.read(64))
            except OSError:
                rec = None
            if rec is not None and len(rec) > 1 and rec[0] > self.gen:
                self.gen, self.slot, best = rec[0], i, rec[1:]
        return best

    def corrupt(self):
        """Both files exist and neither is complete: more than one torn write can explain."""
        for p in self.paths:
            try:
                os.stat(p)
            except OSError:
                return False
        return self.read() is None

    def write(self, values):
        self.gen += 1
        self.slot ^= 1
        body = b"%d" % self.gen
        for v in values:
            body += b" %d" % v
        with open(self.paths[self.slot], "wb") as f:
            f.write(body + b" %08x\n" % crc32(body))

    def remove(self):
        for p in self.paths:
            try:
                os.remove(p)
            except OSError:
                pass
