"""The downlink component: takes commands (MQTT 5 request/response from dApps and operators,
`submit()` from the contract-event follower), frames each with the device key and its downlink
counter, delivers it on `devices/<id>/down`, and answers the requester with the gateway's
signed receipt of the device's authenticated answer (docs/downlink.md).

Delivery is one command at a time per device, in order. The command in flight is published
retained (QoS 1, MQTT 5 Message Expiry = what is left of its TTL), so a device that was offline
gets it the moment it subscribes; it is published again every `resend` until answered, and the
retained copy is cleared when the command is answered or its TTL ends. A device executes a
counter once: a resent command is answered again from the device's memory, never re-executed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.attest.keys import GatewayKey
from agent.attest.receipt import receipt_message, sign_receipt
from agent.component import Health
from agent.config import DownlinkConfig
from agent.devices.registry import DeviceRecord, DeviceStatus
from agent.downlink.codec import (
    Command,
    DownlinkError,
    answer_canonical,
    check_args,
    encode_command,
    parse_answer,
    verify_answer,
)
from agent.downlink.store import CommandStore, StoredCommand
from agent.errors import AgentError
from agent.logs import RateLimitedLog, event
from agent.metrics import Metrics
from agent.model import NAME_RE, Eip712Domain, Transport
from agent.responder import MqttResponder, publish_json_reply

MAX_REQUEST_BYTES = 4096


class CommandRefused(AgentError):
    """A command the gateway will not queue; `reason` is a stable label, `detail` says why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class DeviceKeys(Protocol):
    """The enrolled devices as the gateway last read them (agent/devices/gate.py)."""

    @property
    def records(self) -> Mapping[str, DeviceRecord]: ...

    @property
    def keys(self) -> Mapping[str, bytes]: ...


