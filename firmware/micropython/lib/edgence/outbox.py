"""A small bounded buffer of signed frames taken while the link was down.

Frames are kept in order and sent oldest first when the link returns. When it is full the
oldest frame is dropped (and counted): the newest readings matter most, and counters stay
increasing either way. While it holds frames it is mirrored to flash (one short append per
buffered frame, one rewrite per delivery) so a watchdog reset or power cut does not lose them;
an empty outbox costs no flash writes at all.
"""

import os

from edgence.counter import write_atomic

FILE = "outbox.txt"


class Outbox:
    def __init__(self, directory=None, capacity=32):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.dropped = 0
        self.path = None if directory is None else directory.rstrip("/") + "/" + FILE
        self._frames = []
        if self.path is not None:
            self._load()

    def _load(self):
        data = None
        # The .tmp copy is complete whenever the main file is missing (see write_atomic).
        for path in (self.path, self.path + ".tmp"):
            try:
                with open(path, "rb") as f:
                    data = f.read()
                break
            except OSError:
                pass
        if data is None:
            return
        # A line cut short by a power cut is not valid JSON; the agent would refuse it anyway.
        for line in data.split(b"\n"):
            if line.startswith(b"{") and line.endswith(b"}"):
                self._frames.append(line)
        while len(self._frames) > self.capacity:
            self._frames.pop(0)
            self.dropped += 1

    def _rewrite(self):
        if self.path is None:
            return
        if not self._frames:
            try:
                os.remove(self.path)
            except OSError:
                pass
            return
        write_atomic(self.path, b"".join(fr + b"\n" for fr in self._frames))

    def __len__(self):
        return len(self._frames)

    def put(self, frame):
        if len(self._frames) >= self.capacity:
            self._frames.pop(0)
            self.dropped += 1
            self._frames.append(frame)
            self._rewrite()
            return
        self._frames.append(frame)
        if self.path is not None:
            with open(self.path, "ab") as f:
                f.write(frame + b"\n")

    def peek(self):
        return self._frames[0] if self._frames else None

    def pop(self):
        """The oldest frame was delivered: forget it."""
        fr = self._frames.pop(0)
        self._rewrite()
        return fr

    def frames(self):
        return list(self._frames)
