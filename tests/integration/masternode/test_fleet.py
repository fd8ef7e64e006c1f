"""Seven agents as masternodes on one anvil, with the whole masternode layer: each epoch a
committee of three (played by the test, with agent.serviceprobe's real prober and verdict
submission) probes every masternode over the upstream broker. One agent's oracle endpoint is
stopped while its process runs on and keeps sending heartbeats: it is out of service after K
epochs, earns nothing meanwhile, and is back once it serves again. The others' rewards are
equal. A dApp approved by the agents' votes becomes reachable through every agent's
forwarding; a contract not approved is refused by all of them. The per-epoch on-chain table is
printed (run with -s to see it)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.attest.keys import GatewayKey
from agent.chainclient.anvil import LocalAnvil
from agent.chainclient.contracts import load_artifact
from agent.chainclient.rpc import RpcClient
from agent.chainclient.sender import TxSender
from agent.chainclient.tx import Eip1559Tx, encode_call, event_topic
from agent.config import BrokerEndpoint
from agent.devices.codecs.frame import encode_frame
from agent.localbroker import LocalMosquitto
from agent.masternode import ContractClient
from agent.oracle.servers import MqttOracle
from agent.serviceprobe import ServiceProber, submit_verdicts
from tests.integration.chainclient.test_forward import Dapp, rpc
from tests.integration.conftest import Device, agent_config_dict, async_wait_until
from tests.integration.masternode.conftest import FAIL_EPOCHS, REWARD, Layer, deploy_layer
from tests.integration.oracle.conftest import COLLATERAL, Chain

AGENTS = 7
EPOCH_BLOCKS = 40  # room for 7 check-ins, 3 verdicts and the heartbeats within one epoch
BAD = AGENTS - 1  # the agent whose oracle endpoint is stopped


def fleet_config(
    i: int, local: LocalMosquitto, upstream: LocalMosquitto, node: LocalAnvil, layer: Layer
) -> dict[str, Any]:
    return agent_config_dict(
        local,
        upstream,
        sources={
            "mqtt": {"url": local.url, "allowed_devices": ["dev-1"], "topics": [f"site{i}/+/up"]}
        },
        bridge={"enabled": False},
        chain={"enabled": True, "rpc_url": node.url, "ws_url": node.ws_url, "poll_interval": 0.2},
        oracle={"enabled": True, "mqtt": {"url": upstream.url}},
        forward={"enabled": True, "mqtt": {"url": upstream.url}},
        masternode={
            "registry": layer.registry.address,
            "rewards": layer.rewards.address,
            "dapps": layer.dapps.address,
            "heartbeat_every_blocks": 15,
            "check_interval": 0.2,
        },
    )


async def test_fleet_of_seven_rewards_service_and_dapp_approval(
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    device: Device,
    anvil: LocalAnvil,
    contracts_built: Path,
    start_agent: Callable[..., Any],
    tmp_path: Path,
) -> None:
    c = Chain(anvil)
    layer = deploy_layer(c, committee_size=3, epoch_blocks=EPOCH_BLOCKS)
    c.transact(c.dev, layer.rewards, "fund", value=100 * REWARD)
    keys = [GatewayKey.generate() for _ in range(AGENTS)]
    agents = []
    for i, key in enumerate(keys):
        c.fund(key)
        vrf = bytes([2]) + key.public_key_uncompressed[1:33]
        c.transact(key, layer.registry, "register", vrf, value=COLLATERAL)
        agents.append(
            await start_agent(
                fleet_config(i, local_broker, upstream_broker, anvil, layer), key, name=f"mn{i}"
            )
        )
    addrs = [k.address.lower() for k in keys]

    def publish_readings() -> None:
        for i in range(AGENTS):
            frame = encode_frame(
                int(time.time() * 1000), [("temp", 2100 + i, -2, "Cel")], timestamp=int(time.time())
            )
            device.publish(f"site{i}/dev-1/up", frame)

    await asyncio.to_thread(publish_readings)
    await async_wait_until(
        lambda: all(a.agent.metrics.get("observations_signed") >= 1 for a in agents),
        30,
        "every agent signing the sensor's reading",
    )

    # The committee: three members, each with its own prober and its own transaction sender.
    async with RpcClient(anvil.url) as chain_rpc:
        senders = [
            TxSender(chain_rpc, m, anvil.chain_id, tmp_path / f"committee{j}.sqlite")
            for j, m in enumerate(layer.committee)
        ]
        endpoint = BrokerEndpoint(host="127.0.0.1", port=upstream_broker.port, protocol=5)
        probers = [
            ServiceProber(endpoint, chain_rpc, device="dev-1", sensor="temp", timeout_s=2.0)
            for _ in layer.committee
        ]
        for p in probers:
            await p.__aenter__()
        table: list[str] = []
        stopped: MqttOracle | None = None
        restarted: asyncio.Task[None] | None = None
        try:

            async def run_epoch(expect_checked_in: list[int]) -> dict[str, bool]:
                epoch = layer.next_epoch()

                def checked() -> bool:
                    return all(
                        c.call(layer.rewards, "checkedIn", epoch, keys[i].address)[0]
                        for i in expect_checked_in
                    )

                await async_wait_until(checked, 30, f"check-ins of epoch {epoch}")
                verdicts: dict[str, bool] = {}
                for prober, sender in zip(probers, senders, strict=True):
                    results = [await prober.probe(a) for a in addrs]
                    verdicts = {r.gateway: r.passed for r in results}
                    await submit_verdicts(chain_rpc, sender, layer.standing.address, epoch, results)
                (count,) = c.call(layer.rewards, "inServiceCount", epoch)
                cells = []
                for a in addrs:
                    out = c.call(layer.standing, "standing", a)[0]
                    chk = c.call(layer.rewards, "checkedIn", epoch, a)[0]
                    cells.append(
                        ("C" if chk else "-")
                        + ("P" if verdicts[a] else "F")
                        + ("x" if out else " ")
                    )
                table.append(f"{epoch:>5}  {count:>10}  " + "  ".join(cells))
                return verdicts

            everyone = list(range(AGENTS))
            healthy = list(range(AGENTS - 1))
            v = await run_epoch(everyone)
            assert all(v.values())
            # The bad agent's oracle endpoint stops; the process runs on.
            bad = agents[BAD].agent
            stopped = bad.oracle_mqtt
            assert stopped is not None
            await stopped.stop()
            for k in range(FAIL_EPOCHS):
                v = await run_epoch(everyone if k == 0 else healthy)
                assert not v[addrs[BAD]] and all(v[a] for a in addrs[:BAD])
            assert c.call(layer.standing, "inService", addrs[BAD]) == (False,)
            assert c.call(layer.registry, "isActive", addrs[BAD]) == (False,)
            # Out of service: no check-in for this epoch; it still sends heartbeats.
            hb_before = c.call(layer.registry, "info", addrs[BAD])[5]
            v = await run_epoch(healthy)
            out_epoch = layer.epoch()
            assert not c.call(layer.rewards, "checkedIn", out_epoch, addrs[BAD])[0]
            assert c.call(layer.registry, "info", addrs[BAD])[5] > hb_before
            # It serves again (a new oracle endpoint on the same service): restored.
            again = MqttOracle(
                stopped.service,
                stopped.conn.endpoint,
                request_topic=stopped.request_topic,
                reply_filters=stopped.reply_filters,
                client_id=f"oracle-again-{BAD}",
            )
            restarted = asyncio.create_task(again.run())
            await asyncio.wait_for(again.ready.wait(), 10)
            v = await run_epoch(healthy)
            assert all(v.values())
            assert c.call(layer.standing, "inService", addrs[BAD]) == (True,)
            v = await run_epoch(everyone)
            last = layer.next_epoch()
            print("\nepoch  in service  per masternode: C checked in, P/F probe verdict, x out")
            print("\n".join(table))

            # Rewards: claimed by each agent; equal among those always in service; the bad
            # one got exactly the epochs it checked in for.
            counts = {e: c.call(layer.rewards, "inServiceCount", e)[0] for e in range(last)}
            first_table = min(int(row.split()[0]) for row in table)
            claimed, in_table = [], []
            for i, a in enumerate(agents):
                rewards = a.agent.rewards
                assert rewards is not None
                st = await rewards.client.status()
                expected = sum(
                    REWARD // n
                    for e, n in counts.items()
                    if n and c.call(layer.rewards, "checkedIn", e, addrs[i])[0]
                )
                assert st.claimable == expected
                await rewards.client.claim()
                claimed.append(expected)
                in_table.append(
                    sum(
                        REWARD // n
                        for e, n in counts.items()
                        if e >= first_table and c.call(layer.rewards, "checkedIn", e, addrs[i])[0]
                    )
                )
            assert len(set(in_table[:BAD])) == 1  # the epochs the agents started in may differ
            assert in_table[BAD] < in_table[0]
            print("claimed (wei): " + ", ".join(f"{x}" for x in claimed))

            # dApp approval: proposed, approved by four agents' votes (their own keys and
            # senders), reachable through every agent; another contract refused by all.
            target = c.deploy("Counter")
            other = c.deploy("Counter")
            c.transact(c.dev, layer.dapps, "propose", "meter", [target.address])
            for a in agents[:4]:
                assert a.agent.rpc is not None and a.agent.tx_sender is not None
                client = ContractClient(
                    a.agent.rpc,
                    a.agent.tx_sender,
                    layer.dapps.address,
                    load_artifact("DappRegistry"),
                )
                await client.transact("vote", 0, True)
            approvals = [a.agent.dapp_approvals for a in agents]
            await async_wait_until(
                lambda: all(
                    ap is not None and target.address.lower() in ap.allowed for ap in approvals
                ),
                30,
                "every agent following the approval",
            )
            user = GatewayKey.generate()
            c.fund(user)
            inc = encode_call(target.art.function("increment"))
            for i, key in enumerate(keys):
                d = Dapp(upstream_broker.port, v5=True, gateway=key.address)
                try:
                    for to, ok in ((other.address, False), (target.address, True)):
                        raw = Eip1559Tx(
                            anvil.chain_id, i, 10**9, 50 * 10**9, 200_000, to, 0, inc
                        ).sign(user)
                        answer = await d.ask(rpc("eth_sendRawTransaction", [raw.raw_hex]))
                        if ok:
                            assert answer.get("result") == raw.hash_hex, answer
                        else:
                            assert answer["error"]["data"]["reason"] == "dapp_not_approved"

                    def mined(n: int = i + 1) -> bool:
                        return bool(c.call(target, "number")[0] == n)

                    await async_wait_until(mined, 30, "the call mined")
                finally:
                    d.close()
            assert c.call(other, "number") == (0,)
            approved = event_topic(layer.dapps.art.event("Approved"))
            logs = anvil.rpc(
                "eth_getLogs",
                [{"address": layer.dapps.address, "topics": [approved], "fromBlock": "0x0"}],
            )
            assert isinstance(logs, list) and len(logs) == 1
        finally:
            for p in probers:
                await p.__aexit__(None, None, None)
            for s in senders:
                await s.close()
            if restarted is not None:
                restarted.cancel()
                await asyncio.gather(restarted, return_exceptions=True)
