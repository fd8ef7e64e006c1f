"""A CoAP service (forwarding's /rpc, the oracle's /oracle) as a component; aiocoap is imported
only when one runs."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from agent.component import Health
from agent.logs import event


class CoapServer:
    """A CoAP service (forwarding's /rpc, the oracle's /oracle) as a component: a server
    context of its own on (host, port) until stopped. Subclasses give `name`, `site()` and the
    name of the event logged when it listens."""

    name = "coap-server"
    listening_event = "coap_listening"

    def __init__(self, host: str, port: int, log: logging.Logger) -> None:
        self.host, self.port = host, port
        self.log = log
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._ctx: Any = None

    def site(self) -> Any:
        """The aiocoap Site to serve (agent.coapsite.DirectSite for busy routes)."""
        raise NotImplementedError

    async def run(self) -> None:
        from agent.coapsite import ServerContext  # aiocoap only when a CoAP service runs

        self._stop.clear()
        # UDP only: aiocoap's default server transports add CoAP over TCP on the same port and
        # CoAP over WebSocket on port + 3000, listeners nobody configured.
        ctx = await ServerContext.create_server_context(
            self.site(), bind=(self.host, self.port), loggername=self.log.name, transports=["udp6"]
        )
        self._ctx = ctx
        event(self.log, self.listening_event, bind=f"{self.host}:{self.port}")
        self.ready.set()
        try:
            await self._stop.wait()
        finally:
            self._ctx = None
            await ctx.shutdown()

    async def stop(self, grace: float = 0.5) -> None:
        self._stop.set()

    def health(self) -> Health:
        return Health(
            "up" if self._ctx is not None else "down", {"bind": f"{self.host}:{self.port}"}
        )
