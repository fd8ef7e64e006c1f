"""Bounded, sliced network waits: the firmware never blocks longer than `SLICE_S` without
calling its idle hook (which feeds the watchdog), whatever the peer does.

The connect is non-blocking and polled in slices (a blocking connect to an address that never
answers waits for the TCP stack's own SYN timeout, far beyond any watchdog); afterwards the
socket keeps a `SLICE_S` timeout so each read returns or times out within one slice.
"""

try:
    import select
except ImportError:  # pragma: no cover
    import uselect as select

SLICE_S = 1  # below every supported board's hardware watchdog (5 s at the least)
_EINPROGRESS = (115, 119, 36)  # Linux/lwIP, MicroPython's lwIP build, BSD


def call(idle):
    if idle is not None:
        idle()


def timed_out(exc):
    """A socket timeout: OSError(ETIMEDOUT) on MicroPython, socket.timeout on CPython."""
    code = exc.args[0] if exc.args else None
    return code in (110, 116, "timed out") or type(exc).__name__ in ("timeout", "TimeoutError")


def connect(sock, addr, timeout, idle):
    """TCP connect to `addr` within `timeout` seconds, calling `idle` every slice; raises
    OSError when refused or not answered in time."""
    sock.setblocking(False)
    try:
        sock.connect(addr)
    except OSError as exc:
        if (exc.args[0] if exc.args else None) not in _EINPROGRESS:
            raise
    p = select.poll()
    p.register(sock, select.POLLOUT | select.POLLERR | select.POLLHUP)
    waited = 0
    while True:
        ev = p.poll(SLICE_S * 1000)
        if ev:
            flags = ev[0][1]
            if flags & (select.POLLERR | select.POLLHUP):
                raise OSError(111, "connection refused")
            break
        waited += SLICE_S
        if waited >= timeout:
            raise OSError(110, "no answer to connect in %d s" % waited)
        call(idle)
    p.unregister(sock)
    sock.setblocking(True)
    sock.settimeout(SLICE_S)
