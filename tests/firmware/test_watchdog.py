"""The watchdog is fed through one idle hook from every bounded wait, and only from there: a
gateway that accepts TCP but never answers MQTT for 60 s, or Wi-Fi that takes 30 s to
associate, means frames in the outbox and no reset; a loop that hangs outside those waits
still resets the board.

The gateway is a real listening socket on loopback, the firmware's MQTT client and netwait
are the real ones. Time is a fake clock: each socket timeout really waits 1/1000 of its length
and advances the clock by the full length, and sleeps only advance it; the hardware watchdog
is a fake on that clock (a board's WDT cannot run here), which counts a bite whenever two
feeds are further apart than its timeout. Slow Wi-Fi association is a fake WLAN (no radio).
"""

from __future__ import annotations

import json
import socket
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from edgence import app, board, config, watchdog
from edgence.app import Node
from edgence.counter import BlockCounter
from edgence.mqtt import MqttLink
from edgence.outbox import Outbox
from edgence.sensors import SimulatedSensor

SCALE = 1000  # a socket timeout of 1 s really waits 1 ms


class FakeClock:
    """Stands in for `utime` (a fake clock: 60 s of outage must not take 60 s)."""

    def __init__(self) -> None:
        self.ms = 0

    def ticks_ms(self) -> int:
        return self.ms

    def ticks_diff(self, a: int, b: int) -> int:
        return a - b

    def sleep_ms(self, ms: int) -> None:
        self.ms += int(ms)

    def time(self) -> int:
        return 1764000000 + self.ms // 1000

    def gmtime(self, t: int = 0) -> Any:
        import time

        return time.gmtime(t)


class FakeWdt:
    """Stands in for machine.WDT on the fake clock: counts bites instead of resetting."""

    def __init__(self, clock: FakeClock, timeout: int) -> None:
        self.clock, self.timeout = clock, timeout
        self.last = clock.ms
        self.bites = 0
        self.longest = 0

    def feed(self) -> None:
        self.check()
        self.last = self.clock.ms

    def check(self) -> None:
        gap = self.clock.ms - self.last
        self.longest = max(self.longest, gap)
        if gap > self.timeout:
            self.bites += 1
            self.last = self.clock.ms  # the board would have reset here


class ScaledSocket:
    """A real socket whose timeouts run SCALE times faster, advancing the fake clock by their
    nominal length."""

    def __init__(self, clock: FakeClock, *args: Any) -> None:
        self.clock = clock
        self.sock = socket.socket(*args)
        self.timeout: float | None = None

    def settimeout(self, t: float | None) -> None:
        self.timeout = t
        self.sock.settimeout(None if t is None else t / SCALE)

    def recv(self, n: int) -> bytes:
        try:
            return self.sock.recv(n)
        except TimeoutError:
            self.clock.ms += int((self.timeout or 0) * 1000)
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


def scaled_socket_module(clock: FakeClock) -> Any:
    mod = types.SimpleNamespace(**{k: getattr(socket, k) for k in dir(socket) if k.isupper()})
    mod.getaddrinfo = socket.getaddrinfo
    mod.socket = lambda *a: ScaledSocket(clock, *a)
    return mod


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    c = FakeClock()
    for module in (app, board, watchdog):
        monkeypatch.setattr(module, "time", c)
    return c


