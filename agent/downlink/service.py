"""The downlink component: takes commands (`answer_request` for dApps and operators over MQTT 5
and CoAP, `submit()` for contract events and Home Assistant), frames each with the device key
and its downlink counter, delivers it (MQTT `devices/<id>/down`, CoAP, BLE GATT write), and
answers with the gateway's signed receipt of the device's authenticated answer (docs/downlink.md).

Delivery is one command at a time per device, in order. The command in flight is published
retained (QoS 1, MQTT 5 Message Expiry = what is left of its TTL), so a device that was offline
gets it the moment it subscribes; it is published again every `resend` until answered, and the
retained copy is cleared when the command is answered or its TTL ends. A device executes a
counter once: a resent command is answered again from the device's memory, never re-executed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.attest.keys import GatewayKey
from agent.component import Health
from agent.config import DownlinkConfig
from agent.downlink.codec import Command, DownlinkError, encode_command, parse_answer, verify_answer
from agent.downlink.mqttrequests import serve_mqtt_request
from agent.downlink.outcomes import answered, delivered_unanswered, expired
from agent.downlink.policy import CommandPolicy, DeviceKeys
from agent.downlink.requests import CommandRefused, new_command, parse_request, topic_device
from agent.downlink.store import CommandStore, StoredCommand
from agent.logs import RateLimitedLog, event
from agent.metrics import Metrics
from agent.model import Eip712Domain, Transport
from agent.responder import MqttResponder


class CommandPusher(Protocol):
    """A transport that pushes the command in flight to the device itself (BLE GATT write,
    agent/devices/blecommands.py) and hands the device's answer to `take_answer`."""

    def deliver(self, device: str, command_id: str, frame: bytes) -> None: ...

    def cancel(self, device: str) -> None: ...

    async def close(self) -> None: ...


