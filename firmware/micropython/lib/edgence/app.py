"""The firmware's main loop: read the sensors, build a signed frame, send it (or keep it in
the outbox while the link is down), sleep; feed the watchdog only when a reading went out.

`Node` takes everything it touches as arguments (link, sensors, counter, outbox, watchdog,
clock), so the same loop runs on a board, on CPython with shims, and in unit tests.
"""

try:
    import utime as time
except ImportError:  # pragma: no cover
    import time

from edgence.frame import encode_signed_frame

EPOCH_2000 = 946684800  # ports whose time.time() counts from 2000-01-01
SANE_UNIX = 1600000000  # a clock before 2020 was never set (no NTP yet)


def unix_time():
    """Unix seconds if the clock has been set (NTP, RTC), else None: the gateway then stamps
    the frame on receipt (docs/device-frame.md, field `ts`)."""
    t = int(time.time())
    if time.gmtime(0)[0] == 2000:
        t += EPOCH_2000
    return t if t >= SANE_UNIX else None


def log(event, **kv):
    # One key=value line per event on the console, like the agent's logs; never the key.
    print("edgence event=" + event + "".join(" %s=%s" % (k, kv[k]) for k in sorted(kv)))


class Node:
    def __init__(self, cfg, link, sensors, counter, outbox, watchdog=None, clock=unix_time):
        self.cfg, self.link, self.sensors = cfg, link, sensors
        self.counter, self.outbox, self.watchdog, self.clock = counter, outbox, watchdog, clock
        self.sent = 0
        self.sensor_errors = 0

    def read(self):
        readings = []
        for s in self.sensors:
            try:
                readings.extend(s.read())
            except OSError as exc:  # SensorError, or an I2C/GPIO failure
                self.sensor_errors += 1
                log("sensor_error", sensor=getattr(s, "kind", type(s).__name__), error=exc)
        return readings

    def take(self):
        """One reading -> one signed frame (or None if every sensor failed)."""
        readings = self.read()
        if not readings:
            return None
        n = self.counter.next()
        encode = getattr(self.link, "encode", None)
        if encode is not None:  # BLE: a BTHome advertisement, authenticated by its bindkey
            return encode(n, readings)
        return encode_signed_frame(
            self.cfg.key, self.cfg.device_id, n, readings, timestamp=self.clock()
        )

    def _delivered(self):
        self.sent += 1
        if self.watchdog is not None:
            self.watchdog.delivered()

    def flush(self):
        """Send what the outbox holds, oldest first; stop at the first failure."""
        while len(self.outbox):
            if not self.link.send(self.outbox.peek()):
                return False
            self.outbox.pop()
            self._delivered()
        return True

    def step(self):
        """One cycle. The outbox is touched (and flash written) only while the link is down."""
        frame = self.take()
        backlog = len(self.outbox)
        if backlog and not self.flush():
            if frame is not None:
                self.outbox.put(frame)
            log("offline", buffered=len(self.outbox), dropped=self.outbox.dropped)
            return False
        if backlog:
            log("link_back", delivered=backlog)
        if frame is None:
            return True
        if self.link.send(frame):
            self._delivered()
            log("sent", n=self.counter.peek() - 1, total=self.sent)
            return True
        self.outbox.put(frame)
        log("offline", buffered=len(self.outbox), dropped=self.outbox.dropped)
        return False

    def sleep(self, seconds):
        """Light sleep in slices short enough for every port's hardware watchdog."""
        left = int(seconds * 1000)
        while left > 0:
            step = 1000 if left > 1000 else left
            time.sleep_ms(step)
            left -= step
            if self.watchdog is not None:
                self.watchdog.feed()

    def run(self, cycles=None, deep_sleep=None):
        interval = self.cfg.firmware["interval_s"]
        done = 0
        while cycles is None or done < cycles:
            self.step()
            done += 1
            if deep_sleep is not None:
                self.counter.retain()
                deep_sleep(int(interval * 1000))  # does not return on a board
            elif cycles is None or done < cycles:
                self.sleep(interval)
