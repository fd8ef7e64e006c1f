"""Upstream MQTT bridge: delivers journaled observations in order, QoS 1, ack-then-done.

Two ways in, one order out. Catching up (after a start, an outage or an overflow) it reads the
journal after the last sequence it handed to paho. Once it has read everything, it is *live*:
the pipeline offers each committed batch together with the journal's previous newest sequence,
and a batch that follows directly on the bridge's tail is published from memory, without a
journal read. Any gap sends it back to catching up, so nothing is skipped or reordered.
At most `inflight` PUBLISHes are unacknowledged; the journal cursor advances only over a
contiguous run of PUBACKs. A retained birth / last-will message on `<prefix>/<gateway>/status`
says whether the gateway is online.

Only durable entries leave: an offered batch above the journal's last known durable sequence
waits for one `journal.sync()` (journal reads do the same by themselves), so a sequence seen
upstream is never assigned again, even after a power cut. Ranges the journal dropped
(`overflow = "drop-oldest"`) are announced on `<prefix>/<gateway>/dropped` as signed Dropped
statements (agent/attest/dropped.py), QoS 1, each marked announced in the journal once the
broker acknowledged it. `bridge.url` may list several brokers (see MqttConnection's fallbacks).
With `envelopes_per_message` > 1 (off by default) runs of consecutive envelopes go as one
JSON array on `<prefix>/<gateway>/obs-batch` instead of one message per observation on
`obs/<device>/<sensor>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.reasoncodes import ReasonCode

from agent import __version__
from agent.component import Health
from agent.config import BridgeConfig
from agent.journal import Journal
from agent.logs import RateLimitedLog, event
from agent.metrics import Metrics
from agent.model import Observation
from agent.mqtt import MqttConnection

SINK = "bridge"
BATCH_SUFFIX = "obs-batch"  # topic of batched envelopes, under <prefix>/<gateway>/


def status_payload(gateway: str, state: str) -> bytes:
    return json.dumps(
        {
            "state": state,
            "gateway": gateway,
            "agent": f"edgence-agent/{__version__}",
            "ts": int(time.time()),
        },
        separators=(",", ":"),
    ).encode()


class Bridge:
    """The upstream sink: the pipeline `offer()`s each batch it journaled; `run()` until
    cancelled (or `stop()`)."""

    name = "bridge"

    def __init__(
        self,
        cfg: BridgeConfig,
        *,
        journal: Journal,
        gateway: str,
        metrics: Metrics,
        sign_dropped: Callable[[int, int, int], bytes] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.cfg = cfg
        self.sign_dropped = sign_dropped
        self.journal = journal
        self.gateway = gateway
        self.metrics = metrics
        self.log = logger or logging.getLogger("agent.bridge")
        self._rl = RateLimitedLog(self.log)
        self.base_topic = f"{cfg.topic_prefix}/{gateway}"
        self.status_topic = f"{self.base_topic}/status"
        self.dropped_topic = f"{self.base_topic}/dropped"
        self.conn = MqttConnection(
            cfg.broker,
            client_id=cfg.broker.client_id or f"edgence-{gateway[2:14]}-bridge",
            clean_start=False,
            name="upstream",
            will=(self.status_topic, status_payload(gateway, "offline")),
            max_inflight=cfg.inflight,
            logger=self.log,
            fallbacks=cfg.fallbacks,
            failback_check=cfg.failback_check_s,
        )
        self.conn.client.on_publish = self._on_publish
        self.conn.on_connected = self._on_connected
        self._more = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        # paho mid -> (gateway sequence, topic, payload, observations); the payload is kept for
        # a republish. A batched message (envelopes_per_message > 1) is held under its last
        # sequence: it carries a contiguous run, acknowledged all at once.
        self._pending: dict[int, tuple[int, str, bytes, int]] = {}
        self._order: deque[int] = deque()  # sequences handed to paho, in order
        self._acked: set[int] = set()
        self._sent = 0  # last sequence handed to paho
        self._live = False  # caught up: contiguous offers are published from memory
        self._fast: deque[tuple[int, str, str, bytes]] = deque()  # (seq, device, sensor, body)
        self._tail = 0  # while live: last sequence held (handed to paho or waiting in _fast)
        self._durable = 0  # the journal's durable sequence as last seen
        self._drops_seen = -1  # journal.drops_recorded when pending drops were last read
        self._drop_mids: dict[int, int] = {}  # paho mid -> first sequence of a drop statement
        self._drops_out: set[int] = set()  # drop statements handed to paho, not yet acked
        self._tasks: set[asyncio.Task[None]] = set()
        self.drops_announced = 0
        self.watermark = 0
        self._persisted = 0
        self._flush_handle: asyncio.TimerHandle | None = None
        self._drained = asyncio.Event()
        # Set while the intake (the pipeline) has nothing queued: catching up, the bridge reads
        # the journal in those gaps, so that live readings do not queue behind the backlog.
        self.intake_idle: asyncio.Event | None = None
        # Ready once the journal cursor is read: an upstream that is down does not hold up the
        # agent's readiness (the journal keeps everything until it returns).
        self.ready = asyncio.Event()
        metrics.gauge("bridge_inflight", lambda: float(len(self._pending)))
        metrics.gauge("bridge_connected", lambda: float(self.conn.connected.is_set()))

    # Observations held in memory while paho's window is full (about 1.3 KB each); beyond that
    # the bridge reads them back from the journal, 512 at a time. 10,000 made an agent whose
    # upstream lagged grow by ~13 MB; 1,000 is a second at 1,000 readings/s.
    FAST_MAX = 1_000

    def offer(self, previous: int, observations: list[Observation]) -> None:
        """A batch the pipeline just journaled; `previous` is the sequence before it."""
        if self._live and previous == self._tail and len(self._fast) < self.FAST_MAX:
            for o in observations:
                r = o.reading
                self._fast.append((o.gateway_sequence, r.device_id, r.sensor, o.envelope))
            self._tail = observations[-1].gateway_sequence
        elif self._live:
            # A gap (or too much waiting): everything is in the journal, read it from there.
            self._fast.clear()
            self._live = False
        self._more.set()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def publish_retained(self, suffix: str, payload: bytes) -> bool:
        """Publish a retained QoS 1 message on `<prefix>/<gateway>/<suffix>` (e.g. health) when
        the link is up; False otherwise (it is not journaled: the next one replaces it)."""
        if not self.conn.connected.is_set():
            return False
        self.conn.client.publish(f"{self.base_topic}/{suffix}", payload, qos=1, retain=True)
        return True

    def _on_connected(self, session_present: bool) -> None:
        self.conn.client.publish(
            self.status_topic, status_payload(self.gateway, "online"), qos=1, retain=True
        )

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, rc: ReasonCode, props: Any
    ) -> None:
        item = self._pending.pop(mid, None)
        if item is None:
            first = self._drop_mids.pop(mid, None)
            if first is not None:
                self._drop_acked(first, rc)
            return  # a status message
        seq, topic, payload, count = item
        if rc.is_failure:
            # An MQTT 5 broker refused it (not authorised, quota exceeded...). It is not
            # delivered: publish it again after a pause, keeping its place in the window, so
            # that the cursor never moves past it and a misconfiguration shows as a backlog.
            self.metrics.inc("bridge_refused")
            self._rl.event(
                ("bridge", "refused"),
                "bridge_refused",
                logging.ERROR,
                seq=seq,
                topic=topic,
                reason=str(rc),
                retry_in="2s",
            )
            self._pending[-seq] = item  # placeholder: still occupies the window
            asyncio.get_running_loop().call_later(2.0, self._republish, seq, topic, payload, count)
            return
        self.metrics.inc("observations_delivered", count)
        self._acked.add(seq)
        while self._order and self._order[0] in self._acked:
            self.watermark = self._order.popleft()
            self._acked.discard(self.watermark)
        if len(self._pending) < self.cfg.inflight:
            self._room.set()
        if not self._pending:
            self._drained.set()
        if self._flush_handle is None:
            loop = asyncio.get_running_loop()
            self._flush_handle = loop.call_later(0.05, self._schedule_flush)

    def _drop_acked(self, first: int, rc: ReasonCode) -> None:
        self._drops_out.discard(first)
        if rc.is_failure:
            self._rl.event(
                ("bridge", "drop_refused"),
                "bridge_refused",
                logging.ERROR,
                topic=self.dropped_topic,
                reason=str(rc),
                retry_in="2s",
            )
            loop = asyncio.get_running_loop()
            loop.call_later(2.0, self._recheck_drops)
            return
        self.drops_announced += 1
        self.metrics.inc("drops_announced")
        task = asyncio.get_running_loop().create_task(self.journal.drop_announced(first))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _recheck_drops(self) -> None:
        self._drops_seen = -1
        self._more.set()

    async def _announce_drops(self) -> None:
        """Publish every drop record not yet announced (and not in flight)."""
        self._drops_seen = self.journal.drops_recorded
        if self.sign_dropped is None:
            return
        for d in await self.journal.pending_drops():
            if d.first_seq in self._drops_out:
                continue
            body = self.sign_dropped(d.first_seq, d.last_seq, d.dropped_at)
            info = self.conn.client.publish(self.dropped_topic, body, qos=1)
            self._drop_mids[info.mid] = d.first_seq
            self._drops_out.add(d.first_seq)
            event(
                self.log,
                "drop_announced",
                logging.WARNING,
                seq_from=d.first_seq,
                seq_to=d.last_seq,
                dropped_at=d.dropped_at,
            )

    def _republish(self, seq: int, topic: str, payload: bytes, count: int) -> None:
        if self._pending.pop(-seq, None) is None:
            return  # the bridge restarted meanwhile; the journal replays it
        info = self.conn.client.publish(topic, payload, qos=1)
        self._pending[info.mid] = (seq, topic, payload, count)

    def _schedule_flush(self) -> None:
        self._flush_handle = None
        asyncio.get_running_loop().create_task(self.flush())

    async def flush(self) -> None:
        """Persist the acknowledged watermark in the journal."""
        wm = self.watermark
        if wm > self._persisted:
            await self.journal.ack(SINK, wm)
            self._persisted = max(self._persisted, wm)

    async def run(self) -> None:
        # A restart after a failure starts again from the persisted cursor: what paho still
        # holds may go out twice, as identical copies of the same sequences.
        self._pending.clear()
        self._order.clear()
        self._acked.clear()
        self._fast.clear()
        self._live = False
        self._room.set()
        self._sent = self.watermark = self._persisted = await self.journal.cursor(SINK)
        self._drop_mids.clear()
        self._drops_out.clear()
        self._drops_seen = -1
        conn_task = asyncio.create_task(self.conn.run())
        self.ready.set()
        try:
            await self._pump()
        finally:
            conn_task.cancel()

    async def _pump(self) -> None:
        prefix = f"{self.base_topic}/obs/"
        per_message = self.cfg.envelopes_per_message
        while True:
            await self.conn.connected.wait()
            if self._drops_seen != self.journal.drops_recorded:
                # Entries were dropped: those still waiting in memory may be among them, so
                # read the survivors from the journal (only ones already handed to paho can be
                # both delivered and announced dropped).
                self._fast.clear()
                self._live = False
                await self._announce_drops()
            room = self.cfg.inflight - len(self._pending)
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            self._more.clear()
            room *= per_message  # observations that fit in the free messages of the window
            if self._fast:
                batch = [self._fast.popleft() for _ in range(min(room, len(self._fast)))]
                if batch[-1][0] > self._durable:
                    # Offered straight from the pipeline: durable before it leaves the box.
                    self._durable = await self.journal.sync()
            elif self._live:
                # Woken by an offer, or once a second to look for new drop records and for
                # entries committed but not offered yet (a batch stored in parts is offered
                # whole, after its last part): those are read from the journal.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._more.wait(), 1.0)
                if not self._fast and self.journal.last_seq > self._tail:
                    self._live = False
                continue
            else:
                await self._yield_to_intake()
                entries, newest = await self.journal.read_tail(
                    SINK, self._sent, min(room, self.cfg.batch)
                )
                if not entries:
                    # Everything appended up to `newest` has been read (the read and the
                    # newest sequence come from the journal thread at one moment). A batch
                    # committed since may have been offered while the read was on its way
                    # back (and ignored, not being live): then read again, else go live.
                    tail = max(self._sent, newest)
                    if self.journal.last_seq <= tail:
                        self._live, self._tail = True, tail
                    continue
                batch = [(e.seq, e.device_id, e.sensor, e.envelope) for e in entries]
            if per_message > 1:
                self._publish_batched(batch, per_message)
            else:
                self._publish_each(batch, prefix)

    # The longest a catch-up read waits for the intake to be idle: a backlog still drains (a
    # read of `batch` entries per wait at least) when live readings never stop coming.
    INTAKE_WAIT_MAX = 0.05

    async def _yield_to_intake(self) -> None:
        """Live readings first: the journal's thread runs one call at a time, and an append that
        finds a backlog read in front of it waits for the read (and the loop for the publishing
        after it). Measured with bench/catchup.py: see bench/RESULTS.md."""
        idle = self.intake_idle
        if idle is None or idle.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(idle.wait(), self.INTAKE_WAIT_MAX)

    def _publish_each(self, batch: list[tuple[int, str, str, bytes]], prefix: str) -> None:
        publish, pending, order = self.conn.client.publish, self._pending, self._order
        for seq, device, sensor, body in batch:
            topic = f"{prefix}{device}/{sensor}"
            pending[publish(topic, body, qos=1).mid] = (seq, topic, body, 1)
            order.append(seq)
        self._sent = batch[-1][0]

    def _publish_batched(self, batch: list[tuple[int, str, str, bytes]], per_message: int) -> None:
        """Consecutive envelopes as one JSON array per message, on `<prefix>/<gateway>/obs-batch`:
        one PUBLISH and one PUBACK for up to `per_message` observations."""
        publish, topic = self.conn.client.publish, f"{self.base_topic}/{BATCH_SUFFIX}"
        for i in range(0, len(batch), per_message):
            run = batch[i : i + per_message]
            payload = b"[" + b",".join(item[3] for item in run) + b"]"
            seq = run[-1][0]
            self._pending[publish(topic, payload, qos=1).mid] = (seq, topic, payload, len(run))
            self._order.append(seq)
        self._sent = batch[-1][0]

    async def stop(self, grace: float = 1.0) -> None:
        """Publish the offline status, give in-flight messages `grace` seconds to be acknowledged,
        persist the watermark and disconnect. What is not acknowledged stays journaled."""
        deadline = time.monotonic() + grace
        if self.conn.connected.is_set():
            self.conn.client.publish(
                self.status_topic, status_payload(self.gateway, "offline"), qos=1, retain=True
            )
            if self._pending:
                self._drained.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._drained.wait(), grace)
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        await self.flush()
        await self.conn.stop(grace=max(0.05, deadline - time.monotonic()))
        event(self.log, "bridge_stopped", delivered_upto=self.watermark, unacked=len(self._pending))

    def health(self) -> Health:
        up = self.conn.connected.is_set()
        return Health(
            "up" if up else "down",
            {
                "url": self.conn.endpoint.url,
                "broker": self.conn.endpoints.index(self.conn.endpoint) + 1,
                "brokers": len(self.conn.endpoints),
                "connected": up,
                "inflight": len(self._pending),
                "delivered_upto": self.watermark,
                "drops_announced": self.drops_announced,
            },
        )
