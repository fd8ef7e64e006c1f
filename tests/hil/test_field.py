"""The field-test suite, run against a rig (`pytest -m hil --rig FILE`): the firmware deployed
with its bundle, enrolled, its readings signed upstream over each transport the rig has,
power cycles and deep sleep keeping the counter, link loss and recovery, the watchdog, the
CoAP and serial transports into the agent's CoAP and serial sources. On the emulated rig (the
default) the firmware is the unchanged MicroPython code on CPython with host shims; the agent
and Mosquitto are real on every rig."""

from __future__ import annotations

import json
import re
import zlib

import pytest

from agent.devices.auth import mac_matches
from agent.devices.codecs.frame import parse_frame
from tests.hil.boards import Board
from tests.hil.conftest import Gateway, sensor_args, settings_for
from tests.integration.conftest import wait_until

# A field test brings up a board and a gateway of real parts, then waits through outages:
# up to 29 s each on the emulated rig on a busy machine; real boards (flashing, Wi-Fi) are slower.
pytestmark = pytest.mark.timeout(120)


def starts(board: Board) -> list[tuple[str, int]]:
    """(reset cause, first counter) of every start the board's console shows."""
    text = board.console()
    causes = re.findall(r"event=reset cause=(\w+)", text)
    nexts = [int(n) for n in re.findall(r"event=start .*?next=(\d+)", text)]
    return list(zip(causes, nexts, strict=False))


def bring_up(gateway: Gateway, board: Board, device: str, **settings: object) -> None:
    bundle = gateway.pair(device, *sensor_args(board), **settings_for(board, **settings))
    board.deploy(json.dumps(bundle).encode())
    gateway.agent.start()
    board.power_on()


@pytest.mark.needs("deploy", "mqtt")
def test_a_deployed_board_enrolls_and_its_readings_arrive_signed(
    gateway: Gateway, board: Board
) -> None:
    bring_up(gateway, board, "field-1")
    wait_until(lambda: len(gateway.observations("field-1")) >= 5, 30, "five signed readings")
    obs = gateway.observations("field-1")
    assert {o["reading"]["auth"] for o in obs} == {"hmac"}
    assert {o["reading"]["sensor"] for o in obs} == {"temperature"}
    counters = gateway.counters("field-1")
    assert counters == list(range(counters[-1] + 1))  # from counter_start 0, none lost
    assert gateway.device_record("field-1")["status"] == "active"


@pytest.mark.needs("mqtt", "power_cycle")
def test_a_power_cycle_keeps_the_counter_going_up(gateway: Gateway, board: Board) -> None:
    bring_up(gateway, board, "field-2")
    wait_until(lambda: len(gateway.observations("field-2")) >= 6, 30, "readings before the cut")
    board.power_cycle()
    wait_until(lambda: len(starts(board)) == 2, 30, "the board's second start")
    before = max(gateway.counters("field-2"))
    wait_until(lambda: max(gateway.counters("field-2")) >= before + 4, 30, "readings after it")
    counters = gateway.counters("field-2")
    assert counters == sorted(set(counters))  # strictly increasing: nothing replayed
    (c1, n1), (c2, n2) = starts(board)
    assert (c1, n1) == ("pwron", 0) and c2 == "pwron"
    # The second start continues at the end of the reserved block (4), after all it used.
    assert n2 % 4 == 0 and n2 > max(c for c in counters if c < n2)
    assert gateway.device_record("field-2")["last_counter"] >= n2


@pytest.mark.needs("mqtt", "link_loss")
def test_readings_taken_while_the_broker_is_down_arrive_after_it_returns(
    gateway: Gateway, board: Board
) -> None:
    bring_up(gateway, board, "field-3", outbox=64)
    wait_until(lambda: len(gateway.observations("field-3")) >= 3, 30, "readings before")
    gateway.devices.broker.stop()
    wait_until(lambda: "buffered=5 " in board.console(), 30, "five readings buffered")
    gateway.devices.broker.start()
    wait_until(lambda: "event=link_back" in board.console(), 30, "the board's link back")
    top = int(re.findall(r"event=sent n=(\d+)", board.console())[-1])
    wait_until(lambda: max(gateway.counters("field-3")) >= top, 30, "the backlog upstream")
    counters = gateway.counters("field-3")
    assert counters[: top + 1] == list(range(top + 1))  # every buffered reading, in order


@pytest.mark.slow
@pytest.mark.timeout(180)  # four waits of up to 30 s each, through a broker outage and a reset
@pytest.mark.needs("mqtt", "link_loss")
def test_the_watchdog_resets_a_board_cut_off_too_long_and_flash_keeps_its_readings(
    gateway: Gateway, board: Board
) -> None:
    bring_up(gateway, board, "field-4", watchdog_s=1.5, outbox=64)
    wait_until(lambda: len(gateway.observations("field-4")) >= 3, 30, "readings before")
    gateway.devices.broker.stop()
    wait_until(lambda: "event=reset cause=wdt" in board.console(), 30, "a watchdog reset")
    gateway.devices.broker.start()
    wait_until(lambda: "event=link_back" in board.console(), 30, "the board's link back")
    after_reset = next(n for cause, n in starts(board) if cause == "wdt")
    wait_until(
        lambda: max(gateway.counters("field-4")) >= after_reset, 30, "readings after the reset"
    )
    counters = gateway.counters("field-4")
    assert counters == sorted(set(counters))
    # Everything taken before the reset was kept in flash and delivered after it.
    assert set(range(after_reset)) <= set(counters)


