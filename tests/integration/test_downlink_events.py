"""A contract event becomes a command, on a real anvil and Mosquitto: a Counter's `Incremented`
event reaches the device (the firmware's own command handler) once, also for the events emitted
while the agent was stopped (catch-up from the stored cursor), and none twice after the
restart."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent.attest.keys import GatewayKey
from agent.chainclient.anvil import LocalAnvil
from agent.chainclient.rpc import RpcClient
from agent.chainclient.subscribe import ChainWatcher
from agent.chainclient.tx import encode_call
from agent.config import BrokerEndpoint, DownlinkConfig
from agent.config.downlink import EventRule
from agent.devices.registry import DeviceRegistry
from agent.downlink.events import ContractCommands
from agent.downlink.service import Downlink
from agent.downlink.store import CommandStore
from agent.localbroker import LocalMosquitto
from agent.metrics import Metrics
from agent.model import Eip712Domain, Transport
from tests.integration.chainclient.conftest import Deployed, deploy_counter, dev_tx, receipt_of
from tests.integration.conftest import wait_until
from tests.support.commandpeers import KEY, MqttBoard


@pytest.fixture
def counter(anvil: LocalAnvil, contracts_built: Path) -> Deployed:
    return deploy_counter(anvil, contracts_built)


DEVICE = "gate-1"


class Agent:
    """The parts of an agent this needs, built fresh on every start (as a restart does)."""

    def __init__(self, tmp: Path, broker: LocalMosquitto, node: LocalAnvil, contract: str) -> None:
        registry = DeviceRegistry(tmp / "devices")
        if registry.get(DEVICE) is None:
            registry.enroll_active([(DEVICE, Transport.MQTT, KEY)])
        cfg = DownlinkConfig(
            enabled=True,
            mqtt=BrokerEndpoint("127.0.0.1", broker.port, protocol=5),
            events=(
                EventRule(
                    contract=contract.lower(),
                    event="Incremented(address indexed by, uint256 number)",
                    action="open",
                    device=DEVICE,
                    args=(("gate", "north"),),
                    args_from=(("number", "number"), ("by", "by")),
                    ttl_s=60,
                ),
            ),
        )
        self.rpc = RpcClient(node.url)
        self.watcher = ChainWatcher(self.rpc, node.ws_url, poll_interval_s=0.2)
        key = GatewayKey.from_bytes(b"\x07" * 32)
        self.downlink = Downlink(
            cfg,
            store=CommandStore(tmp / "downlink.sqlite"),
            devices=registry.snapshot(),
            key=key,
            domain=Eip712Domain("Edgence", "1", node.chain_id, "0x" + "00" * 20),
            metrics=Metrics(),
            client_id="edgence-test-downlink",
        )
        self.events = ContractCommands(
            self.downlink, cfg.events, rpc=self.rpc, watcher=self.watcher, metrics=Metrics()
        )
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for part in (self.watcher, self.downlink, self.events):
            self.tasks.append(asyncio.create_task(part.run()))
        await asyncio.wait_for(self.events.ready.wait(), 30)
        await asyncio.wait_for(self.downlink.ready.wait(), 30)

    async def stop(self) -> None:
        await self.events.stop(0.3)
        await self.downlink.stop(0.3)
        await self.watcher.stop(0.3)
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.rpc.close()


def increment(node: LocalAnvil, c: Deployed) -> None:
    tx = dev_tx(node, c.address, encode_call(c.artifact.function("increment")), gas=100_000)
    node.rpc("eth_sendRawTransaction", [tx.raw_hex])
    receipt_of(node, tx.hash_hex)


async def test_contract_events_reach_the_device_once_across_an_agent_restart(
    tmp_path: Path, anvil: LocalAnvil, counter: Deployed, local_broker: LocalMosquitto
) -> None:
    (tmp_path / "flash").mkdir()
    board = MqttBoard(local_broker.port, DEVICE, tmp_path / "flash")
    try:
        agent = Agent(tmp_path, local_broker, anvil, counter.address)
        await agent.start()
        await asyncio.to_thread(increment, anvil, counter)
        await asyncio.to_thread(wait_until, lambda: len(board.ran) == 1, 20, "the first event")
        await agent.stop()
        # Two events while the agent is down.
        await asyncio.to_thread(increment, anvil, counter)
        await asyncio.to_thread(increment, anvil, counter)
        await asyncio.sleep(0.5)
        assert len(board.ran) == 1
        again = Agent(tmp_path, local_broker, anvil, counter.address)
        await again.start()
        await asyncio.to_thread(wait_until, lambda: len(board.ran) == 3, 20, "the missed events")
        await asyncio.to_thread(increment, anvil, counter)
        await asyncio.to_thread(wait_until, lambda: len(board.ran) == 4, 20, "a live event")
        await asyncio.sleep(1.0)  # time for any duplicate to show up
        await again.stop()
    finally:
        board.close()
    dev = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266"  # anvil's development account
    assert board.ran == [{"gate": "north", "number": n, "by": dev} for n in (1, 2, 3, 4)]
    assert board.dl.last == 4  # four commands, downlink counters 1..4, none refused or repeated
    assert board.dl.refused == 0