def _topic_device(template: str) -> Callable[[str], str | None]:
    """The device id in a topic made from `template` ("devices/{id}/ack"), or None."""
    levels = template.split("/")
    at = levels.index("{id}")

    def device_of(topic: str) -> str | None:
        parts = topic.split("/")
        if len(parts) != len(levels):
            return None
        dev = parts[at]
        return dev if NAME_RE.match(dev) else None

    return device_of


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
        self._ack_device = _topic_device(cfg.ack_topic)
        self._queues: dict[str, deque[str]] = {}  # device -> open command ids, oldest first
        self._inflight: dict[str, StoredCommand] = {}  # device -> the command sent to it
        self._frames: dict[str, bytes] = {}  # device -> the in-flight command's frame
        self._bad_answers: dict[str, int] = {}  # command id -> answers refused (bad MAC)
        self._waiters: dict[str, list[asyncio.Future[dict[str, Any]]]] = {}
        self.transports = {Transport.MQTT}  # wiring adds CoAP when the CoAP source serves commands
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
            coro = self._serve_request(
                requester, bytes(msg.payload), reply_to, corr, min(msg.qos, 1)
            )
        else:
            device = self._ack_device(topic)
            if device is None:
                return
            coro = self._mqtt_answer(device, bytes(msg.payload))
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _mqtt_answer(self, device: str, payload: bytes) -> None:
        await self._on_answer(device, payload)  # refusals are counted and logged there

    async def _serve_request(
        self, requester: str, payload: bytes, reply_to: str | None, corr: bytes | None, qos: int
    ) -> None:
        if reply_to is None:
            self._count_refusal(
                requester,
                "-",
                "-",
                "no_reply_topic",
                f"no Response Topic under {list(self.reply_filters)}",
            )
            return
        refusal = self.reply_refusal(requester, reply_to, corr)
        if refusal is not None:
            self._count_refusal(requester, "-", "-", *refusal)
            return
        answer: dict[str, Any]
        self._busy += 1
        try:
            if self._busy > self.cfg.max_inflight:
                raise CommandRefused("busy", f"more than {self.cfg.max_inflight} requests waiting")
            req = _parse_request(payload)
            stored = await self.submit(
                requester,
                req["device"],
                req["action"],
                req["args"],
                req.get("ttl"),
                command_id=req.get("id"),
            )
            answer = await self.outcome(stored.command_id)
        except CommandRefused as exc:
            answer = {"ok": False, "error": exc.reason, "detail": exc.detail}
        finally:
            self._busy -= 1
        publish_json_reply(
            self.conn.client,
            reply_to,
            json.dumps(answer, separators=(",", ":")).encode(),
            corr,
            qos,
        )

    # -- the public side -------------------------------------------------------------------
    def _refuse(
        self, requester: str, device: str, action: str, reason: str, detail: str
    ) -> CommandRefused:
        self._count_refusal(requester, device, action, reason, detail)
        return CommandRefused(reason, detail)

    def _count_refusal(
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
        if not NAME_RE.match(device):
            raise self._refuse(requester, device[:40], action, "unknown_device", "not a device id")
        rule = self.cfg.rule_for(requester)
        if not trusted and (rule is None or not rule.allows(device, action)):
            allowed = (
                "nothing (no [[downlink.policy]] for this requester)"
                if rule is None
                else f"actions {list(rule.actions)} on devices {list(rule.devices)}"
            )
            raise self._refuse(
                requester,
                device,
                action,
                "not_allowed",
                f"{requester!r} may not send {action!r} to {device!r}; "
                f"[[downlink.policy]] in {self.config_file} allows it {allowed}",
            )
        rec = self.devices.records.get(device)
        key = self.devices.keys.get(device)
        if rec is None or key is None:
            raise self._refuse(
                requester,
                device,
                action,
                "unknown_device",
                f"{device!r} is not enrolled (edgence-agent pair)",
            )
        if rec.status is DeviceStatus.REVOKED:
            raise self._refuse(requester, device, action, "revoked", f"{device!r} was revoked")
        if rec.transport not in self.transports:
            raise self._refuse(
                requester,
                device,
                action,
                "wrong_transport",
                f"{device!r} is enrolled over {rec.transport}; commands go over "
                + " and ".join(str(t) for t in sorted(self.transports)),
            )
        return key

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
        if not NAME_RE.match(action):
            raise self._refuse(
                requester,
                device,
                action[:40],
                "bad_request",
                "action must be 1-32 of A-Z a-z 0-9 _ . : -",
            )
        self.check(requester, device, action, trusted)
        ttl = self.cfg.default_ttl_s if ttl is None else ttl
        if ttl <= 0:
            raise self._refuse(
                requester,
                device,
                action,
                "expired",
                f"the command's ttl ({ttl:g} s) has already ended",
            )
        if ttl > self.cfg.max_ttl_s:
            raise self._refuse(
                requester,
                device,
                action,
                "bad_ttl",
                f"ttl {ttl:g} s is above downlink.max_ttl ({self.cfg.max_ttl_s:g} s)",
            )
        try:
            clean = check_args(dict(args))
        except DownlinkError as exc:
            raise self._refuse(requester, device, action, "bad_args", exc.detail) from None
        if command_id is not None and not NAME_RE.match(command_id):
            raise self._refuse(
                requester, device, action, "bad_request", "id must be 1-32 of A-Z a-z 0-9 _ . : -"
            )
        now = self.clock()
        cmd = StoredCommand(
            command_id=command_id or f"c{secrets.token_hex(8)}",
            device_id=device,
            action=action,
            args=clean,
            requester=requester,
            created=int(now),
            expires=int(now + ttl + 0.999),
            counter=None,
            state="queued",
            outcome=None,
        )
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

    def _clear(self, device: str) -> None:
        self._inflight.pop(device, None)
        self._frames.pop(device, None)
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

    # -- CoAP delivery (agent/devices/coap.py CommandHooks) ----------------------------------
    def pending_frame(self, device: str) -> bytes | None:
        """The command in flight for a device, for the answer to its next CoAP POST."""
        frame = self._frames.get(device)
        if frame is not None:
            self.metrics.inc("command_frames_sent")
        return frame

    async def take_answer(self, device: str, payload: bytes) -> str | None:
        """A device's answer that came over CoAP: None if taken, else why not."""
        return await self._on_answer(device, payload)

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
        canon = answer_canonical(
            device, answer.counter, answer.command_id, answer.status, answer.result
        )
        now = int(self.clock())
        receipt = sign_receipt(
            self.key,
            self.domain,
            receipt_message(
                cmd.command_id, device, cmd.action, answer.status, canon, answer.counter, now
            ),
            canon,
            dict(answer.result),
        )
        outcome: dict[str, Any] = {
            "ok": answer.ok,
            "id": cmd.command_id,
            "device": device,
            "action": cmd.action,
            "status": answer.status,
            "result": dict(answer.result),
            "receipt": receipt.as_json(self.domain),
        }
        if not answer.ok:
            outcome["error"] = answer.status
            outcome["detail"] = f"the device answered {answer.status!r}"
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
            bad = self._bad_answers.get(cmd.command_id, 0)
            if bad:
                reason = "bad_answer_mac"
                detail = f"{bad} answer(s) failed the device's MAC; none verified before the TTL"
            elif cmd.counter is None:
                reason = "device_offline"
                detail = "the TTL ended while earlier commands to the device were pending"
            else:
                reason = "device_offline"
                detail = "the device did not answer before the TTL ended"
            self.metrics.inc("commands_expired", reason=reason)
            self.rlog.event(
                (cmd.device_id, reason),
                "command_expired",
                logging.WARNING,
                id=cmd.command_id,
                device=cmd.device_id,
                reason=reason,
            )
            await self._finish(
                cmd,
                "expired",
                {
                    "ok": False,
                    "id": cmd.command_id,
                    "device": cmd.device_id,
                    "action": cmd.action,
                    "error": reason,
                    "detail": detail,
                },
            )

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
        await super().stop(grace)
        await self.store.close()

    def health(self) -> Health:
        h = super().health()
        detail = dict(h.detail)
        detail["in_flight"] = len(self._inflight)
        detail["queued"] = sum(len(q) for q in self._queues.values())
        return Health(h.state, detail)


def _parse_request(payload: bytes) -> dict[str, Any]:
    """{"device":..., "action":..., "args":{...}, "ttl": seconds, "id": optional}."""
    if len(payload) > MAX_REQUEST_BYTES:
        raise CommandRefused("bad_request", f"larger than {MAX_REQUEST_BYTES} bytes")
    try:
        req = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise CommandRefused("bad_request", "the request is not JSON") from None
    if not isinstance(req, dict):
        raise CommandRefused("bad_request", "the request must be a JSON object")
    unknown = sorted(set(req) - {"device", "action", "args", "ttl", "id"})
    if unknown:
        raise CommandRefused(
            "bad_request", f"unknown field {unknown[0]!r}; allowed: device, action, args, ttl, id"
        )
    for k in ("device", "action"):
        if not isinstance(req.get(k), str):
            raise CommandRefused("bad_request", f"{k} is required (text)")
    req.setdefault("args", {})
    ttl = req.get("ttl")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float)):
        raise CommandRefused("bad_request", "ttl must be a number of seconds")
    if "id" in req and not isinstance(req["id"], str):
        raise CommandRefused("bad_request", "id must be text")
    return req


__all__ = ["CommandRefused", "DeviceKeys", "Downlink"]
