"""The requester's side of the command service: one MQTT 5 request on
`<prefix>/<gateway>/cmd/req/<requester>` and its answer on a reply topic of its own (what
`edgence-agent devices command` and bench/command_bench.py use; dApps do the same)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.config import BrokerEndpoint
from agent.errors import AgentError
from agent.mqtt import MqttConnection


class CommandClient:
    """`async with CommandClient(endpoint, prefix, gateway, requester) as c: await c.send(..)`."""

    def __init__(self, endpoint: BrokerEndpoint, prefix: str, gateway: str, requester: str) -> None:
        self.request_topic = f"{prefix}/{gateway}/cmd/req/{requester}"
        tag = secrets.token_hex(4)
        self.reply_topic = f"{prefix}/{gateway}/cmd/res/{requester}/{tag}"
        self.conn = MqttConnection(
            endpoint,
            client_id=f"edgence-cmd-{requester}-{tag}"[:64],
            clean_start=True,
            name="command-client",
            nodelay=True,
        )
        self._pending: dict[bytes, asyncio.Future[dict[str, Any]]] = {}
        self._subscribed = asyncio.Event()
        self.conn.client.on_message = self._on_message
        self.conn.client.on_subscribe = lambda *a: self._subscribed.set()
        self.conn.on_connected = self._subscribe
        self._task: asyncio.Task[None] | None = None

    def _subscribe(self, session_present: bool) -> None:
        self.conn.client.subscribe(self.reply_topic, 1)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        corr = getattr(getattr(msg, "properties", None), "CorrelationData", None)
        fut = self._pending.pop(bytes(corr), None) if corr is not None else None
        if fut is not None and not fut.done():
            try:
                fut.set_result(json.loads(msg.payload))
            except ValueError:
                fut.set_exception(AgentError("the command service sent an answer that is not JSON"))

    async def __aenter__(self) -> CommandClient:
        self._task = asyncio.create_task(self.conn.run())
        try:
            await asyncio.wait_for(self._subscribed.wait(), 10)
        except TimeoutError:
            await self.close()
            raise AgentError(
                f"no connection to the command broker {self.conn.endpoint.url} within 10 s",
                fix="check [downlink.mqtt] url, username and password_file",
            ) from None
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.conn.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def send(self, request: dict[str, Any], wait_s: float) -> dict[str, Any]:
        """Publish one command request; the service's answer (outcome or refusal)."""
        corr = secrets.token_bytes(8)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[corr] = fut
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = self.reply_topic
        props.CorrelationData = corr
        self.conn.client.publish(
            self.request_topic, json.dumps(request).encode(), qos=1, properties=props
        )
        try:
            return await asyncio.wait_for(fut, wait_s)
        except TimeoutError:
            raise AgentError(
                f"no answer from the command service on {self.request_topic} in {wait_s:g} s",
                fix="is the agent running with [downlink] enabled = true?",
            ) from None
        finally:
            self._pending.pop(corr, None)


__all__ = ["CommandClient"]