@pytest.mark.needs("mqtt", "deep_sleep")
def test_deep_sleep_keeps_the_exact_counter_in_rtc_memory(gateway: Gateway, board: Board) -> None:
    bring_up(gateway, board, "field-5", deep_sleep=True, interval_s=0.1)
    wait_until(lambda: len(gateway.observations("field-5")) >= 6, 30, "six wake-ups")
    counters = gateway.counters("field-5")
    assert counters == list(range(len(counters)))  # no block skipped across deep sleeps
    assert [c for c, _ in starts(board)][1:4] == ["deepsleep"] * 3


def assert_enrolled_readings(gateway: Gateway, device: str, transport: str) -> None:
    """Every observation of the device verified upstream, authenticated by its key, over the
    transport it was paired for, and its counters from counter_start 0 with none lost."""
    obs = gateway.observations(device)
    assert {o["reading"]["auth"] for o in obs} == {"hmac"}
    assert {o["reading"]["transport"] for o in obs} == {transport}
    assert {o["reading"]["sensor"] for o in obs} == {"temperature"}
    counters = gateway.counters(device)
    assert counters == list(range(counters[-1] + 1))
    assert gateway.device_record(device)["status"] == "active"


@pytest.mark.needs("deploy", "coap")
def test_a_board_paired_for_coap_posts_its_readings_to_the_agents_coap_source(
    gateway: Gateway, board: Board
) -> None:
    port = gateway.serve_coap()
    bundle = gateway.pair(
        "field-8", "--transport", "coap", *sensor_args(board), **settings_for(board)
    )
    # The bundle alone tells the firmware where the agent's CoAP source is.
    assert bundle["coap"] == {"host": gateway.rig.gateway_host, "port": port, "path": "/up/field-8"}
    board.deploy(json.dumps(bundle).encode())
    gateway.agent.start()
    board.power_on()
    wait_until(lambda: len(gateway.observations("field-8")) >= 5, 30, "five signed readings")
    assert_enrolled_readings(gateway, "field-8", "coap")
    assert "transport=coap" in board.console()


@pytest.mark.needs("deploy", "serial", "uart_loopback")
def test_a_board_paired_for_serial_writes_its_readings_to_the_agents_serial_source(
    gateway: Gateway, board: Board
) -> None:
    # The agent reads the host's end of the board's UART (the other end of a pty pair on the
    # emulated rig, /dev/ttyAMA0 on the Pi).
    path = board.uart_path()
    gateway.read_serial(path, "field-9")
    bundle = gateway.pair(
        "field-9", "--transport", "serial", "--address", path, *sensor_args(board),
        **settings_for(board),
    )  # fmt: skip
    assert bundle["serial"] == {"port": path}
    board.deploy(json.dumps(bundle).encode())
    gateway.agent.start()
    # A serial line has no acknowledgement: the board starts once the agent has the port open
    # (opening it flushes what was waiting), so that no reading is written into the void.
    wait_until(lambda: "event=serial_opened" in gateway.agent.log_text(), 30, "port opened")
    board.power_on()
    wait_until(lambda: len(gateway.observations("field-9")) >= 5, 30, "five signed readings")
    assert_enrolled_readings(gateway, "field-9", "serial")
    assert "transport=serial" in board.console()


@pytest.mark.needs("serial", "uart_loopback")
def test_uart_lines_carry_signed_frames_with_their_crc(gateway: Gateway, board: Board) -> None:
    # The line as the wire carries it, checked against the rule of docs/device-frame.md ("Over
    # serial": CRC-32 of the frame, 8 lowercase hex digits, CR LF) with the agent's frame codec.
    bundle = gateway.pair(
        "field-6", "--transport", "serial", "--address", "/dev/ttyAMA0", **settings_for(board)
    )
    board.deploy(json.dumps(bundle).encode())
    uart = board.uart()
    board.power_on()
    key = bytes.fromhex(bundle["key"])
    try:
        seen = []
        for _ in range(3):
            line = uart.read_line(30)
            assert line.endswith(b"\r\n")
            body, star, crc = line[:-2].rpartition(b"*")
            assert star and crc == b"%08x" % zlib.crc32(body)
            frame = parse_frame(body)
            assert mac_matches(key, "field-6", frame)
            seen.append(frame.counter)
        assert seen == [0, 1, 2]
    finally:
        uart.close()


@pytest.mark.needs("wifi", "mqtt")
def test_signal_quality_is_reported_when_the_board_joins_wifi(
    gateway: Gateway, board: Board
) -> None:
    bring_up(gateway, board, "field-7")
    wait_until(lambda: "event=wifi_up" in board.console(), 60, "the board on Wi-Fi")
    rssi = int(re.findall(r"event=wifi_up rssi=(-?\d+)", board.console())[0])
    assert -100 < rssi < 0
