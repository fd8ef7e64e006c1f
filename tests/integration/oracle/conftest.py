"""The oracle contracts on a real anvil: a MasternodeRegistry, an ObservationOracle and a
ConsumerExample deployed with anvil's funded development key; masternode keys funded with
anvil_setBalance; transactions signed by our own EIP-1559 code, revert data read from the node."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.attest.keys import GatewayKey
from agent.attest.observation import ObservationSigner
from agent.chainclient.anvil import DEV_PRIVATE_KEY, LocalAnvil
from agent.chainclient.contracts import Artifact, load_artifact
from agent.chainclient.tx import (
    Eip1559Tx,
    contract_address,
    decode_result,
    encode_call,
    encode_constructor,
)
from agent.model import AuthMethod, Eip712Domain, Observation, Reading, Transport
from tests.integration.chainclient.conftest import receipt_of

COLLATERAL = 10**18
WINDOW_BLOCKS = 20
QUORUM = 3
MAX_AGE_S = 300
MAX_FUTURE_S = 60
ROUND_WINDOW_S = 600


def raw_rpc(node: LocalAnvil, method: str, params: list[Any]) -> dict[str, Any]:
    """One JSON-RPC call whose whole answer (result or error with its data) is returned."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    req = urllib.request.Request(node.url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        out: dict[str, Any] = json.loads(resp.read())
    return out


@dataclass
class Contract:
    address: str
    art: Artifact


class Chain:
    """Blocking helpers over one anvil for contract tests."""

    def __init__(self, node: LocalAnvil) -> None:
        self.node = node
        self.dev = GatewayKey.from_bytes(DEV_PRIVATE_KEY)

    def fund(self, key: GatewayKey, wei: int = 100 * 10**18) -> None:
        self.node.rpc("anvil_setBalance", [key.address, hex(wei)])

    def send(
        self, key: GatewayKey, to: str | None, data: bytes, value: int = 0, gas: int = 8_000_000
    ) -> dict[str, Any]:
        nonce = int(str(self.node.rpc("eth_getTransactionCount", [key.address, "pending"])), 16)
        tx = Eip1559Tx(self.node.chain_id, nonce, 10**9, 50 * 10**9, gas, to, value, data)
        signed = tx.sign(key)
        self.node.rpc("eth_sendRawTransaction", [signed.raw_hex])
        return receipt_of(self.node, signed.hash_hex)

    def deploy(self, name: str, *args: Any) -> Contract:
        art = load_artifact(name)
        nonce = int(
            str(self.node.rpc("eth_getTransactionCount", [self.dev.address, "pending"])), 16
        )
        rc = self.send(self.dev, None, art.bytecode + encode_constructor(art.abi, *args))
        assert rc["status"] == "0x1", rc
        return Contract(contract_address(self.dev.address, nonce), art)

    def call(self, c: Contract, fn: str, *args: Any, sender: str | None = None) -> tuple[Any, ...]:
        item = c.art.function(fn)
        call: dict[str, Any] = {"to": c.address, "data": "0x" + encode_call(item, *args).hex()}
        if sender:
            call["from"] = sender
        out = raw_rpc(self.node, "eth_call", [call, "latest"])
        if "error" in out:
            raise Reverted(c.art, out["error"])
        return decode_result(item, bytes.fromhex(out["result"][2:]))

    def transact(
        self, key: GatewayKey, c: Contract, fn: str, *args: Any, value: int = 0
    ) -> dict[str, Any]:
        """Checked with eth_call first (so a refusal raises Reverted with its reason), then
        sent and mined."""
        item = c.art.function(fn)
        data = encode_call(item, *args)
        call = {
            "from": key.address,
            "to": c.address,
            "data": "0x" + data.hex(),
            "value": hex(value),
        }
        out = raw_rpc(self.node, "eth_call", [call, "latest"])
        if "error" in out:
            raise Reverted(c.art, out["error"])
        rc = self.send(key, c.address, data, value)
        assert rc["status"] == "0x1", rc
        return rc

    def mine(self, blocks: int) -> None:
        self.node.rpc("anvil_mine", [hex(blocks)])

    def block_number(self) -> int:
        return int(str(self.node.rpc("eth_blockNumber")), 16)

    def block_timestamp(self) -> int:
        block = self.node.rpc("eth_getBlockByNumber", ["latest", False])
        assert isinstance(block, dict)
        return int(block["timestamp"], 16)


class Reverted(Exception):
    """A call the contract refused; `name` is its custom error (or Error for a require)."""

    def __init__(self, art: Artifact, error: dict[str, Any]) -> None:
        from agent.chainclient.contractclient import revert_reason

        self.reason = revert_reason(art.abi, error.get("data"))
        self.name = self.reason.split("(", 1)[0]
        super().__init__(self.reason)


