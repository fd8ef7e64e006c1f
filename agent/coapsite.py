"""aiocoap's server side, minus two per-request costs the agent does not need.

aiocoap's `Site` gives each resource a *deep copy* of the request with the resource's own path
stripped (`Message.copy` through `copy.deepcopy`, plus building the request URI for the copy).
For the agent's small, frequent requests (a device frame POSTed to /up/{device}, a dApp's
POST /rpc) that copy is one of the largest single costs of answering: about a sixth of the agent's
CPU per request in `bench/coap_bench.py` (py-spy profile). Routes added with `add_direct` get the
request itself with the prefix stripped in place; the request is not read with its full path
after dispatch (aiocoap's own Site replaces it on the pipe with the stripped copy the same way).
Every other request, and a request using the Uri-Path-Abbrev option, goes through the normal
Site dispatch.

`ServerContext` is aiocoap's Context, but the task that renders a request is named by a constant:
aiocoap names it with the request's repr, which formats the peer's address through `ipaddress`
for every request (another ~9% of the CPU per request, profiled the same way), for a name that
is only read when debugging. Its log line per answer-by-exception (every Block1 continuation)
goes to debug.
"""

from __future__ import annotations

import logging
from typing import Any

import aiocoap
import aiocoap.resource
from aiocoap.pipe import Pipe, error_to_message, run_driving_pipe


class _RenderLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiocoap logs every error a resource raises to answer (each Block1 "2.31 Continue" of a
    multi-block POST, each refusal a source answers itself) at info: those are answers, counted
    by the agent's own metrics and events, not events of their own. They go to debug."""

    def info(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self.debug(msg, *args, **kwargs)


class ServerContext(aiocoap.Context):  # type: ignore[misc]
    """Create with `ServerContext.create_server_context(site, ...)` as with aiocoap.Context."""

    def render_to_pipe(self, pipe: Pipe) -> None:
        run_driving_pipe(
            error_to_message(pipe, _RenderLog(self.log, {})),
            self.serversite.render_to_pipe(pipe),
            name="coap-render",
        )


class DirectSite(aiocoap.resource.Site):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self._direct: dict[str, tuple[Any, bool]] = {}

    def add_direct(self, name: str, resource: Any) -> None:
        """Serve /{name} (a resource) or /{name}/... (a PathCapable resource) directly; the
        route is listed in /.well-known/core as with `add_resource`."""
        self.add_resource((name,), resource)
        self._direct[name] = (resource, isinstance(resource, aiocoap.resource.PathCapable))

    async def render_to_pipe(self, pipe: Pipe) -> None:
        request = pipe.request
        path = request.opt.uri_path
        if path and request.opt.uri_path_abbrev is None:
            resource, subsite = self._direct.get(path[0], (None, False))
            rest = path[1:]
            # The same rules as Site: /name for a resource, /name/... for a sub-site (whose
            # root, /name/, it sees as the empty path).
            if resource is not None and subsite == bool(rest):
                request.opt.uri_path = () if rest == ("",) else rest
                await resource.render_to_pipe(pipe)
                return
        await super().render_to_pipe(pipe)
