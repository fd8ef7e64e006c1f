"""The oracle's transports: thin shells around `OracleService` (agent/oracle/service.py), an
MQTT 5 request/response service and an observable CoAP server.
"""

from __future__ import annotations

import logging
from typing import Any

from agent.coapserver import CoapServer
from agent.oracle.query import OracleQuery, QueryError
from agent.oracle.service import OracleService
from agent.responder import ServiceResponder, publish_json_reply

# -- MQTT ----------------------------------------------------------------------------------------


class MqttOracle(ServiceResponder[OracleService]):
    """Serves `<prefix>/<gateway>/oracle/req/+` over MQTT 5 (a connection of its own)."""

    name = "oracle-mqtt"
    link = "oracle"
    logger_name = "agent.oracle.mqtt"

    async def serve(
        self, asker: str, payload: bytes, reply_to: str | None, corr: bytes | None, qos: int = 1
    ) -> None:
        # Answers go at QoS 1 whatever the request's QoS (`qos` is not used).
        if reply_to is None:
            self.service.refused(
                QueryError("malformed", "no MQTT 5 Response Topic: nowhere to answer"), "mqtt"
            )
            return
        refusal = self.reply_refusal(asker, reply_to, corr)
        if refusal is not None:
            self.service.refused(QueryError("malformed", refusal[1]), "mqtt")
            return
        # The limit is the asker's (its request topic, which the broker's ACL binds to its
        # login), whatever reply topic it names.
        answer = await self.service.handle_json(payload, "mqtt", client=f"mqtt:{asker}")
        publish_json_reply(self.conn.client, reply_to, answer, corr)


# -- CoAP ----------------------------------------------------------------------------------------


class CoapOracle(CoapServer):
    """`GET coap://<bind>/oracle/{device}/{sensor}`, observable: an aiocoap server of its own
    (on its own port: the config refuses one shared with the device source or forwarding)."""

    name = "oracle-coap"
    listening_event = "coap_oracle_listening"

    def __init__(
        self, service: OracleService, host: str, port: int, *, logger: logging.Logger | None = None
    ) -> None:
        super().__init__(host, port, logger or logging.getLogger("agent.oracle.coap"))
        self.service = service

    def site(self) -> Any:
        import aiocoap
        import aiocoap.resource as resource

        from agent.coapsite import DirectSite

        service = self.service
        codes = {
            400: aiocoap.BAD_REQUEST,
            404: aiocoap.NOT_FOUND,
            503: aiocoap.SERVICE_UNAVAILABLE,
        }

        class OracleResource(resource.ObservableResource, resource.PathCapable):  # type: ignore[misc]
            """Every /oracle/{device}/{sensor} path; observations are kept per path."""

            async def add_observation(self, request: aiocoap.Message, serverobs: Any) -> None:
                path = tuple(request.opt.uri_path)
                if len(path) != 2 or request.opt.uri_query:
                    # Only the latest of a sensor is a stream; the rest answer once (accepted
                    # and deregistered at once: aiocoap then sends one final answer).
                    serverobs.accept(lambda: None)
                    serverobs.deregister()
                    return
                # A refused query (unknown device...) ends the observation with its error,
                # and aiocoap calls the cancel then, so no watcher is left behind.
                cancel = service.watch(path[0], path[1], lambda: serverobs.trigger())
                serverobs.accept(cancel)

            async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
                try:
                    q = OracleQuery.from_coap(
                        tuple(request.opt.uri_path), tuple(request.opt.uri_query)
                    )
                except QueryError as exc:
                    service.refused(exc, "coap")
                    return _error(exc)
                try:
                    body = await service.answer(q, "coap")
                except QueryError as exc:  # counted and logged by answer()
                    return _error(exc)
                return aiocoap.Message(
                    code=aiocoap.CONTENT,
                    payload=body,
                    content_format=aiocoap.numbers.ContentFormat.JSON,
                )

        def _error(exc: QueryError) -> aiocoap.Message:
            return aiocoap.Message(
                code=codes.get(exc.status, aiocoap.INTERNAL_SERVER_ERROR),
                payload=exc.body(),
                content_format=aiocoap.numbers.ContentFormat.JSON,
            )

        site = DirectSite()
        site.add_direct("oracle", OracleResource())
        return site
