"""dApp commands over CoAP: `POST coap://<downlink.coap.bind>/cmd` with the same JSON request as
over MQTT, answered (after the device answered or the TTL ended) with the same outcome and its
signed receipt. The requester is the CoAP client's identity as forwarding names it
(`coap:<address>`), and [[downlink.policy]] decides what it may command.

Hostile input is cheap to refuse: the body is bounded before it is assembled, each requester has
a token bucket (`downlink.rate` / `burst`, as forwarding's and the oracle's per client), and the
service's `max_inflight` bounds what waits.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from agent.coapserver import CoapServer
from agent.downlink.requests import MAX_REQUEST_BYTES
from agent.ratelimit import KeyedBuckets

if TYPE_CHECKING:
    import aiocoap

    from agent.downlink.service import Downlink

MAX_REQUESTERS = 4096
CF_JSON = 50


def coap_requester(remote: Any) -> str:
    """`coap:<IP address>` of a request's sender, as forwarding names its CoAP clients (an
    IPv4 client as a.b.c.d, not in its IPv6-mapped form)."""
    while getattr(remote, "underlying_address", None) is not None:
        remote = remote.underlying_address
    sockaddr = getattr(remote, "sockaddr", None)
    host = sockaddr[0] if isinstance(sockaddr, tuple) and sockaddr else remote.hostinfo
    return f"coap:{str(host).removeprefix('::ffff:')}"


# The outcome's error -> CoAP response code (dotted); an answered command is 2.05.
ERROR_CODES = {
    "not_allowed": "4.03",
    "unknown_device": "4.04",
    "revoked": "4.04",
    "unknown_command": "4.04",
    "busy": "5.03",
    "rate_limited": "4.29",
    "device_offline": "5.04",
    "bad_answer_mac": "5.04",
}


def code_of(outcome: dict[str, Any]) -> str:
    """2.05 when the device answered (whatever it answered: the receipt says it), else the
    refusal's code; 4.00 for the request's own faults."""
    if "receipt" in outcome or outcome.get("ok"):
        return "2.05"
    return ERROR_CODES.get(str(outcome.get("error")), "4.00")


class CoapCommands(CoapServer):
    """The [downlink.coap] server: /cmd."""

    name = "downlink-coap"
    listening_event = "coap_cmd_listening"

    def __init__(
        self,
        downlink: Downlink,
        host: str,
        port: int,
        *,
        rate: float,
        burst: float,
        logger: logging.Logger | None = None,
    ) -> None:
        super().__init__(host, port, logger or logging.getLogger("agent.downlink.coap"))
        self.downlink = downlink
        self.buckets = KeyedBuckets(rate, burst, max_keys=MAX_REQUESTERS)

    def site(self) -> Any:
        import aiocoap.resource
        from aiocoap.blockwise import Block1Spool

        from agent.coapsite import DirectSite

        server = self

        class CommandResource(aiocoap.resource.Resource):  # type: ignore[misc]
            def __init__(self) -> None:
                super().__init__()
                self.spool = Block1Spool()

            async def needs_blockwise_assembly(self, request: aiocoap.Message) -> bool:
                return False  # assembled here, bounded (aiocoap's own assembly is unbounded)

            async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
                return await server.handle(request, self.spool)

        site = DirectSite()
        site.add_direct("cmd", CommandResource())
        return site

    async def handle(self, request: aiocoap.Message, spool: Any) -> aiocoap.Message:
        from aiocoap.numbers.codes import Code

        # Not truncated: a policy can name only ids of up to 32 characters, so a longer one
        # (a long IPv6 address) is allowed nothing, never mistaken for another address.
        requester = coap_requester(request.remote)
        dl = self.downlink
        wait = self.buckets.take(requester)
        if wait:
            dl.count_refusal(requester, "-", "-", "rate_limited", "over the CoAP request budget")
            return self._reply(
                Code.TOO_MANY_REQUESTS,
                {"ok": False, "error": "rate_limited", "detail": f"retry in {wait:.1f} s"},
                max_age=max(1, int(wait + 0.999)),
            )
        b1, size1 = request.opt.block1, request.opt.size1
        if (
            len(request.payload) > MAX_REQUEST_BYTES
            or (size1 is not None and size1 > MAX_REQUEST_BYTES)
            or (b1 is not None and b1.start + len(request.payload) > MAX_REQUEST_BYTES)
        ):
            detail = f"a command request is at most {MAX_REQUEST_BYTES} bytes"
            dl.count_refusal(requester, "-", "-", "oversize", detail)
            return self._reply(
                Code.REQUEST_ENTITY_TOO_LARGE,
                {"ok": False, "error": "oversize", "detail": detail},
                size1=MAX_REQUEST_BYTES,
            )
        if b1 is not None:
            request = spool.feed_and_take(request)  # 2.31 Continue until the last block
        outcome = await dl.answer_request(requester, bytes(request.payload))
        return self._reply(_code(code_of(outcome)), outcome)

    def _reply(self, code: Any, outcome: dict[str, Any], **options: Any) -> aiocoap.Message:
        import aiocoap

        payload = json.dumps(outcome, separators=(",", ":")).encode()
        return aiocoap.Message(code=code, payload=payload, content_format=CF_JSON, **options)


def _code(dotted: str) -> Any:
    from aiocoap.numbers.codes import Code

    cls, _, detail = dotted.partition(".")
    return Code((int(cls) << 5) | int(detail))


__all__ = ["CoapCommands", "coap_requester", "code_of"]
