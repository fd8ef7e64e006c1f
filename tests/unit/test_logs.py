"""Structured key=value logging (quoting, event lines, the formatter, the rate limiter) and the
in-process Metrics counters and gauges."""

from __future__ import annotations

import io
import logging
import os
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

import agent.logs
from agent.logs import KeyValueFormatter, RateLimitedLog, event, format_value, kv
from agent.metrics import Metrics


class FakeClock:
    """Stands in for the `time` module inside agent.logs: `monotonic()` returns `now`, which
    the test advances by hand, so the rate limiter's interval is exercised without sleeping.
    Everything else (strftime, gmtime) is the real time module."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(agent.logs, "time", fake)
    return fake


class Captured:
    """A real logger whose records go, formatted by KeyValueFormatter, into a string buffer."""

    def __init__(self, name: str) -> None:
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(KeyValueFormatter())
        self.logger = logging.getLogger(name)
        self.logger.handlers[:] = [self.handler]
        self.logger.setLevel(logging.DEBUG)
        self.logger.propagate = False

    def lines(self) -> list[str]:
        return self.stream.getvalue().splitlines()

    def messages(self, debug: bool = False) -> list[str]:
        """Each line without its ts/level/logger prefix (debug lines only when asked)."""
        return [
            line.split(f"logger={self.logger.name} ", 1)[1]
            for line in self.lines()
            if debug or " level=debug " not in line
        ]


@pytest.fixture
def captured(request: pytest.FixtureRequest) -> Iterator[Captured]:
    c = Captured(f"test.logs.{request.node.name}")
    yield c
    c.logger.handlers.clear()


# --- format_value and event -----------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["plain", "sim-1", "devices/+/up", "0x1f", "a.b:c@d", "[ppm]", "50%", 42, 1.5]
)
def test_format_value_leaves_plain_tokens_unquoted(value: object) -> None:
    assert format_value(value) == str(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("two words", '"two words"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("line1\nline2", '"line1\\nline2"'),
        ("", '""'),
        ("a=b", '"a=b"'),
        ("back\\slash", '"back\\\\slash"'),
        ("température", '"température"'),
    ],
)
def test_format_value_quotes_and_escapes_when_needed(value: str, expected: str) -> None:
    assert format_value(value) == expected


def test_format_value_output_has_no_carriage_return() -> None:
    assert "\r" not in format_value("ok\rlevel=error forged=1")


def test_kv_joins_fields_in_order_and_skips_none() -> None:
    assert kv(host="h", port=1883, user=None, note="a b") == 'host=h port=1883 note="a b"'


def test_event_writes_one_line_event_name_then_fields(captured: Captured) -> None:
    event(captured.logger, "bridge_connected", host="127.0.0.1", port=1884, why="first try")
    assert captured.messages() == [
        'event=bridge_connected host=127.0.0.1 port=1884 why="first try"'
    ]


def test_event_without_fields_has_no_trailing_space(captured: Captured) -> None:
    event(captured.logger, "ready")
    assert captured.messages() == ["event=ready"]


def test_event_with_a_multiline_value_stays_on_one_line(captured: Captured) -> None:
    event(captured.logger, "frame_rejected", detail="line1\nline2")
    assert len(captured.lines()) == 1


def test_event_below_the_logger_level_writes_nothing(captured: Captured) -> None:
    captured.logger.setLevel(logging.WARNING)
    event(captured.logger, "chatty", level=logging.INFO, x=1)
    event(captured.logger, "loud", level=logging.ERROR, x=2)
    assert captured.messages() == ["event=loud x=2"]


# --- KeyValueFormatter ----------------------------------------------------------------------

LINE_RE = re.compile(
    r"^ts=\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z level=(debug|info|warning|error) "
    r"logger=\S+ (event|msg)=\S.*$"
)


def test_formatter_prefixes_timestamp_level_and_logger(captured: Captured) -> None:
    event(captured.logger, "journal_opened", level=logging.WARNING, path="/tmp/j")
    (line,) = captured.lines()
    assert LINE_RE.match(line), line
    assert f" level=warning logger={captured.logger.name} event=journal_opened path=/tmp/j" in line


def test_formatter_timestamp_is_the_record_time_in_utc() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "event=e", None, None)
    record.created, record.msecs = 0.0, 7.0
    assert KeyValueFormatter().format(record).startswith("ts=1970-01-01T00:00:00.007Z level=info")


def test_formatter_wraps_a_plain_message_as_quoted_msg(captured: Captured) -> None:
    captured.logger.info("started %d workers", 3)
    assert captured.messages() == ['msg="started 3 workers"']


def test_formatter_puts_an_exception_on_the_same_line(captured: Captured) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        captured.logger.exception("event=failed component=bridge")
    (line,) = captured.lines()
    assert LINE_RE.match(line), line
    assert "level=error" in line
    assert ' exc="Traceback (most recent call last):\\n' in line
    assert "ValueError: boom" in line


# --- RateLimitedLog -------------------------------------------------------------------------


def test_rate_limited_log_logs_the_first_event_at_once(
    clock: FakeClock, captured: Captured
) -> None:
    limited = RateLimitedLog(captured.logger, interval=10.0)
    assert limited.event(("dev-1", "bad_json"), "frame_rejected", device="dev-1") is True
    assert captured.messages() == ["event=frame_rejected device=dev-1"]


def test_rate_limited_log_suppresses_repeats_within_the_interval(
    clock: FakeClock, captured: Captured
) -> None:
    limited = RateLimitedLog(captured.logger, interval=10.0)
    key = ("dev-1", "bad_json")
    assert limited.event(key, "frame_rejected", device="dev-1")
    for step in range(5):
        clock.now += 1.9
        assert limited.event(key, "frame_rejected", device="dev-1") is False, step
    levels = [line.split()[1] for line in captured.lines()]
    assert levels == ["level=warning"] + ["level=debug"] * 5


def test_rate_limited_log_logs_distinct_keys_of_a_group_up_to_its_limit(
    clock: FakeClock, captured: Captured
) -> None:
    limited = RateLimitedLog(captured.logger, interval=10.0, group_limit=3)
    shown = [
        limited.event(
            ("dev-1", "bad_mac", f"detail {i}"), "frame_rejected", group=("dev-1", "bad_mac")
        )
        for i in range(5)
    ]
    assert shown == [True, True, True, False, False]
    clock.now += 10.0
    assert limited.event(
        ("dev-1", "bad_mac", "detail 9"), "frame_rejected", group=("dev-1", "bad_mac")
    )
    assert [line.split()[1] for line in captured.lines()].count("level=debug") == 2


def test_rate_limited_log_reports_the_suppressed_count_after_the_interval(
    clock: FakeClock, captured: Captured
) -> None:
    limited = RateLimitedLog(captured.logger, interval=10.0)
    key = ("dev-1", "bad_json")
    limited.event(key, "frame_rejected", device="dev-1")
    for _ in range(3):
        clock.now += 1.0
        limited.event(key, "frame_rejected", device="dev-1")
    clock.now += 10.0
    assert limited.event(key, "frame_rejected", device="dev-1") is True
    clock.now += 10.0
    assert limited.event(key, "frame_rejected", device="dev-1") is True
    assert captured.messages() == [
        "event=frame_rejected device=dev-1",
        "event=frame_rejected device=dev-1 suppressed=3",
        "event=frame_rejected device=dev-1",
    ]


def test_rate_limited_log_uses_the_warning_level_by_default(
    clock: FakeClock, captured: Captured
) -> None:
    RateLimitedLog(captured.logger, interval=10.0).event(("k",), "flood")
    assert " level=warning " in captured.lines()[0]


def test_rate_limited_log_limits_each_key_separately(clock: FakeClock, captured: Captured) -> None:
    limited = RateLimitedLog(captured.logger, interval=10.0)
    assert limited.event(("dev-1",), "frame_rejected", device="dev-1")
    assert limited.event(("dev-2",), "frame_rejected", device="dev-2")
    assert not limited.event(("dev-1",), "frame_rejected", device="dev-1")
    assert captured.messages() == [
        "event=frame_rejected device=dev-1",
        "event=frame_rejected device=dev-2",
    ]


# --- Metrics --------------------------------------------------------------------------------


def test_metrics_get_of_an_unknown_counter_is_zero() -> None:
    assert Metrics().get("frames") == 0
    assert Metrics().get("frames", reason="x") == 0


def test_metrics_inc_adds_per_label_set_and_get_sums_without_labels() -> None:
    m = Metrics()
    m.inc("frames_rejected", reason="not_json")
    m.inc("frames_rejected", 4, reason="oversize")
    m.inc("frames_rejected", reason="not_json")
    m.inc("frames_ok", 10)
    assert m.get("frames_rejected", reason="not_json") == 2
    assert m.get("frames_rejected", reason="oversize") == 4
    assert m.get("frames_rejected") == 6
    assert m.get("frames_ok") == 10


def test_metrics_label_order_does_not_matter() -> None:
    m = Metrics()
    m.inc("x", a="1", b="2")
    m.inc("x", b="2", a="1")
    assert m.get("x", b="2", a="1") == 2
    assert m.snapshot() == {"x{a=1,b=2}": 2}


def test_metrics_by_label_sums_per_value_of_one_label() -> None:
    m = Metrics()
    m.inc("rejected", reason="replay", device="d1")
    m.inc("rejected", 2, reason="replay", device="d2")
    m.inc("rejected", reason="unknown_device", device="d1")
    m.inc("rejected", 5)
    m.inc("other", reason="replay")
    assert m.by_label("rejected", "reason") == {"replay": 3, "unknown_device": 1, "": 5}
    assert m.by_label("rejected", "device") == {"d1": 2, "d2": 2, "": 5}


def test_metrics_snapshot_has_counters_with_labels_and_live_gauges() -> None:
    m = Metrics()
    depth = [3.0]
    m.inc("frames_ok", 7)
    m.inc("rejected", reason="oversize")
    m.gauge("queue_depth", lambda: depth[0])
    assert m.snapshot() == {"frames_ok": 7, "rejected{reason=oversize}": 1, "queue_depth": 3.0}
    depth[0] = 9.0
    assert m.snapshot()["queue_depth"] == 9.0


# --- journald priorities and the log level of `run` ---------------------------------------


def test_lines_to_the_journal_stream_carry_syslog_priorities(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = (tmp_path / "journal-stream").open("w+")
    st = os.fstat(out.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        agent.logs.setup_logging("info", out)
        log = logging.getLogger("test.journal")
        event(log, "hello", x=1)
        event(log, "trouble", logging.WARNING)
        event(log, "failed", logging.ERROR)
        event(log, "noise", logging.DEBUG)  # below the level: not written
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    out.seek(0)
    lines = out.read().splitlines()
    assert [line[:3] for line in lines] == ["<6>", "<4>", "<3>"]
    assert lines[0].endswith("event=hello x=1")


def test_other_streams_get_no_priority_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    assert agent.logs.writes_to_journal(io.StringIO()) is False
    assert agent.logs.writes_to_journal(io.StringIO(), env={}) is False


def test_a_reason_budget_bounds_lines_over_all_ids_and_a_summary_tells_the_rest(
    clock: FakeClock, captured: Captured
) -> None:
    limited = RateLimitedLog(
        captured.logger, interval=60.0, reason_budget=3, summary_event="rejected_summary"
    )
    for i in range(20_000):  # 20,000 distinct unknown ids, as a flood would send them
        d = f"ghost-{i % 7}" if i % 2 else f"u{i}"
        limited.event((d, "unknown_device"), "rejected", budget="unknown_device", ident=d, d=d)
    limited.event(("dev-1", "replay"), "rejected", budget="replay", ident="dev-1", d="dev-1")
    warnings = captured.messages()
    assert len(warnings) == 4  # 3 of the unknown_device budget, 1 replay
    assert limited.pending_summary
    clock.now += 60
    limited.event(("dev-1", "replay", "again"), "rejected", budget="replay", ident="x", d="x")
    summary = [m for m in captured.messages() if m.startswith("event=rejected_summary")]
    assert len(summary) == 1
    fields = dict(f.split("=", 1) for f in summary[0].split(" ")[1:])
    assert fields["held_back"] == "19997"
    assert fields["reasons"] == "unknown_device:19997"
    assert int(fields["distinct_ids"]) <= RateLimitedLog.MAX_IDS + 1  # bounded memory
    top = fields["top_ids"].split(",")
    assert len(top) == 5 and all(t.startswith("ghost-") for t in top)  # the loudest ids
    assert len(captured.messages()) == 6  # the summary, then a new window's first line
    limited.flush()
    assert len(captured.messages()) == 6  # nothing held back since: no summary line
