"""The committee's proof-of-service duty (agent/serviceduty.py) against real agents, a real
upstream Mosquitto and anvil: on the epoch's posted committee it probes every registered
masternode once and submits the verdicts (a node whose oracle is off fails); off the
committee, or for an epoch already judged, it sends nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from agent.attest.keys import GatewayKey
from agent.chainclient.anvil import LocalAnvil
from agent.chainclient.rpc import RpcClient
from agent.chainclient.sender import TxSender
from agent.cli.status import _masternode_lines, _Paint
from agent.config import BrokerEndpoint
from agent.devices.codecs.frame import encode_frame
from agent.localbroker import LocalMosquitto
from agent.serviceduty import Prober, ServiceDuty
from agent.serviceprobe import ServiceProber
from tests.integration.conftest import Device, agent_config_dict, async_wait_until
from tests.integration.masternode.conftest import Layer
from tests.integration.oracle.conftest import COLLATERAL


def node_config(
    i: int, local: LocalMosquitto, upstream: LocalMosquitto, node: LocalAnvil, oracle: bool
) -> dict[str, Any]:
    return agent_config_dict(
        local,
        upstream,
        sources={
            "mqtt": {"url": local.url, "allowed_devices": ["dev-1"], "topics": [f"site{i}/+/up"]}
        },
        bridge={"enabled": False},
        chain={"enabled": True, "rpc_url": node.url, "poll_interval": 0.2},
        oracle={"enabled": oracle, "mqtt": {"url": upstream.url}},
        forward={"enabled": True, "mqtt": {"url": upstream.url}},
    )


async def test_a_committee_member_probes_every_masternode_once_per_epoch(
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    device: Device,
    anvil: LocalAnvil,
    layer: Layer,
    start_agent: Callable[..., Any],
    tmp_path: Path,
) -> None:
    c = layer.chain
    keys = [GatewayKey.generate() for _ in range(2)]  # serving, and one with its oracle off
    agents = []
    for i, key in enumerate(keys):
        c.fund(key)
        vrf = bytes([2]) + key.public_key_uncompressed[1:33]
        c.transact(key, layer.registry, "register", vrf, value=COLLATERAL)
        cfg = node_config(i, local_broker, upstream_broker, anvil, oracle=i == 0)
        agents.append(await start_agent(cfg, key, name=f"mn{i}"))
    for i in range(2):
        frame = encode_frame(
            int(time.time() * 1000), [("temp", 2100, -2, "Cel")], timestamp=int(time.time())
        )
        await asyncio.to_thread(device.publish, f"site{i}/dev-1/up", frame)
    await async_wait_until(
        lambda: all(a.agent.metrics.get("observations_signed") >= 1 for a in agents),
        30,
        "both agents signing the reading",
    )
    endpoint = BrokerEndpoint(host="127.0.0.1", port=upstream_broker.port, protocol=5)
    async with RpcClient(anvil.url) as rpc:

        def prober() -> AbstractAsyncContextManager[Prober]:
            return ServiceProber(endpoint, rpc, device="dev-1", sensor="temp", timeout_s=2.0)

        member = TxSender(rpc, layer.committee[0], anvil.chain_id, tmp_path / "member.sqlite")
        stranger_key = GatewayKey.generate()
        c.fund(stranger_key)
        stranger = TxSender(rpc, stranger_key, anvil.chain_id, tmp_path / "stranger.sqlite")
        duty = ServiceDuty(rpc, member, layer.registry.address, prober)
        other = ServiceDuty(rpc, stranger, layer.registry.address, prober)
        try:
            async with ServiceProber(endpoint, rpc, device="dev-1", sensor="temp") as p:
                # No committee posted for this epoch: nobody probes.
                assert await duty.serve_once(p) is None and not duty.done
                e = layer.next_epoch()
                assert await other.serve_once(p) is None and not other.done
                assert await duty.serve_once(p) == e
                assert await duty.serve_once(p) is None  # once per epoch
            good, mute = (k.address for k in keys)
            assert c.call(layer.standing, "tally", e, good) == (1, 0, False)
            assert c.call(layer.standing, "tally", e, mute) == (0, 1, False)
            assert duty.last == {good.lower(): True, mute.lower(): False}
            health = duty.health()
            assert health.detail["committee_epoch"] == e and health.detail["failed"] == 1
            (line,) = _masternode_lines({"service-probe": health.as_dict()}, _Paint(False))
            assert f"on the committee of {e}  verdicts for {e}: 2 probed, 1 failed" in line
        finally:
            await member.close()
            await stranger.close()
