"""The transports of forwarding: thin shells around `Forwarder.handle` (agent/chainclient/
forward.py), an MQTT 5 (and 3.1.1) request/response service and a CoAP `POST /rpc` server.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from agent.chainclient.forward import Forwarder
from agent.coapserver import CoapServer
from agent.responder import ServiceResponder, publish_json_reply

# -- MQTT --------------------------------------------------------------------------------------


class MqttForwarder(ServiceResponder[Forwarder]):
    """Serves `<prefix>/<gateway>/rpc/req/+` on a broker (an MQTT 5 connection of its own)."""

    name = "forward-mqtt"
    link = "rpc"
    logger_name = "agent.chainclient.forward.mqtt"

    async def serve(
        self, asker: str, payload: bytes, reply_to: str | None, corr: bytes | None, qos: int = 1
    ) -> None:
        """Answer one request; the answer is published with the request's QoS (0 or 1)."""
        v311 = reply_to is None
        correlation: Any = corr
        if v311:
            # MQTT 3.1.1: the reply topic and correlation id travel in the payload.
            try:
                env = (
                    json.loads(payload)
                    if len(payload) <= self.service.policy.max_request_bytes
                    else None
                )
            except (ValueError, UnicodeDecodeError):
                env = None
            if not isinstance(env, dict) or not isinstance(env.get("reply_to"), str):
                self.service.unanswerable(
                    "mqtt",
                    "no_reply_topic",
                    "no MQTT 5 Response Topic and no reply_to in the payload: nowhere to answer",
                )
                return
            reply_to, correlation = env["reply_to"], env.get("correlation")
            payload = json.dumps(env.get("request")).encode()
        assert reply_to is not None
        refusal = self.reply_refusal(asker, reply_to, correlation)
        if refusal is not None:
            self.service.unanswerable("mqtt", *refusal)
            return
        # The limit is the asker's (its request topic, which the broker's ACL binds to its
        # login), whatever reply topic it names.
        answer = await self.service.handle(f"mqtt:{asker}", payload, "mqtt")
        if answer is None:
            return
        if v311:
            out = (
                b'{"correlation":'
                + json.dumps(correlation).encode()
                + b',"response":'
                + answer
                + b"}"
            )
            self.conn.client.publish(reply_to, out, qos=qos)
        else:
            publish_json_reply(self.conn.client, reply_to, answer, corr, qos)


# -- CoAP --------------------------------------------------------------------------------------


class CoapForwarder(CoapServer):
    """`POST coap://<bind>/rpc` (aiocoap server)."""

    name = "forward-coap"
    listening_event = "coap_rpc_listening"

    def __init__(
        self,
        forwarder: Forwarder,
        host: str,
        port: int,
        *,
        logger: logging.Logger | None = None,
    ) -> None:
        super().__init__(host, port, logger or logging.getLogger("agent.chainclient.forward.coap"))
        self.fwd = forwarder

    def site(self) -> Any:
        import aiocoap
        import aiocoap.resource as resource

        from agent.coapsite import DirectSite

        fwd = self.fwd

        class RpcResource(resource.Resource):  # type: ignore[misc]
            async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
                remote = request.remote
                sockaddr = getattr(remote, "sockaddr", None)
                client = f"coap:{sockaddr[0] if sockaddr else remote.hostinfo}"
                answer = await fwd.handle(client, bytes(request.payload), "coap")
                if answer is None:
                    return aiocoap.Message(code=aiocoap.CHANGED)
                return aiocoap.Message(
                    code=aiocoap.CONTENT,
                    payload=answer,
                    content_format=aiocoap.numbers.ContentFormat.JSON,
                )

        site = DirectSite()
        site.add_direct("rpc", RpcResource())
        return site
