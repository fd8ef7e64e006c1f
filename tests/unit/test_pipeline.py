"""The pipeline with a real journal (sqlite in tmp_path) and a real signer: device checks,
replays, and what a full journal under `reject-new` does to counters."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.attest.keys import GatewayKey
from agent.attest.observation import ObservationSigner, verify_envelope
from agent.devices.codecs.frame import encode_frame, parse_frame
from agent.journal import Journal
from agent.metrics import Metrics
from agent.model import Eip712Domain, Transport
from agent.pipeline import AllowlistGate, Arrival, Pipeline

DOMAIN = Eip712Domain("Edgence", "1", 31337, "0x" + "00" * 20)


class Harness:
    def __init__(self, tmp: Path, **journal_opts: object) -> None:
        self.journal = Journal(tmp / "j.sqlite", sinks=["bridge"], **journal_opts)  # type: ignore[arg-type]
        self.key = GatewayKey.generate()
        self.metrics = Metrics()
        self.pipeline = Pipeline(
            signer=ObservationSigner(self.key, DOMAIN),
            journal=self.journal,
            gate=AllowlistGate(["dev-1", "dev-2"]),
            metrics=self.metrics,
        )
        self.acked: list[int] = []
        self.task: asyncio.Task[None] | None = None

    def offer(self, device: str, counter: int, n_values: int = 1) -> None:
        frame = parse_frame(
            encode_frame(counter, [(f"s{i}", counter, 0, "Cel") for i in range(n_values)])
        )
        self.pipeline.offer(
            Arrival(frame, device, Transport.MQTT, "mqtt", ack=lambda: self.acked.append(counter))
        )

    async def settle(self) -> None:
        assert await self.pipeline.drain(grace=10)

    async def start(self) -> None:
        await self.journal.open()
        await self.pipeline.load_state()
        self.task = asyncio.create_task(self.pipeline.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await self.journal.close()

    async def journaled(self) -> list[tuple[str, int]]:
        """What the journal holds, read through its own thread like every other reader."""
        out = []
        for e in await self.journal.read_after("bridge", 0, 10_000):
            r = verify_envelope(e.envelope).reading
            out.append((r.device_id, r.counter))
        return out


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(tmp_path)
    await h.start()
    yield h
    await h.stop()


async def test_frames_are_signed_in_order_and_every_arrival_is_acknowledged(
    harness: Harness,
) -> None:
    for n in range(1, 6):
        harness.offer("dev-1", n, n_values=2)
    await harness.settle()
    assert await harness.journaled() == [("dev-1", n) for n in range(1, 6) for _ in range(2)]
    assert harness.acked == [1, 2, 3, 4, 5]
    assert harness.metrics.get("observations_signed") == 10


async def test_replays_within_and_across_batches_and_unknown_devices_are_refused_and_acked(
    harness: Harness,
) -> None:
    harness.offer("dev-1", 5)
    harness.offer("dev-1", 5)  # same batch
    harness.offer("dev-2", 1)
    harness.offer("stranger", 1)
    await harness.settle()
    harness.offer("dev-1", 4)  # a later batch, below the last accepted, never seen: in the window
    harness.offer("dev-1", 4)  # its copy
    harness.offer("dev-1", 6)
    harness.offer("dev-1", 5)  # accepted in the first batch
    await harness.settle()
    assert await harness.journaled() == [("dev-1", 5), ("dev-2", 1), ("dev-1", 4), ("dev-1", 6)]
    reasons = harness.metrics.by_label("frames_rejected", "reason")
    assert reasons == {"replay": 3, "unknown_device": 1}
    assert sorted(harness.acked) == [1, 1, 4, 4, 5, 5, 5, 6]  # refused frames are acked too


async def test_out_of_order_counters_pass_once_inside_the_window_and_never_below_it(
    tmp_path: Path,
) -> None:
    """A window of 4: after 10, counters 7..9 may each come once, 6 and below never; the same
    holds after a restart, from the windows the journal kept with the observations."""
    first = Harness(tmp_path, replay_window=4)
    await first.start()
    try:
        for n in (10, 8, 6, 8):
            first.offer("dev-1", n)
        await first.settle()
    finally:
        await first.stop()
    second = Harness(tmp_path, replay_window=4)
    await second.start()
    try:
        for n in (8, 9, 7, 6, 10, 9, 11):
            second.offer("dev-1", n)
        await second.settle()
        assert [c for _, c in await second.journaled()] == [10, 8, 9, 7, 11]
        assert second.metrics.by_label("frames_rejected", "reason") == {"replay": 4}
        assert second.pipeline.last_counter("mqtt/dev-1") == 11
    finally:
        await second.stop()


async def test_counters_survive_a_restart_of_the_pipeline(tmp_path: Path) -> None:
    first = Harness(tmp_path)
    await first.start()
    first.offer("dev-1", 9)
    await first.settle()
    await first.stop()
    second = Harness(tmp_path)
    await second.start()
    try:
        second.offer("dev-1", 9)
        second.offer("dev-1", 10)
        await second.settle()
        assert [c for _, c in await second.journaled()] == [9, 10]
        assert second.metrics.by_label("frames_rejected", "reason") == {"replay": 1}
    finally:
        await second.stop()


async def test_a_frame_refused_by_a_full_journal_is_accepted_when_it_comes_again(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path, max_bytes=4_000, overflow="reject-new")
    await h.start()
    try:
        n = 0
        while h.metrics.get("frames_rejected") == 0:
            n += 1
            h.offer("dev-1", n)
            await h.settle()
        refused = n
        assert h.metrics.by_label("frames_rejected", "reason") == {"journal_full": 1}
        assert ("dev-1", refused) not in await h.journaled()
        # The bridge delivers everything; delivered entries make room; the device retries.
        await h.journal.ack("bridge", (await h.journal.stats()).last_seq)
        h.offer("dev-1", refused)
        await h.settle()
        assert ("dev-1", refused) in await h.journaled()
    finally:
        await h.stop()


async def test_a_first_frame_may_use_counter_zero(harness: Harness) -> None:
    harness.offer("dev-1", 0)
    harness.offer("dev-1", 0)
    await harness.settle()
    assert await harness.journaled() == [("dev-1", 0)]


async def test_each_distinct_rejection_is_logged_and_repeats_go_to_debug(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.pipeline")
    for n in (5, 4, 3, 2):  # each accepted once (inside the replay window)
        harness.offer("dev-1", n)
    await harness.settle()
    for n in (3, 4, 4, 2):  # three distinct details, one repeated
        harness.offer("dev-1", n)
    await harness.settle()
    lines = [
        (r.levelno, r.getMessage()) for r in caplog.records if "frame_rejected" in r.getMessage()
    ]
    warned = [m for lvl, m in lines if lvl == logging.WARNING]
    assert len(warned) == 3 and all("reason=replay" in m for m in warned)
    assert [m for lvl, m in lines if lvl == logging.DEBUG] == [
        m for m in warned if "counter 4 " in m
    ]


async def test_a_full_journal_pauses_intake_and_acknowledges_only_what_it_stored(
    tmp_path: Path,
) -> None:
    """overflow = "pause" (the default): the batch that does not fit is held, unacknowledged,
    the pipeline reports no space (sources pause), and it goes in once the bridge delivered."""
    h = Harness(tmp_path, max_bytes=4_000)
    await h.start()
    try:
        n = 0
        while h.pipeline.has_space():
            n += 1
            h.offer("dev-1", n)
            await asyncio.sleep(0.05)
        held = n
        assert h.acked == list(range(1, held))  # the held frame is not acknowledged
        assert h.metrics.get("frames_rejected") == 0
        assert h.metrics.by_label("intake_paused", "reason") == {"journal_full": 1}
        h.offer("dev-1", held + 1)  # a source that offers anyway is told to wait
        assert not h.pipeline.has_space()
        await h.journal.ack("bridge", (await h.journal.stats()).last_seq)
        await h.settle()
        assert h.pipeline.has_space()
        assert h.acked == list(range(1, held + 2))
        assert [c for _, c in await h.journaled()][-2:] == [held, held + 1]
    finally:
        await h.stop()


class FakeMonotonic:
    """A fake clock (allowed: the linger is a duration, and this test is about its arithmetic)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_linger_counts_from_the_oldest_queued_reading_not_from_when_it_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeMonotonic()
    monkeypatch.setattr("agent.pipeline.time.monotonic", clock)
    h = Harness(tmp_path)
    h.pipeline.linger = 0.002
    h.offer("dev-1", 1)  # the queue was empty: the linger starts now
    clock.now += 0.0005
    h.offer("dev-1", 2)  # queued behind it: does not restart the linger
    assert h.pipeline.linger_left() == pytest.approx(0.0015)
    clock.now += 0.003  # e.g. the previous batch was being journaled all this time
    assert h.pipeline.linger_left() < 0  # nothing more to wait for
