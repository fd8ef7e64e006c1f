"""dApp requests forwarded to a real anvil over real Mosquitto (MQTT 5 and 3.1.1 clients) and
real CoAP (aiocoap client), through a counting proxy that proves what reaches the node."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiocoap
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.chainclient.anvil import LocalAnvil
from agent.chainclient.forward import Forwarder, ForwardPolicy
from agent.chainclient.forwardservers import CoapForwarder, MqttForwarder
from agent.chainclient.rpc import RpcClient
from agent.chainclient.tx import encode_call
from agent.config import BrokerEndpoint
from agent.localbroker import LocalMosquitto, free_port
from agent.metrics import Metrics
from tests.integration.chainclient.conftest import CountingProxy, Deployed, dev_tx

GATEWAY = "0x" + "ab" * 20
REQ_TOPIC = f"edgence/{GATEWAY}/rpc/req"


class Dapp:
    """A dApp's MQTT client (its own paho thread, independent of the agent's MQTT code)."""

    def __init__(self, port: int, v5: bool, gateway: str = GATEWAY) -> None:
        self.v5 = v5
        self.name = f"dapp-{uuid.uuid4().hex[:8]}"
        self.req_topic = f"edgence/{gateway}/rpc/req/{self.name}"
        self.reply_topic = f"edgence/{gateway}/rpc/res/{self.name}"
        self.answers: dict[str, Any] = {}
        self.cv = threading.Condition()
        c = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.name,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        )
        subscribed = threading.Event()
        c.on_message = self._on_message
        c.on_subscribe = lambda *a: subscribed.set()
        c.connect("127.0.0.1", port, 30)
        c.loop_start()
        c.subscribe(self.reply_topic, 1)
        assert subscribed.wait(10)
        self.client = c

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        if self.v5:
            corr = msg.properties.CorrelationData.decode()  # type: ignore[union-attr]
            body = json.loads(msg.payload)
        else:
            env = json.loads(msg.payload)
            corr, body = env["correlation"], env["response"]
        with self.cv:
            self.answers[corr] = body
            self.cv.notify_all()

    def send(self, request: Any, raw: bytes | None = None) -> str:
        corr = uuid.uuid4().hex
        if self.v5:
            p = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            p.ResponseTopic = self.reply_topic
            p.CorrelationData = corr.encode()
            payload = raw if raw is not None else json.dumps(request).encode()
            self.client.publish(self.req_topic, payload, qos=1, properties=p)
        else:
            env = {"reply_to": self.reply_topic, "correlation": corr, "request": request}
            self.client.publish(self.req_topic, json.dumps(env), qos=1)
        return corr

    def wait(self, corr: str, timeout: float = 10.0) -> Any:
        with self.cv:
            assert self.cv.wait_for(lambda: corr in self.answers, timeout), "no answer"
            return self.answers.pop(corr)

    async def ask(self, request: Any, raw: bytes | None = None) -> Any:
        corr = self.send(request, raw)
        return await asyncio.to_thread(self.wait, corr)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def rpc(method: str, params: list[Any] | None = None, rid: int = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "method": method, "params": params or []}


async def direct(anvil: LocalAnvil, body: Any) -> Any:
    async with RpcClient(anvil.url) as c:
        return json.loads(await c.post(json.dumps(body).encode()))


class Stack:
    def __init__(self, fwd: Forwarder, mqtt: MqttForwarder, coap: CoapForwarder) -> None:
        self.fwd, self.mqtt, self.coap_server = fwd, mqtt, coap
        self.coap_client: aiocoap.Context | None = None

    async def coap(self, body: Any, raw: bytes | None = None) -> Any:
        if self.coap_client is None:
            self.coap_client = await aiocoap.Context.create_client_context()
        payload = raw if raw is not None else json.dumps(body).encode()
        msg = aiocoap.Message(
            code=aiocoap.POST,
            uri=f"coap://127.0.0.1:{self.coap_server.port}/rpc",
            payload=payload,
        )
        resp = await self.coap_client.request(msg).response
        assert resp.code == aiocoap.CONTENT, resp
        return json.loads(resp.payload)


async def start_stack(
    url: str, broker: LocalMosquitto, policy: ForwardPolicy
) -> AsyncIterator[Stack]:
    rpc_client = RpcClient(url, timeout=3.0)
    fwd = Forwarder(rpc_client, policy, Metrics())
    mqtt = MqttForwarder(
        fwd,
        BrokerEndpoint(host="127.0.0.1", port=broker.port, protocol=5),
        request_topic=REQ_TOPIC,
        reply_filters=(f"edgence/{GATEWAY}/rpc/res/{{client}}/#",),
        client_id="gw-rpc",
    )
    coap = CoapForwarder(fwd, "127.0.0.1", free_port())
    tasks = [asyncio.create_task(mqtt.run()), asyncio.create_task(coap.run())]
    await asyncio.wait_for(mqtt.ready.wait(), 10)
    await asyncio.wait_for(coap.ready.wait(), 10)
    stack = Stack(fwd, mqtt, coap)
    try:
        yield stack
    finally:
        if stack.coap_client is not None:
            await stack.coap_client.shutdown()
        await mqtt.stop()
        await coap.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        await rpc_client.close()


@pytest.fixture
async def stack(
    counting_proxy: CountingProxy, local_broker: LocalMosquitto
) -> AsyncIterator[Stack]:
    async for s in start_stack(counting_proxy.url, local_broker, ForwardPolicy(max_log_range=50)):
        yield s


@pytest.fixture
def dapps(local_broker: LocalMosquitto) -> Any:
    made: list[Dapp] = []

    def make(v5: bool = True) -> Dapp:
        d = Dapp(local_broker.port, v5)
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


async def test_same_answers_as_direct_over_mqtt5_mqtt311_and_coap(
    stack: Stack, dapps: Any, anvil: LocalAnvil, counter: Deployed, contracts_built: Path
) -> None:
    v5, v311 = dapps(True), dapps(False)
    call = {
        "to": counter.address,
        "data": "0x" + encode_call(counter.artifact.function("number")).hex(),
    }
    reads = [
        rpc("eth_chainId"),
        rpc("eth_blockNumber"),
        rpc("eth_call", [call, "latest"]),
    ]
    for req in reads:
        want = await direct(anvil, req)
        assert "result" in want
        assert await v5.ask(req) == want
        assert await v311.ask(req) == want
        assert await stack.coap(req) == want
    # A batch answers in order, like the node's own.
    assert await v5.ask(reads) == await direct(anvil, reads)

    # eth_sendRawTransaction of a transaction each client signed itself.
    inc = encode_call(counter.artifact.function("increment"))
    for send in (v5.ask, v311.ask, stack.coap):
        tx = dev_tx(anvil, counter.address, inc, gas=100_000)
        answer = await send(rpc("eth_sendRawTransaction", [tx.raw_hex], rid=7))
        assert answer == {"jsonrpc": "2.0", "id": 7, "result": tx.hash_hex}
    number = rpc("eth_call", [call, "latest"])
    for _ in range(100):  # anvil mines each right after accepting it
        got = (await direct(anvil, number))["result"]
        if int(got, 16) == 3:
            break
        await asyncio.sleep(0.05)
    assert int(got, 16) == 3
    assert await stack.coap(number) == await direct(anvil, number)


@pytest.mark.parametrize("transport", ["mqtt5", "mqtt311", "coap"])
async def test_denied_methods_never_reach_the_node(
    stack: Stack, dapps: Any, counting_proxy: CountingProxy, transport: str
) -> None:
    ask = {"mqtt5": dapps(True).ask, "mqtt311": dapps(False).ask, "coap": stack.coap}[transport]
    denied = [
        "admin_peers",
        "debug_traceTransaction",
        "personal_unlockAccount",
        "miner_start",
        "anvil_setBalance",
        "evm_mine",
        "eth_sign",
        "eth_signTypedData_v4",
        "eth_sendTransaction",
        "eth_accounts",  # not on the default allowlist
    ]
    for i, m in enumerate(denied):
        answer = await ask(rpc(m, [], rid=i))
        assert answer["id"] == i
        assert answer["error"]["code"] == -32601, answer
        assert answer["error"]["data"]["reason"] == "method_not_allowed"
    # In a batch, the allowed part is forwarded and the denied part answered by the gateway.
    mixed = await ask([rpc("eth_chainId", rid=1), rpc("anvil_mine", rid=2)])
    assert mixed[0]["result"] == "0x7a69" and mixed[1]["error"]["code"] == -32601
    assert counting_proxy.methods["eth_chainId"] == 1
    assert not set(counting_proxy.methods) & {*denied, "anvil_mine"}, counting_proxy.methods


async def test_each_abuse_gets_its_error_and_others_are_unaffected(
    counting_proxy: CountingProxy, local_broker: LocalMosquitto, dapps: Any
) -> None:
    policy = ForwardPolicy(max_request_bytes=2048, max_batch=5, max_log_range=10, rate=2.0, burst=8)
    async for s in start_stack(counting_proxy.url, local_broker, policy):
        bad, good = dapps(True), dapps(False)
        before = sum(counting_proxy.methods.values())
        cases = [
            (b"{not json", -32700, "parse_error"),
            (json.dumps(rpc("eth_call", ["x" * 4000])).encode(), -32005, "request_too_large"),
            (
                json.dumps([rpc("eth_chainId", rid=i) for i in range(6)]).encode(),
                -32005,
                "batch_too_long",
            ),
            (b"[]", -32600, "empty_batch"),
            (b'{"jsonrpc":"1.0","id":1,"method":"eth_chainId"}', -32600, "invalid_request"),
            (
                json.dumps(
                    rpc("eth_getLogs", [{"fromBlock": "earliest", "toBlock": "0x14"}])
                ).encode(),
                -32005,
                "log_range_too_wide",
            ),
        ]
        for raw, code, reason in cases:
            answer = await bad.ask(None, raw=raw)
            if isinstance(answer, list):
                answer = answer[0]
            assert answer["error"]["code"] == code, (raw[:40], answer)
            assert answer["error"]["data"]["reason"] == reason
        # Only the log-range check asked the node something (its head number).
        assert (
            sum(counting_proxy.methods.values()) - before
            == counting_proxy.methods["eth_blockNumber"]
        )
        # A narrow eth_getLogs is passed on.
        ok = await good.ask(rpc("eth_getLogs", [{"fromBlock": "0x0", "toBlock": "0x9"}]))
        assert ok["result"] == []
        # Flooding: `bad` sends far past its burst; at least one is refused as rate_limited...
        flood = [bad.send(rpc("eth_chainId", rid=i)) for i in range(30)]
        answers = [await asyncio.to_thread(bad.wait, c) for c in flood]
        limited = [a for a in answers if "error" in a]
        assert limited and all(a["error"]["data"]["reason"] == "rate_limited" for a in limited)
        assert all(a["error"]["data"]["retry_after_ms"] > 0 for a in limited)
        # ...and another client is served as usual meanwhile.
        assert (await good.ask(rpc("eth_chainId")))["result"] == "0x7a69"
        assert await s.coap(rpc("eth_chainId")) == {"jsonrpc": "2.0", "id": 1, "result": "0x7a69"}
        m = s.fwd.metrics
        for _, _, reason in cases:
            assert m.get("forward_refused", reason=reason, transport="mqtt") >= 1
        assert m.get("forward_refused", reason="rate_limited", transport="mqtt") == len(limited)


async def test_reply_topics_outside_the_filter_get_nothing(
    stack: Stack, local_broker: LocalMosquitto, counting_proxy: CountingProxy
) -> None:
    # A client asking for answers on an observation topic: the gateway must not publish there.
    spy = Dapp(local_broker.port, v5=True)
    spy.reply_topic = f"edgence/{GATEWAY}/obs/dev-1/temperature"
    seen: list[bytes] = []
    watcher = Dapp(local_broker.port, v5=False)
    watcher.client.on_message = lambda c, u, m: seen.append(bytes(m.payload))
    watcher.client.subscribe(f"edgence/{GATEWAY}/obs/#", 1)
    try:
        spy.send(rpc("eth_chainId"))
        # Then a normal request, answered: by then the spy's request has been handled too.
        ok = dapps_ask = Dapp(local_broker.port, v5=True)
        assert (await dapps_ask.ask(rpc("eth_chainId")))["result"] == "0x7a69"
        ok.close()
        for _ in range(50):
            if stack.fwd.metrics.get(
                "forward_refused", reason="reply_topic_denied", transport="mqtt"
            ):
                break
            await asyncio.sleep(0.02)
        assert (
            stack.fwd.metrics.get("forward_refused", reason="reply_topic_denied", transport="mqtt")
            == 1
        )
        assert seen == []
        assert counting_proxy.methods["eth_chainId"] == 1
    finally:
        spy.close()
        watcher.close()


async def test_node_down_gives_quick_errors_and_forwarding_resumes(
    stack: Stack, dapps: Any, anvil: LocalAnvil
) -> None:
    d = dapps(True)
    assert (await d.ask(rpc("eth_chainId")))["result"] == "0x7a69"
    anvil.kill()
    for ask in (d.ask, stack.coap):
        answer = await ask(rpc("eth_blockNumber", rid=5))
        assert answer["id"] == 5 and answer["error"]["code"] == -32002
        assert answer["error"]["data"]["reason"] == "node_unreachable"
    anvil.start()
    for _ in range(100):
        answer = await d.ask(rpc("eth_chainId"))
        if "result" in answer:
            break
        await asyncio.sleep(0.05)
    assert answer["result"] == "0x7a69"
    assert (await stack.coap(rpc("eth_blockNumber")))["result"] == "0x0"