@pytest.fixture
def silent_gateway() -> Iterator[tuple[str, int]]:
    """Accepts TCP connections (the kernel's backlog) and never answers a byte."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    yield srv.getsockname()
    srv.close()


def bundle(host: str, port: int) -> config.Config:
    b = {
        "edgence": 1, "device_id": "wd-1", "transport": "mqtt", "key": "0f" * 32,
        "counter_start": 0, "mqtt": {"host": host, "port": port, "topic": "devices/wd-1/up"},
        "firmware": {"interval_s": 10, "watchdog_s": 300},
    }  # fmt: skip
    return config.parse(json.dumps(b))


def node_for(cfg: config.Config, clock: FakeClock, flash: Path, link: Any) -> tuple[Node, FakeWdt]:
    wdt = FakeWdt(clock, watchdog.hw_timeout_ms(cfg.firmware["watchdog_s"], "rp2"))
    dog = watchdog.Watchdog(wdt, cfg.firmware["watchdog_s"])
    node = Node(
        cfg,
        link,
        [SimulatedSensor()],
        BlockCounter(str(flash), 0, 64),
        Outbox(str(flash), 32),
        dog,
        clock=clock.time,
    )
    return node, wdt


def run_for(node: Node, clock: FakeClock, wdt: FakeWdt, seconds: int) -> None:
    while clock.ms < seconds * 1000:
        node.step()
        wdt.check()
        node.sleep(node.cfg.firmware["interval_s"])
        wdt.check()


def test_a_gateway_that_never_answers_for_60_s_buffers_frames_without_a_reset(
    clock: FakeClock, silent_gateway: tuple[str, int], tmp_path: Path
) -> None:
    cfg = bundle(*silent_gateway)
    link = MqttLink(cfg, sock_module=scaled_socket_module(clock))
    node, wdt = node_for(cfg, clock, tmp_path, link)
    link.idle = node.idle  # what board.build_node wires
    run_for(node, clock, wdt, 60)
    assert wdt.bites == 0
    # Fed at least every two 1 s slices (the last wait of a step, then the first of its sleep),
    # also while waiting for CONNACK: well inside the shortest board watchdog (5 s).
    assert wdt.longest <= 2000
    # Each cycle waited the client's full 10 s for a CONNACK, then kept its frame.
    assert len(node.outbox) == node.counter.peek() >= 3 and node.sent == 0


def test_without_the_idle_hook_the_same_wait_starves_the_watchdog(
    clock: FakeClock, silent_gateway: tuple[str, int], tmp_path: Path
) -> None:
    cfg = bundle(*silent_gateway)
    link = MqttLink(cfg, sock_module=scaled_socket_module(clock))
    node, wdt = node_for(cfg, clock, tmp_path, link)  # link.idle left unset
    run_for(node, clock, wdt, 60)
    assert wdt.bites >= 1 and wdt.longest >= 10000


class Hung:
    """A link whose send hangs for 9 s without calling the idle hook (a wedged driver)."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock

    def send(self, frame: bytes) -> bool:
        self.clock.ms += 9000
        return False


def test_a_real_hang_outside_the_bounded_waits_still_resets(
    clock: FakeClock, tmp_path: Path
) -> None:
    cfg = bundle("127.0.0.1", 1)
    node, wdt = node_for(cfg, clock, tmp_path, Hung(clock))
    run_for(node, clock, wdt, 30)
    assert wdt.bites >= 1


class SlowWlan:
    """Stands in for network.WLAN (no radio here): associates 30 s after connect()."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.at: int | None = None

    def active(self, on: bool | None = None) -> bool:
        return True

    def connect(self, ssid: str, password: str = "") -> None:
        self.at = self.clock.ms + 30000

    def isconnected(self) -> bool:
        return self.at is not None and self.clock.ms >= self.at

    def status(self, param: str | None = None) -> int:
        return -61


def test_slow_wifi_association_feeds_the_watchdog_while_it_waits(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    wlan = SlowWlan(clock)
    monkeypatch.setitem(
        sys.modules, "network", types.SimpleNamespace(STA_IF=0, WLAN=lambda i: wlan)
    )
    wdt = FakeWdt(clock, watchdog.hw_timeout_ms(300, "rp2"))
    dog = watchdog.Watchdog(wdt, 300)
    board.wifi_up({"ssid": "field"}, timeout_s=40, idle=dog.feed)
    wdt.check()
    assert wlan.isconnected() and wdt.bites == 0 and wdt.longest <= 100


@pytest.mark.parametrize(
    ("platform", "window_s", "expected"),
    [("esp32", 300, 8000), ("rp2", 300, 8000), ("esp8266", 300, 5000), ("rp2", 1.5, 2000)],
)
def test_hardware_watchdog_timeouts_respect_each_boards_limit(
    platform: str, window_s: float, expected: int
) -> None:
    assert watchdog.hw_timeout_ms(window_s, platform) == expected


def test_only_esp32_and_pico_w_are_supported_boards() -> None:
    assert watchdog.board_supported("esp32") and watchdog.board_supported("rp2")
    assert not watchdog.board_supported("esp8266")
