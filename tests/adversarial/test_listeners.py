"""Only the listeners the config asks for: the forwarding and oracle CoAP servers answer on UDP
at their configured address and nowhere else (aiocoap's defaults would add CoAP over TCP on the
same port and CoAP over WebSocket on port + 3000, where any web page's script could reach
them)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path

import aiocoap
import pytest

from agent.chainclient.forward import CoapForwarder, Forwarder, ForwardPolicy
from agent.chainclient.rpc import RpcClient
from agent.coapserver import CoapServer
from agent.journal import Journal
from agent.metrics import Metrics
from agent.oracle import CoapOracle, OracleService


def free_port() -> int:
    """A port free for both UDP and TCP (and TCP at port + 3000) on loopback."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = int(u.getsockname()[1])
        if port + 3000 < 65536:
            return port
    raise RuntimeError("no port")


def tcp_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def forwarder(port: int, tmp: Path) -> CoapServer:
    fwd = Forwarder(RpcClient("http://127.0.0.1:9"), ForwardPolicy(), Metrics())
    return CoapForwarder(fwd, "127.0.0.1", port)


def oracle(port: int, tmp: Path) -> CoapServer:
    journal = Journal(tmp / "journal.sqlite", sinks=["bridge"])
    service = OracleService(
        journal,
        contract="0x" + "00" * 20,
        known_device=lambda d: False,
        metrics=Metrics(),
    )
    return CoapOracle(service, "127.0.0.1", port)


@pytest.mark.parametrize("make", [forwarder, oracle], ids=["forward", "oracle"])
async def test_coap_services_listen_on_udp_only(
    make: Callable[[int, Path], CoapServer], tmp_path: Path
) -> None:
    port = free_port()
    server = make(port, tmp_path)
    task = asyncio.create_task(server.run())
    try:
        await asyncio.wait_for(server.ready.wait(), 10)
        ctx = await aiocoap.Context.create_client_context()
        try:
            req = aiocoap.Message(code=aiocoap.GET, uri=f"coap://127.0.0.1:{port}/.well-known/core")
            answer = await asyncio.wait_for(ctx.request(req).response, 10)
            assert answer.code.is_response()  # it answers over UDP, as configured
        finally:
            await ctx.shutdown()
        assert not tcp_open(port), "CoAP over TCP is listening on the same port"
        assert not tcp_open(port + 3000), "CoAP over WebSocket is listening on port + 3000"
    finally:
        await server.stop(0.5)
        await asyncio.wait_for(task, 10)
