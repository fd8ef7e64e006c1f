"""The firmware's main loop: read the sensors, build a signed frame, send it (or keep it in
the outbox while the link is down), sleep; the watchdog is fed through one idle hook from
every bounded wait (sleep slices, Wi-Fi, sockets) while deliveries are recent.

`Node` takes everything it touches as arguments (link, sensors, counter, outbox, watchdog,
clock), so the same loop runs on a board, on CPython with shims, and in unit tests. A frame
that cannot be encoded, or a flash write that fails, is counted and logged, never raised out
of the loop (that would end in a watchdog reset, and the same again after it). Frames lost
(outbox budget) and encoder errors are reported to the gateway as readings: `outbox_dropped`
(unit `{frame}`) and `encode_errors` (unit `{error}`), totals since boot, carried by every frame
taken after a new loss until one of them went out directly (the newest frames survive a full
outbox, so the gateway always gets the latest total).
"""

try:
    import utime as time
except ImportError:  # pragma: no cover
    import time

try:
    import gc
except ImportError:  # pragma: no cover
    gc = None

from edgence.frame import MAX_VALUES, encode_signed_frame

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
    # Backlog frames sent per cycle at most: a cycle's work (and what it allocates between two
    # collections) stays bounded after a long outage; the rest goes in the next cycles.
    FLUSH_MAX = 16

    def __init__(self, cfg, link, sensors, counter, outbox, watchdog=None, clock=unix_time):
        self.cfg, self.link, self.sensors = cfg, link, sensors
        self.counter, self.outbox, self.watchdog, self.clock = counter, outbox, watchdog, clock
        self.sent = 0
        self.sensor_errors = 0
        self.encode_errors = 0
        self.store_errors = 0
        self._told = [0, 0]  # drops and encode errors the gateway has heard of
        self._carried = None  # what the frame just taken carries
        self.confirm = None  # called once at the first delivery (an update on trial: otaboot)

    def idle(self):
        """Called from every bounded wait: feeds the watchdog (which decides from the last
        delivery, so a board cut off for longer than watchdog_s still resets)."""
        if self.watchdog is not None:
            self.watchdog.feed()

    def read(self):
        readings = []
        for s in self.sensors:
            try:
                readings.extend(s.read())
            except OSError as exc:  # SensorError, or an I2C/GPIO failure
                self.sensor_errors += 1
                log("sensor_error", sensor=getattr(s, "kind", type(s).__name__), error=exc)
        return readings

    def _reports(self, readings):
        """Counts the gateway has not heard of yet, as readings of this frame (room allowing)."""
        lost, errors = self.outbox.dropped, self.encode_errors
        self._carried = None
        if len(readings) + 2 > MAX_VALUES or (lost <= self._told[0] and errors <= self._told[1]):
            return readings
        if lost > self._told[0]:
            readings.append(("outbox_dropped", lost, 0, "{frame}"))
        if errors > self._told[1]:
            readings.append(("encode_errors", errors, 0, "{error}"))
        self._carried = (lost, errors)
        return readings

    def take(self):
        """One reading -> the frames to send (a BLE advert per group of objects that fits,
        else one signed frame); empty if every sensor failed or the encoder refused."""
        readings = self.read()
        if not readings:
            return ()
        encode = getattr(self.link, "encode", None)
        try:
            if encode is not None:  # BLE: BTHome adverts, authenticated by the bindkey
                return encode(self.counter, readings)
            readings = self._reports(readings)
            n = self.counter.next()
            return (
                encode_signed_frame(
                    self.cfg.key, self.cfg.device_id, n, readings, timestamp=self.clock()
                ),
            )
        except ValueError as exc:  # FrameError, BTHomeError: a reading the encoder refuses
            self.encode_errors += 1
            log("encode_error", error=exc, total=self.encode_errors)
            return ()

    def keep(self, frame):
        try:
            self.outbox.put(frame)
        except OSError as exc:  # flash full or failing: the frame is lost, the loop goes on
            self.store_errors += 1
            log("store_error", error=exc, total=self.store_errors)

    def _delivered(self):
        self.sent += 1
        if self.watchdog is not None:
            self.watchdog.delivered()
        if self.confirm is not None:
            confirm, self.confirm = self.confirm, None
            confirm()

    def flush(self):
        """Send what the outbox holds, oldest first, up to FLUSH_MAX frames; False at the first
        failure."""
        n = 0
        try:
            while len(self.outbox) and n < self.FLUSH_MAX:
                n += 1
                fr = self.outbox.peek()  # one frame read from flash at a time
                if fr is None:
                    break
                if not self.link.send(fr):
                    return False
                self.outbox.pop()
                self._delivered()
            return True
        finally:
            self.outbox.commit()

    def step(self):
        """One cycle. The outbox is touched (and flash written) only while the link is down or
        a backlog is still being sent (new frames then queue behind it: counters must reach
        the gateway in order)."""
        frames = self.take()
        backlog = len(self.outbox)
        online = True
        if backlog:
            online = self.flush()
            if online:
                log("link_back", delivered=backlog - len(self.outbox), left=len(self.outbox))
        for fr in frames:
            if online and not len(self.outbox):
                if self.link.send(fr):
                    self._delivered()
                    if self._carried is not None:  # in order after the backlog: all heard
                        self._told[0], self._told[1] = self._carried
                    log("sent", n=self.counter.peek() - 1, total=self.sent)
                    continue
                online = False
            self.keep(fr)
        if not online:
            log("offline", buffered=len(self.outbox), dropped=self.outbox.dropped)
        frames = None
        if gc is not None:
            gc.collect()  # now, while little is alive: the heap stays in one piece
        return online

    def sleep(self, seconds):
        """Light sleep in slices short enough for every port's hardware watchdog."""
        if getattr(self.link, "downlink", None) is not None and hasattr(self.link, "listen"):
            return self._listen(seconds)
        left = int(seconds * 1000)
        while left > 0:
            step = 1000 if left > 1000 else left
            time.sleep_ms(step)
            left -= step
            self.idle()

    def _listen(self, seconds):
        """The sleep of a link with a command channel (MQTT): spent listening for commands in
        1 s slices; if the link is down, plain sleep for the rest of the interval."""
        listen = self.link.listen
        left = int(seconds * 1000)
        while left > 0:
            step = 1000 if left > 1000 else left
            if listen is None or step < 1000 or not listen(1):
                listen = None
                time.sleep_ms(step)
            left -= step
            self.idle()

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
