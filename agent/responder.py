"""MQTT 5 request/response services on a connection of their own (forwarding, the oracle,
downlink commands): each asker's answers go only under its own name, with its Correlation Data.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, ClassVar, Generic, Self, TypeVar

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties, VariableByteIntegers, writeBytes, writeUTF

from agent.component import Health
from agent.config import BrokerEndpoint
from agent.config.service import RequestResponseConfig
from agent.mqtt import MqttConnection

_REPLY_VERDICTS: dict[tuple[str, tuple[str, ...]], bool] = {}


def reply_topic_allowed(reply_to: str, filters: tuple[str, ...]) -> bool:
    """A request/response service answers only on a concrete topic under one of its filters
    (so a client cannot make the gateway publish onto observation topics)."""
    key = (reply_to, filters)
    verdict = _REPLY_VERDICTS.get(key)
    if verdict is None:
        # A client asks from the same reply topic again and again: remember the answer (bounded).
        verdict = not set(reply_to) & set("+#") and any(
            paho.topic_matches_sub(f, reply_to) for f in filters
        )
        if len(_REPLY_VERDICTS) >= 4096:
            _REPLY_VERDICTS.clear()
        _REPLY_VERDICTS[key] = verdict
    return verdict


class JsonReplyProperties(Properties):
    """The PUBLISH properties of a JSON reply: Content Type and the request's Correlation Data.

    paho's Properties checks every attribute set by scanning its table of property names, and
    again when packing: about a tenth of the forwarder's CPU per request (py-spy, bench.forward).
    This one shares paho's tables, holds the same two attributes, and packs them once with
    paho's own encoders, in paho's order; `pack()` gives the bytes paho's would.
    """

    _TABLES = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    _CONTENT_TYPE: bytes = VariableByteIntegers.encode(3) + writeUTF("application/json")  # type: ignore[no-untyped-call]
    _packed: bytes

    def __init__(self, correlation: bytes | None) -> None:
        tables = self._TABLES
        for name in ("packetType", "types", "names", "properties"):
            object.__setattr__(self, name, getattr(tables, name))
        object.__setattr__(self, "ContentType", "application/json")
        body = self._CONTENT_TYPE
        if correlation is not None:
            object.__setattr__(self, "CorrelationData", correlation)
            body += VariableByteIntegers.encode(9) + writeBytes(correlation)  # type: ignore[no-untyped-call]
        packed = VariableByteIntegers.encode(len(body)) + body  # type: ignore[no-untyped-call]
        object.__setattr__(self, "_packed", packed)

    def pack(self) -> bytes:
        return self._packed


def publish_json_reply(
    client: paho.Client, reply_to: str, answer: bytes, correlation: bytes | None, qos: int = 1
) -> None:
    """An MQTT 5 response: the request's Correlation Data echoed, content type JSON."""
    client.publish(reply_to, answer, qos=qos, properties=JsonReplyProperties(correlation))


CLIENT = "{client}"  # in a reply filter: the asker's name, from its request topic
MAX_CLIENT_NAME = 128  # characters of the request topic's last level
MAX_CORRELATION_BYTES = 256


def client_filters(filters: tuple[str, ...], client: str) -> tuple[str, ...]:
    """The reply filters of one asker: `{client}` replaced by its name."""
    return tuple(f.replace(CLIENT, client) for f in filters)