@dataclass
class Deployment:
    chain: Chain
    registry: Contract
    oracle: Contract

    @property
    def domain(self) -> Eip712Domain:
        return Eip712Domain("Edgence", "2", self.chain.node.chain_id, self.oracle.address)

    def create_feed(
        self,
        feed: bytes,
        *,
        quorum: int = QUORUM,
        min_assurance: int = 0,
        same_reading: bool = False,
        window: int = ROUND_WINDOW_S,
        max_age: int = MAX_AGE_S,
        allowed: tuple[str, ...] = (),
    ) -> dict[str, Any]:
        return self.chain.transact(
            self.chain.dev,
            self.oracle,
            "createFeed",
            feed,
            quorum,
            min_assurance,
            same_reading,
            window,
            max_age,
            list(allowed),
        )

    def masternode(self, vrf_byte: int = 2, register: bool = True) -> GatewayKey:
        key = GatewayKey.generate()
        self.chain.fund(key)
        if register:
            vrf = bytes([vrf_byte]) + key.public_key_uncompressed[1:33]
            self.chain.transact(key, self.registry, "register", vrf, value=COLLATERAL)
        return key

    def signer(self, key: GatewayKey) -> ObservationSigner:
        return ObservationSigner(key, self.domain)


def reading(
    value: int,
    *,
    timestamp: int | None = None,
    device: str = "dev-1",
    sensor: str = "temp",
    counter: int = 1,
    exponent: int = -2,
    transport: Transport = Transport.MQTT,
    auth: AuthMethod = AuthMethod.HMAC,
) -> Reading:
    return Reading(
        device_id=device,
        sensor=sensor,
        value=value,
        exponent=exponent,
        unit="Cel",
        timestamp=int(time.time()) if timestamp is None else timestamp,
        counter=counter,
        transport=transport,
        auth=auth,
    )


def batch_args(observations: list[Observation]) -> tuple[list[Any], ...]:
    """(gateways, observation tuples, signatures): ObservationOracle.submitBatch's arguments."""
    args = [obs_args(o) for o in observations]
    return ([a[0] for a in args], [a[1] for a in args], [a[2] for a in args])


def obs_args(o: Observation) -> tuple[Any, ...]:
    """(gateway, observation tuple, signature): ObservationOracle.submit's arguments."""
    from agent.attest.observation import verify_envelope
    from agent.oracle import observation_tuple

    v = verify_envelope(o.envelope)
    return (o.gateway, observation_tuple(v), o.signature)


@pytest.fixture
def deployment(anvil: LocalAnvil, contracts_built: Path) -> Iterator[Deployment]:
    chain = Chain(anvil)
    registry = chain.deploy("MasternodeRegistry", COLLATERAL, WINDOW_BLOCKS)
    oracle = chain.deploy("ObservationOracle", registry.address, MAX_FUTURE_S)
    yield Deployment(chain, registry, oracle)


class OracleAsker:
    """A dApp's MQTT 5 client for oracle queries (its own paho thread, independent of the
    agent's MQTT code): request on .../oracle/req/<name>, answer on its own response topic."""

    def __init__(self, port: int, gateway: str) -> None:
        import threading
        import uuid

        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        self.name = f"dapp-{uuid.uuid4().hex[:8]}"
        self.req_topic = f"edgence/{gateway}/oracle/req/{self.name}"
        self.reply_topic = f"edgence/{gateway}/oracle/res/{self.name}"
        self.answers: dict[bytes, bytes] = {}
        self.cv = threading.Condition()
        c = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=self.name, protocol=MQTTProtocolVersion.MQTTv5
        )
        subscribed = threading.Event()
        c.on_message = self._on_message
        c.on_subscribe = lambda *a: subscribed.set()
        c.connect("127.0.0.1", port, 30)
        c.loop_start()
        c.subscribe(self.reply_topic, 1)
        assert subscribed.wait(10)
        self.client = c

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self.cv:
            self.answers[bytes(msg.properties.CorrelationData)] = bytes(msg.payload)
            self.cv.notify_all()

    def send(self, payload: bytes, reply_to: str | None = None) -> bytes:
        import uuid

        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        corr = uuid.uuid4().bytes
        p = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        p.ResponseTopic = reply_to or self.reply_topic
        p.CorrelationData = corr
        self.client.publish(self.req_topic, payload, qos=1, properties=p).wait_for_publish(10)
        return corr

    def wait(self, corr: bytes, timeout: float = 10.0) -> bytes:
        with self.cv:
            assert self.cv.wait_for(lambda: corr in self.answers, timeout), "no answer"
            return self.answers.pop(corr)

    async def ask_raw(self, payload: bytes) -> bytes:
        import asyncio

        corr = self.send(payload)
        return await asyncio.to_thread(self.wait, corr)

    async def ask(self, **query: Any) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(await self.ask_raw(json.dumps(query).encode()))
        return out

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
