"""The CoAP source's resources: /up/{device} (frames in, answered after the pipeline's verdict)
and /ack/{device} (a device's answer to its command), and how a refusal maps to a CoAP code."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import aiocoap
import aiocoap.resource
from aiocoap.blockwise import Block1Spool
from aiocoap.numbers.codes import Code
from aiocoap.util.linkformat import Link, LinkFormat

from agent.model import NAME_RE

if TYPE_CHECKING:
    from agent.devices.coap import CoapSource

# The pipeline's refusal reasons as CoAP response codes. Authentication failures are 4.01;
# `replay` is 4.00, not 4.01: the device's credentials are fine, its counter is not (a device
# that re-sends a frame whose 2.04 it missed learns the frame is already taken, and must not
# conclude that it needs re-pairing).
UNAUTHENTICATED = frozenset(
    {"unknown_device", "missing_mac", "bad_mac", "revoked", "not_active", "wrong_transport"}
)


def code_for_rejection(reason: str) -> Code:
    if reason in UNAUTHENTICATED:
        return Code.UNAUTHORIZED
    if reason == "rate_limited":
        return Code.TOO_MANY_REQUESTS
    if reason == "journal_full":
        return Code.SERVICE_UNAVAILABLE
    return Code.BAD_REQUEST


class Reply(Exception):
    """Internal: leave the request handler with this response."""

    def __init__(self, message: aiocoap.Message) -> None:
        self.message = message


class UpResource(aiocoap.resource.Resource, aiocoap.resource.PathCapable):  # type: ignore[misc]
    """/up/{device}: POST a device frame (JSON, content-format 50, or CBOR, 60)."""

    def __init__(self, source: CoapSource) -> None:
        super().__init__()
        self.source = source
        self._spool = Block1Spool()

    async def needs_blockwise_assembly(self, request: aiocoap.Message) -> bool:
        return False  # assembled here, bounded by max_payload (aiocoap's own is unbounded)

    def get_resources_as_linkheader(self) -> LinkFormat:
        return LinkFormat([Link("", rt="edgence.frame", ct="50 60", title="POST /up/{device}")])

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        try:
            return await self.source.handle_post(request, self._spool)
        except Reply as r:
            return r.message


class CommandHooks(Protocol):
    """The downlink's side of CoAP delivery (agent/downlink/service.py): the command a device
    should get with its next 2.04, and the device's answer POSTed to /ack/<device>."""

    def pending_frame(self, device: str) -> bytes | None: ...

    async def take_answer(self, device: str, payload: bytes) -> str | None: ...


class AckResource(aiocoap.resource.Resource, aiocoap.resource.PathCapable):  # type: ignore[misc]
    """/ack/{device}: POST a device's answer to the command it got (docs/downlink.md)."""

    def __init__(self, source: CoapSource) -> None:
        super().__init__()
        self.source = source

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        path = request.opt.uri_path
        hooks = self.source.commands
        if hooks is None or len(path) != 1 or not NAME_RE.match(path[0]):
            return aiocoap.Message(code=Code.NOT_FOUND, payload=b"bad_path")
        reason = await hooks.take_answer(path[0], bytes(request.payload))
        if reason is None:
            return aiocoap.Message(code=Code.CHANGED)
        code = Code.UNAUTHORIZED if reason == "bad_mac" else Code.BAD_REQUEST
        return aiocoap.Message(code=code, payload=reason.encode())


__all__ = [
    "UNAUTHENTICATED",
    "AckResource",
    "CommandHooks",
    "Reply",
    "UpResource",
    "code_for_rejection",
]
