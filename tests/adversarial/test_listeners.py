"""Only the listeners the config asks for: the forwarding and oracle CoAP servers answer on UDP
at their configured address and nowhere else (aiocoap's defaults would add CoAP over TCP on the
same port and CoAP over WebSocket on port + 3000, where any web page's script could reach
them); the device CoAP source binds loopback unless told otherwise; and `doctor` names every
socket the running agent listens on (compared with what the kernel says the process holds)."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiocoap
import pytest

from agent.chainclient.forward import Forwarder, ForwardPolicy
from agent.chainclient.forwardservers import CoapForwarder
from agent.chainclient.rpc import RpcClient
from agent.coapserver import CoapServer
from agent.journal import Journal
from agent.localbroker import LocalMosquitto
from agent.localbroker import free_port as tcp_free_port
from agent.metrics import Metrics
from agent.oracle.servers import CoapOracle
from agent.oracle.service import OracleService
from tests.integration.conftest import agent_config_dict, write_agent_dir


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


def bound_sockets(pid: int) -> set[tuple[str, str, int]]:
    """(proto, host, port) of every TCP socket in LISTEN and every bound UDP socket that the
    process holds, read from /proc (what `ss -lnp` shows)."""
    import ipaddress
    import os

    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for proto, files in (("tcp", ("tcp", "tcp6")), ("udp", ("udp", "udp6"))):
        for name in files:
            for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
                f = line.split()
                local, remote, state, inode = f[1], f[2], f[3], f[9]
                if inode not in inodes or (proto == "tcp" and state != "0A"):
                    continue
                if proto == "udp" and int(remote.split(":")[1], 16) != 0:
                    continue  # a connected UDP socket (a client), not a server
                addr_hex, port_hex = local.split(":")
                raw = bytes.fromhex(addr_hex)
                # /proc prints each 32-bit word in host (little-endian) order
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                host = ipaddress.ip_address(raw)
                if isinstance(host, ipaddress.IPv6Address) and host.ipv4_mapped:
                    host = host.ipv4_mapped
                found.add((proto, str(host), int(port_hex, 16)))
    return found


def test_doctor_names_every_socket_the_agent_listens_on_and_device_coap_is_loopback(
    tmp_path: Path,
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    agent_process: Any,
) -> None:
    src, orc = free_port(), free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.bind(("0.0.0.0", 0))  # free on every interface, as forward.coap binds it
        fwd = int(u.getsockname()[1])
    met = tcp_free_port()
    cfg = agent_config_dict(
        local_broker,
        upstream_broker,
        metrics={"listen": f"127.0.0.1:{met}"},
        chain={"rpc_url": "http://127.0.0.1:9"},
    )
    cfg["sources"]["coap"] = {"enabled": True, "port": src}  # bind: the default
    cfg["forward"] = {"enabled": True, "coap": {"enabled": True, "bind": f"0.0.0.0:{fwd}"}}
    cfg["oracle"] = {"enabled": True, "coap": {"enabled": True, "bind": f"127.0.0.1:{orc}"}}
    config, _ = write_agent_dir(tmp_path / "gw", cfg)
    agent = agent_process(config)
    try:
        agent.start()
    except AssertionError:
        raise AssertionError(agent.log_text()[-3000:]) from None
    assert agent.proc is not None
    expected = {
        ("tcp", "127.0.0.1", met),
        ("udp", "127.0.0.1", src),  # the device source: loopback unless configured otherwise
        ("udp", "0.0.0.0", fwd),
        ("udp", "127.0.0.1", orc),
    }
    assert bound_sockets(agent.proc.pid) == expected
    out = subprocess.run(
        [sys.executable, "-m", "agent.cli", "doctor", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    ).stdout
    line = next(x for x in out.splitlines() if x[6:].startswith("listen "))
    named = set(re.findall(r"(tcp|udp) ([0-9.]+):([0-9]+) \(", line))
    assert {(p, h, int(n)) for p, h, n in named} == expected, line
    assert f"udp 127.0.0.1:{src} (sources.coap, loopback)" in line
    assert f"udp 0.0.0.0:{fwd} (forward.coap, EVERY interface)" in line