class MqttResponder:
    """A request/response service on an MQTT connection of its own.

    Each asker publishes on `<request_topic>/<name>`, where `<name>` is its broker username
    (the broker's ACL, `pattern write .../req/%u`, lets it publish there and nowhere else, so
    the topic proves who asked), and names a Response Topic under its own name (a reply filter
    with `{client}`, which the ACL lets only that user read). The service subscribes to
    `<request_topic>/+`; `serve(client, payload, reply_to, correlation, qos)` gets the name,
    and the request's MQTT 5 Response Topic and Correlation Data (None when absent).
    `reply_refusal` is the check every subclass makes before answering."""

    def __init__(
        self,
        endpoint: BrokerEndpoint,
        *,
        request_topic: str,
        reply_filters: tuple[str, ...],
        client_id: str,
        link: str,
        logger: logging.Logger,
    ) -> None:
        self.request_topic = request_topic
        self.reply_filters = reply_filters
        self.log = logger
        # nodelay: request/response is ping-pong of small packets; with Nagle's algorithm on,
        # an answer can wait ~40 ms for the peer's delayed ACK.
        self.conn = MqttConnection(
            endpoint, client_id=client_id, clean_start=True, name=link, logger=logger, nodelay=True
        )
        self.ready = asyncio.Event()
        self.conn.client.on_message = self._on_message
        self.conn.client.on_subscribe = lambda *a: self.ready.set()
        self.conn.on_connected = self._subscribe
        self._tasks: set[asyncio.Task[None]] = set()
        self._prefix_len = len(request_topic) + 1

    def _subscribe(self, session_present: bool) -> None:
        self.conn.client.subscribe(self.request_topic + "/+", 1)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        asker = msg.topic[self._prefix_len :]
        props = getattr(msg, "properties", None)
        reply_to = getattr(props, "ResponseTopic", None) if props is not None else None
        corr = getattr(props, "CorrelationData", None) if props is not None else None
        t = asyncio.get_running_loop().create_task(
            self.serve(asker, bytes(msg.payload), reply_to, corr, min(msg.qos, 1))
        )
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    def reply_refusal(self, asker: str, reply_to: str, correlation: Any) -> tuple[str, str] | None:
        """(reason, detail) when the request must not be answered at `reply_to`: the topic is
        not under the asker's own name (another client's answers, or an observation topic), or
        the correlation is not a short opaque value."""
        if not asker or len(asker) > MAX_CLIENT_NAME:
            return "client_name_invalid", f"request topic level {asker[:40]!r}: 1-128 characters"
        filters = client_filters(self.reply_filters, asker)
        if not reply_topic_allowed(reply_to, filters):
            return (
                "reply_topic_denied",
                f"reply topic {reply_to[:80]!r} is outside {list(filters)}",
            )
        if correlation is not None:
            size = (
                len(correlation)
                if isinstance(correlation, bytes)
                else len(json.dumps(correlation).encode())
                if isinstance(correlation, str | int) and not isinstance(correlation, bool)
                else -1
            )
            if not 0 <= size <= MAX_CORRELATION_BYTES:
                return (
                    "correlation_invalid",
                    f"correlation must be a string, number or bytes of at most "
                    f"{MAX_CORRELATION_BYTES} bytes",
                )
        return None

    async def serve(
        self, asker: str, payload: bytes, reply_to: str | None, corr: bytes | None, qos: int
    ) -> None:
        raise NotImplementedError

    async def run(self) -> None:
        await self.conn.run()

    async def stop(self, grace: float = 0.3) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.conn.stop(grace=grace)

    def health(self) -> Health:
        up = self.conn.connected.is_set()
        return Health(
            "up" if up else "down",
            {"url": self.conn.endpoint.url, "topic": self.request_topic, "busy": len(self._tasks)},
        )


S = TypeVar("S")


class ServiceResponder(MqttResponder, Generic[S]):
    """A responder that hands each request to one service object (forwarding's `Forwarder`, the
    oracle's `OracleService`): the constructor they share, and the one way wiring builds them
    from their config section. `link` is both the connection's name and the topic level of the
    requests: `<prefix>/<gateway>/<link>/req/<name>`."""

    link: ClassVar[str]
    logger_name: ClassVar[str]

    def __init__(
        self,
        service: S,
        endpoint: BrokerEndpoint,
        *,
        request_topic: str,
        reply_filters: tuple[str, ...],
        client_id: str,
        logger: logging.Logger | None = None,
    ) -> None:
        super().__init__(
            endpoint,
            request_topic=request_topic,
            reply_filters=reply_filters,
            client_id=client_id,
            link=self.link,
            logger=logger or logging.getLogger(self.logger_name),
        )
        self.service = service

    @classmethod
    def from_config(
        cls, service: S, cfg: RequestResponseConfig, *, gateway: str, client_id: str
    ) -> Self:
        """The service's responder on `[<section>.mqtt]`, its reply filters with the prefix and
        the gateway filled in (`{client}` stays, for each asker's name)."""
        assert cfg.mqtt is not None  # the config reader always sets it
        names = {"prefix": cfg.topic_prefix, "gateway": gateway, "client": CLIENT}
        return cls(
            service,
            cfg.mqtt,
            request_topic=f"{cfg.topic_prefix}/{gateway}/{cls.link}/req",
            reply_filters=tuple(t.format(**names) for t in cfg.reply_topics),
            client_id=client_id,
        )
