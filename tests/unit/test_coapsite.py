"""DirectSite on a ServerContext answers like aiocoap's Site on aiocoap's Context (same paths
answered, same paths refused, a failing resource gives 5.00, the resource sees its path
stripped), over a real aiocoap server and client on loopback UDP."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import aiocoap
import aiocoap.resource
import pytest
from aiocoap.numbers.codes import Code

from agent.coapsite import DirectSite, ServerContext


class Echo(aiocoap.resource.Resource):  # type: ignore[misc]
    """Answers with the path it was given, and remembers the request object it rendered."""

    def __init__(self, tag: str) -> None:
        super().__init__()
        self.tag = tag
        self.seen: list[aiocoap.Message] = []

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        self.seen.append(request)
        body = f"{self.tag}:{list(request.opt.uri_path)}"
        return aiocoap.Message(code=Code.CHANGED, payload=body.encode())

    render_get = render_post


class Boom(aiocoap.resource.Resource):  # type: ignore[misc]
    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        raise RuntimeError("a resource that fails")


class EchoTree(Echo, aiocoap.resource.PathCapable):  # type: ignore[misc]
    pass


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build(direct: bool) -> tuple[aiocoap.resource.Site, dict[str, Echo]]:
    res: dict[str, Echo] = {"up": EchoTree("up"), "rpc": Echo("rpc"), "other": Echo("other")}
    if direct:
        site = DirectSite()
        site.add_direct("up", res["up"])
        site.add_direct("rpc", res["rpc"])
    else:
        site = aiocoap.resource.Site()
        site.add_resource(("up",), res["up"])
        site.add_resource(("rpc",), res["rpc"])
    site.add_resource(("x", "other"), res["other"])
    site.add_resource(("x", "boom"), Boom())
    site.add_resource(
        (".well-known", "core"), aiocoap.resource.WKCResource(site.get_resources_as_linkheader)
    )
    return site, res


@pytest.fixture
async def client() -> AsyncIterator[aiocoap.Context]:
    ctx = await aiocoap.Context.create_client_context(transports=["udp6"])
    yield ctx
    await ctx.shutdown()


async def answers(client: aiocoap.Context, port: int, paths: list[str]) -> list[str]:
    out = []
    for path in paths:
        msg = aiocoap.Message(code=Code.POST, uri=f"coap://127.0.0.1:{port}{path}")
        r = await client.request(msg).response
        out.append(
            f"{r.code.dotted} {r.payload.decode()}" if r.code.is_successful() else r.code.dotted
        )
    return out


PATHS = [
    "/up/dev-1",
    "/up/a/b",
    "/up/",
    "/up",
    "/rpc",
    "/rpc/",
    "/rpc/x",
    "/x/other",
    "/x/boom",
    "/nope",
    "/",
]


async def test_direct_site_answers_every_path_as_site_does(client: aiocoap.Context) -> None:
    results = {}
    for kind in ("site", "direct"):
        site, _ = build(direct=kind == "direct")
        port = free_udp_port()
        context = ServerContext if kind == "direct" else aiocoap.Context
        server = await context.create_server_context(
            site, bind=("127.0.0.1", port), transports=["udp6"]
        )
        try:
            results[kind] = await answers(client, port, PATHS)
        finally:
            await server.shutdown()
    assert results["direct"] == results["site"]
    # and what Site does is what a resource expects: the route's own path stripped
    assert results["direct"][:3] == [
        "2.04 up:['dev-1']",
        "2.04 up:['a', 'b']",
        "2.04 up:[]",
    ]
    assert results["direct"][3] == "4.04"
    assert results["direct"][4] == "2.04 rpc:[]"
    assert results["direct"][8] == "5.00"


async def test_direct_routes_skip_the_copy_and_are_listed(client: aiocoap.Context) -> None:
    site, res = build(direct=True)
    port = free_udp_port()
    server = await ServerContext.create_server_context(
        site, bind=("127.0.0.1", port), transports=["udp6"]
    )
    try:
        await answers(client, port, ["/up/dev-1", "/x/other"])
        wkc = await client.request(
            aiocoap.Message(code=Code.GET, uri=f"coap://127.0.0.1:{port}/.well-known/core")
        ).response
    finally:
        await server.shutdown()
    # A direct route renders the request object itself; a normal route a stripped copy.
    assert not hasattr(res["up"].seen[0], "_original_request_uri")
    assert hasattr(res["other"].seen[0], "_original_request_uri")
    links = wkc.payload.decode()
    assert "</rpc>" in links and "</x/other>" in links