class Downlink(MqttResponder):
    """Commands in, receipts out; one MQTT 5 connection for requesters and devices."""

    name = "downlink"

    def __init__(
        self,
        cfg: DownlinkConfig,
        *,
        store: CommandStore,
        devices: DeviceKeys,
        key: GatewayKey,
        domain: Eip712Domain,
        metrics: Metrics,
        client_id: str,
        config_file: str = "the agent's config file",
        clock: Callable[[], float] = time.time,
        logger: logging.Logger | None = None,
    ) -> None:
        assert cfg.mqtt is not None
        self.config_file = config_file
        names = {"prefix": cfg.topic_prefix, "gateway": key.address, "client": "{client}"}
        self.request_prefix = f"{cfg.topic_prefix}/{key.address}/cmd/req/"
        super().__init__(
            cfg.mqtt,
            request_topic=self.request_prefix + "+",
            reply_filters=tuple(t.format(**names) for t in cfg.reply_topics),
            client_id=client_id,
            link="downlink",
            logger=logger or logging.getLogger("agent.downlink"),
        )
        self.cfg = cfg
        self.store = store
        self.devices = devices
        self.key = key
        self.domain = domain
        self.metrics = metrics
        self.clock = clock
        self.rlog = RateLimitedLog(self.log)
        self._ack_filter = cfg.ack_topic.format(id="+")
        self._ack_device = topic_device(cfg.ack_topic)
        self._queues: dict[str, deque[str]] = {}  # device -> open command ids, oldest first
        self._inflight: dict[str, StoredCommand] = {}  # device -> the command sent to it
        self._frames: dict[str, bytes] = {}  # device -> the in-flight command's frame
        self._bad_answers: dict[str, int] = {}  # command id -> answers refused (bad MAC)
        self._waiters: dict[str, list[asyncio.Future[dict[str, Any]]]] = {}
        self.transports = {Transport.MQTT}  # wiring adds CoAP and BLE when their sources run
        self.pushers: dict[Transport, CommandPusher] = {}  # transports that push (BLE GATT)
        self.policy = CommandPolicy(cfg, devices, self.transports, config_file)
        self._loaded = False
        self._timer: asyncio.Task[None] | None = None
        self._busy = 0

    # -- requests --------------------------------------------------------------------------
    def _subscribe(self, session_present: bool) -> None:
        self.conn.client.subscribe([(self.request_topic, 1), (self._ack_filter, 1)])
        for device in list(self._frames):  # after a reconnect: the retained copy may be gone
            self._publish_frame(device)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        topic = msg.topic
        if topic.startswith(self.request_prefix):
            requester = topic[len(self.request_prefix) :]
            props = getattr(msg, "properties", None)
            reply_to = getattr(props, "ResponseTopic", None) if props is not None else None
            corr = getattr(props, "CorrelationData", None) if props is not None else None
            coro = serve_mqtt_request(
                self, requester, bytes(msg.payload), reply_to, corr, min(msg.qos, 1)
            )
        else:
            device = self._ack_device(topic)
            if device is None:
                return
            coro = self._take_mqtt_answer(device, bytes(msg.payload))
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def answer_request(self, requester: str, payload: bytes) -> dict[str, Any]:
        """A requester's JSON request (MQTT or CoAP) -> the outcome it is answered with, once
        the device answered or the TTL ended, or the refusal."""
        self._busy += 1
        try:
            if self._busy > self.cfg.max_inflight:
                raise CommandRefused("busy", f"more than {self.cfg.max_inflight} requests waiting")
            req = parse_request(payload)
            stored = await self.submit(
                requester,
                req["device"],
                req["action"],
                req["args"],
                req.get("ttl"),
                command_id=req.get("id"),
            )
            return await self.outcome(stored.command_id)
        except CommandRefused as exc:
            return {"ok": False, "error": exc.reason, "detail": exc.detail}
        finally:
            self._busy -= 1

    # -- the public side -------------------------------------------------------------------
    def _refuse(
        self, requester: str, device: str, action: str, reason: str, detail: str
    ) -> CommandRefused:
        self.count_refusal(requester, device, action, reason, detail)
        return CommandRefused(reason, detail)

    def count_refusal(
        self, requester: str, device: str, action: str, reason: str, detail: str
    ) -> None:
        self.metrics.inc("commands_refused", reason=reason)
        self.rlog.event(
            (requester, device, reason),
            "command_refused",
            logging.WARNING,
            requester=requester[:40],
            device=device,
            action=action,
            reason=reason,
            detail=detail,
        )

    def check(self, requester: str, device: str, action: str, trusted: bool = False) -> bytes:
        """The device key, if `requester` may send `action` to `device`; raises CommandRefused.
        `trusted`: the operator's own configuration asks ([[downlink.events]]), no policy."""
        refusal = self.policy.refusal(requester, device, action, trusted)
        if refusal is not None:
            raise self._refuse(requester, device[:40], action[:40], *refusal)
        return self.devices.keys[device]

    async def submit(
        self,
        requester: str,
        device: str,
        action: str,
        args: Mapping[str, Any],
        ttl: float | None = None,
        *,
        command_id: str | None = None,
        event_key: str | None = None,
        trusted: bool = False,
    ) -> StoredCommand:
        """Check and queue a command; returns it as stored. The same `command_id` (or
        `event_key`) again returns the command already queued, never a second one."""
        self.check(requester, device, action, trusted)
        try:
            cmd = new_command(
                self.cfg, requester, device, action, args, ttl, command_id, self.clock()
            )
        except CommandRefused as exc:
            raise self._refuse(requester, device, action, exc.reason, exc.detail) from None
        stored, new = await self.store.add(cmd, event_key)
        if new:
            self.metrics.inc("commands_queued")
            event(
                self.log,
                "command_queued",
                id=stored.command_id,
                device=device,
                action=action,
                requester=requester[:40],
                expires=stored.expires,
            )
            self._queues.setdefault(device, deque()).append(stored.command_id)
            await self._kick(device)
        return stored

    async def outcome(self, command_id: str) -> dict[str, Any]:
        """What became of a command: waits until it is answered or its TTL ends."""
        stored = await self.store.get(command_id)
        if stored is None:
            raise CommandRefused("unknown_command", f"no command {command_id!r}")
        if stored.outcome is not None:
            return stored.outcome
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(command_id, []).append(fut)
        try:
            return await fut
        finally:
            waiters = self._waiters.get(command_id)
            if waiters is not None and fut in waiters:
                waiters.remove(fut)

    # -- delivery --------------------------------------------------------------------------
    async def _kick(self, device: str) -> None:
        """Send the device's next command if none is in flight."""
        if not self._loaded or device in self._inflight:
            return
        q = self._queues.get(device)
        while q:
            cid = q[0]
            cmd = await self.store.assign_counter(cid)
            if not cmd.open:
                q.popleft()
                continue
            key = self.devices.keys.get(device)
            if key is None:  # unenrolled since: the TTL will end it
                return
            assert cmd.counter is not None
            frame = encode_command(
                key,
                Command(cmd.command_id, device, cmd.action, cmd.args, cmd.expires, cmd.counter),
            )
            self._inflight[device] = cmd
            self._frames[device] = frame
            self._publish_frame(device)
            pusher = self._pusher(device)
            if pusher is not None:
                pusher.deliver(device, cid, frame)
            event(self.log, "command_sent", id=cid, device=device, n=cmd.counter)
            return
        self._queues.pop(device, None)

    def _publish_frame(self, device: str) -> None:
        cmd, frame = self._inflight.get(device), self._frames.get(device)
        if cmd is None or frame is None or not self.conn.connected.is_set():
            return
        rec = self.devices.records.get(device)
        if rec is not None and rec.transport is not Transport.MQTT:
            return  # CoAP: the device takes it with the answer to its next POST
        left = max(1, int(cmd.expires - self.clock()))
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.MessageExpiryInterval = left
        topic = self.cfg.down_topic.format(id=device)
        self.conn.client.publish(topic, frame, qos=1, retain=True, properties=props)
        self.metrics.inc("command_frames_sent")

    def _pusher(self, device: str) -> CommandPusher | None:
        rec = self.devices.records.get(device)
        return None if rec is None else self.pushers.get(rec.transport)

    def _clear(self, device: str) -> None:
        self._inflight.pop(device, None)
        self._frames.pop(device, None)
        pusher = self._pusher(device)
        if pusher is not None:
            pusher.cancel(device)
        rec = self.devices.records.get(device)
        if self.conn.connected.is_set() and (rec is None or rec.transport is Transport.MQTT):
            self.conn.client.publish(self.cfg.down_topic.format(id=device), b"", qos=1, retain=True)

    async def _finish(self, cmd: StoredCommand, state: str, outcome: dict[str, Any]) -> None:
        if await self.store.finish(cmd.command_id, state, outcome):
            for fut in self._waiters.pop(cmd.command_id, []):
                if not fut.done():
                    fut.set_result(outcome)
        self._bad_answers.pop(cmd.command_id, None)
        q = self._queues.get(cmd.device_id)
        if q and cmd.command_id in q:
            q.remove(cmd.command_id)
        if self._inflight.get(cmd.device_id) is not None and (
            self._inflight[cmd.device_id].command_id == cmd.command_id
        ):
            self._clear(cmd.device_id)
        await self._kick(cmd.device_id)

    # -- CoAP and BLE delivery (coapresources.CommandHooks, blecommands.AnswerSink) ---------
    def pending_frame(self, device: str) -> bytes | None:
        """The command in flight for a device, for the answer to its next CoAP POST."""
        frame = self._frames.get(device)
        if frame is not None:
            self.metrics.inc("command_frames_sent")
        return frame

    async def take_answer(self, device: str, payload: bytes) -> str | None:
        """A device's answer that came over CoAP or BLE: None if taken, else why not."""
        return await self._on_answer(device, payload)

    async def _take_mqtt_answer(self, device: str, payload: bytes) -> None:
        await self._on_answer(device, payload)  # refusals are counted and logged there

    async def take_unanswered(self, device: str, command_id: str) -> None:
        """The in-flight command was written to a device that cannot answer (BLE without an
        answer characteristic): it ends delivered, without a receipt."""
        cmd = self._inflight.get(device)
        if cmd is None or cmd.command_id != command_id:
            return
        self.metrics.inc("commands_delivered_unanswered")
        event(self.log, "command_delivered_unanswered", id=command_id, device=device)
        await self._finish(cmd, "delivered", delivered_unanswered(cmd))

    async def _on_answer(self, device: str, payload: bytes) -> str | None:
        if not payload:
            return "empty"
        cmd = self._inflight.get(device)
        try:
            answer = parse_answer(payload, device)
        except DownlinkError as exc:
            self._answer_rejected(device, exc.reason, exc.detail, cmd)
            return exc.reason
        key = self.devices.keys.get(device)
        if key is None or not verify_answer(key, answer):
            self._answer_rejected(device, "bad_mac", "the answer's mac does not verify", cmd)
            return "bad_mac"
        if cmd is None or cmd.command_id != answer.command_id or cmd.counter != answer.counter:
            self.metrics.inc("command_answers_rejected", reason="not_in_flight")
            event(
                self.log,
                "command_answer_ignored",
                logging.DEBUG,
                device=device,
                id=answer.command_id,
                n=answer.counter,
            )
            return "not_in_flight"
        outcome = answered(self.key, self.domain, cmd, answer, int(self.clock()))
        self.metrics.inc("commands_answered", status=answer.status)
        event(
            self.log,
            "command_answered",
            id=cmd.command_id,
            device=device,
            status=answer.status,
            n=answer.counter,
        )
        await self._finish(cmd, "answered", outcome)
        return None

    def _answer_rejected(
        self, device: str, reason: str, detail: str, cmd: StoredCommand | None
    ) -> None:
        self.metrics.inc("command_answers_rejected", reason=reason)
        if cmd is not None:
            self._bad_answers[cmd.command_id] = self._bad_answers.get(cmd.command_id, 0) + 1
        self.rlog.event(
            (device, reason),
            "command_answer_rejected",
            logging.WARNING,
            device=device,
            reason=reason,
            detail=detail,
        )

    async def _expire(self) -> None:
        now = self.clock()
        for cmd in await self.store.open_commands():
            if cmd.expires > now:
                continue
            outcome = expired(cmd, self._bad_answers.get(cmd.command_id, 0))
            reason = outcome["error"]
            self.metrics.inc("commands_expired", reason=reason)
            self.rlog.event(
                (cmd.device_id, reason),
                "command_expired",
                logging.WARNING,
                id=cmd.command_id,
                device=cmd.device_id,
                reason=reason,
            )
            await self._finish(cmd, "expired", outcome)

    async def _ticks(self) -> None:
        last_resend = time.monotonic()
        while True:
            await asyncio.sleep(0.5)
            await self._expire()
            if time.monotonic() - last_resend >= self.cfg.resend_s:
                last_resend = time.monotonic()
                for device in list(self._frames):
                    self._publish_frame(device)

    # -- lifecycle -------------------------------------------------------------------------
    async def run(self) -> None:
        await self.store.open()
        if not self._loaded:
            for cmd in await self.store.open_commands():
                self._queues.setdefault(cmd.device_id, deque()).append(cmd.command_id)
            self._loaded = True
        self._timer = asyncio.create_task(self._ticks())
        conn = asyncio.create_task(self.conn.run())
        try:
            await self.conn.connected.wait()
            for device in list(self._queues):
                await self._kick(device)
            await conn
        finally:
            self._timer.cancel()
            conn.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await conn

    async def stop(self, grace: float = 0.3) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for pusher in self.pushers.values():
            await pusher.close()
        await super().stop(grace)
        await self.store.close()

    def health(self) -> Health:
        h = super().health()
        detail = dict(h.detail)
        detail["in_flight"] = len(self._inflight)
        detail["queued"] = sum(len(q) for q in self._queues.values())
        return Health(h.state, detail)


__all__ = ["Downlink"]
