"""Each dApp's answers reach only that dApp: against the real agent (forwarding to a real anvil,
the oracle) on a real Mosquitto configured with the password file and the ACL that `pair`
writes. A second client can neither read another's answers, nor forge them, nor make the
gateway answer onto them, nor escape its own rate limit (forwarding's or the oracle's) by naming
new response topics; over CoAP the limit is per peer address, whatever source port a client
uses."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiocoap
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.attest.keys import GatewayKey
from agent.chainclient.anvil import LocalAnvil
from agent.config import BrokerAuthConfig
from agent.devices.brokerauth import MosquittoAuth
from agent.localbroker import LocalMosquitto, free_port
from tests.integration.conftest import (
    AgentProcess,
    agent_config_dict,
    async_wait_until,
    write_agent_dir,
)

AGENT = "edgence-agent"


@dataclass
class Login:
    username: str
    password: str
    password_file: Path


class GeneratedBroker:
    """A Mosquitto that admits only the logins of its password file, under the ACL written by
    the agent's own code (`MosquittoAuth`, what `pair` uses)."""

    def __init__(self, d: Path) -> None:
        d.mkdir(parents=True, exist_ok=True)
        self.dir = d
        self.auth = MosquittoAuth(
            BrokerAuthConfig(password_file=d / "passwd", acl_file=d / "acl", agent_username=AGENT)
        )
        self.logins = {u: self.login(u) for u in (AGENT, "alice", "bob")}
        self.auth.write_acl([])
        self.broker = LocalMosquitto(
            d,
            name="generated",
            allow_anonymous=False,
            extra=f"password_file {d / 'passwd'}\nacl_file {d / 'acl'}",
        )

    def login(self, username: str) -> Login:
        password = self.auth.set_password(username)
        f = self.dir / f"{username}.pass"
        f.write_text(password)
        f.chmod(0o600)
        return Login(username, password, f)


@pytest.fixture
def generated(tmp_path: Path) -> Iterator[GeneratedBroker]:
    g = GeneratedBroker(tmp_path / "generated")
    with g.broker:
        yield g


class Client:
    """A dApp's MQTT 5 client with a broker login (its own paho thread)."""

    def __init__(self, broker: GeneratedBroker, username: str, subscriptions: list[str]) -> None:
        login = broker.logins[username]
        self.got: list[tuple[str, bytes | None, Any]] = []  # (topic, correlation, body)
        self.cv = threading.Condition()
        c = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{username}-{uuid.uuid4().hex[:6]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        c.username_pw_set(login.username, login.password)
        c.on_message = self._on_message
        subscribed = threading.Event()

        # paho drops the connection when the broker refuses a publish (PUBACK 0x87) and
        # reconnects: subscribe on every connection.
        def on_connect(*a: Any) -> None:
            c.subscribe([(s, 1) for s in subscriptions])

        c.on_connect = on_connect
        c.on_subscribe = lambda *a: subscribed.set()
        connected = threading.Event()
        if not subscriptions:
            c.on_connect = lambda *a: connected.set()
        c.connect("127.0.0.1", broker.broker.port, 30)
        c.loop_start()
        assert (subscribed if subscriptions else connected).wait(10)
        self.client = c

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        corr = getattr(msg.properties, "CorrelationData", None)
        with self.cv:
            self.got.append((msg.topic, corr, json.loads(msg.payload)))
            self.cv.notify_all()

    async def publish(self, topic: str, body: Any, reply_to: str | None, corr: bytes) -> None:
        await asyncio.to_thread(self._publish, topic, body, reply_to, corr)

    def _publish(
        self, topic: str, body: Any, reply_to: str | None, corr: bytes, qos: int = 1
    ) -> None:
        p = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if reply_to is not None:
            p.ResponseTopic = reply_to
        p.CorrelationData = corr
        self.client.publish(topic, json.dumps(body), qos=qos, properties=p).wait_for_publish(10)

    async def answer(self, corr: bytes) -> Any:
        # waited for in a thread: the agent runs on this test's event loop
        return await asyncio.to_thread(self._answer, corr, 10.0)

    def _answer(self, corr: bytes, timeout: float) -> Any:
        with self.cv:
            ok = self.cv.wait_for(lambda: any(c == corr for _, c, _ in self.got), timeout)
            assert ok, f"no answer for {corr!r}; got {self.got}"
            return next(b for _, c, b in self.got if c == corr)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def attempt(
    broker: GeneratedBroker,
    username: str,
    topic: str,
    body: Any,
    reply_to: str | None,
    corr: bytes,
) -> None:
    """One publish the broker refuses, from a connection of its own (Mosquitto closes an MQTT 5
    connection whose publish it refused), as `username`, then a clean DISCONNECT: the broker has
    handled the publish before it reads that."""
    mallory = Client(broker, username, [])
    try:
        await asyncio.to_thread(mallory._publish, topic, body, reply_to, corr, 0)
    finally:
        await asyncio.to_thread(mallory.close)


def rpc(method: str, rid: int = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "method": method, "params": []}


async def start(
    start_agent: Callable[..., Any],
    generated: GeneratedBroker,
    upstream: LocalMosquitto,
    anvil: LocalAnvil,
    oracle: dict[str, Any] | None = None,
    **forward: Any,
) -> tuple[Any, str]:
    agent_login = generated.logins[AGENT]
    login = {"username": AGENT, "password_file": str(agent_login.password_file)}
    cfg = agent_config_dict(generated.broker, upstream)
    cfg["sources"]["mqtt"] |= login
    cfg["chain"] = {"rpc_url": anvil.url}
    cfg["forward"] = {"enabled": True, **forward, "mqtt": dict(login)}
    cfg["oracle"] = {"enabled": True, **(oracle or {}), "mqtt": dict(login)}
    key = GatewayKey.generate()
    running = await start_agent(cfg, key)
    await asyncio.wait_for(running.agent.forward_mqtt.ready.wait(), 10)
    await asyncio.wait_for(running.agent.oracle_mqtt.ready.wait(), 10)
    return running, key.address


@pytest.mark.parametrize("service", ["rpc", "oracle"])
async def test_a_second_client_can_neither_read_nor_forge_another_clients_answers(
    service: str,
    generated: GeneratedBroker,
    upstream_broker: LocalMosquitto,
    anvil: LocalAnvil,
    start_agent: Callable[..., Any],
) -> None:
    running, gw = await start(start_agent, generated, upstream_broker, anvil)
    base = f"edgence/{gw}/{service}"
    request: Any = rpc("eth_chainId") if service == "rpc" else {"device": "dev-1", "sensor": "t"}
    alice = Client(generated, "alice", [f"{base}/res/alice/#"])
    # bob listens wherever alice's answers could go (Mosquitto grants the subscription and
    # then delivers only what the ACL lets bob read)
    bob = Client(
        generated,
        "bob",
        [f"{base}/res/bob/#", f"{base}/res/#", f"{base}/res/alice/#", "edgence/#"],
    )
    try:
        # bob forges an answer onto alice's topic with the correlation she is about to use,
        # and asks the gateway itself to answer onto it, from his own request topic and
        # from alice's
        await attempt(generated, "bob", f"{base}/res/alice", {"forged": True}, None, b"alice-1")
        await bob.publish(f"{base}/req/bob", request, f"{base}/res/alice", b"alice-1")
        await attempt(
            generated, "bob", f"{base}/req/alice", request, f"{base}/res/alice", b"alice-1"
        )
        # bob's own request, answered to bob: proves the gateway had read his requests
        await bob.publish(f"{base}/req/bob", request, f"{base}/res/bob/x", b"bob-1")
        assert await bob.answer(b"bob-1") is not None
        await alice.publish(f"{base}/req/alice", request, f"{base}/res/alice", b"alice-2")
        assert await alice.answer(b"alice-2") is not None
        if service == "rpc":
            assert (await alice.answer(b"alice-2"))["result"] == hex(31337)
        # a request from another client never reaches alice, forged or answered by the gateway
        assert [c for _, c, _ in alice.got] == [b"alice-2"], alice.got
        # and bob saw his own answer (once per subscription it matches), nothing of alice's
        assert {(t, c) for t, c, _ in bob.got} == {(f"{base}/res/bob/x", b"bob-1")}, bob.got
        if service == "rpc":
            metrics = running.agent.metrics
            assert (
                metrics.get("forward_refused", reason="reply_topic_denied", transport="mqtt") == 1
            )
    finally:
        alice.close()
        bob.close()


async def test_varying_the_response_topic_does_not_escape_the_rate_limit(
    generated: GeneratedBroker,
    upstream_broker: LocalMosquitto,
    anvil: LocalAnvil,
    start_agent: Callable[..., Any],
) -> None:
    # A bucket of 3 that refills once in 100 s: within the test only 3 requests pass.
    _running, gw = await start(start_agent, generated, upstream_broker, anvil, rate=0.01, burst=3)
    base = f"edgence/{gw}/rpc"
    bob = Client(generated, "bob", [f"{base}/res/bob/#"])
    alice = Client(generated, "alice", [f"{base}/res/alice/#"])
    try:
        for i in range(8):
            await bob.publish(
                f"{base}/req/bob", rpc("eth_chainId"), f"{base}/res/bob/{i}", b"%d" % i
            )
        answers = [await bob.answer(b"%d" % i) for i in range(8)]
        limited = [a for a in answers if a.get("error", {}).get("data", {}).get("reason")]
        assert len(limited) == 5, answers
        assert all(a["error"]["data"]["reason"] == "rate_limited" for a in limited)
        # bob cannot spend alice's budget either (the ACL refuses his requests on her topic)...
        for i in range(3):
            await attempt(
                generated,
                "bob",
                f"{base}/req/alice",
                rpc("eth_chainId"),
                f"{base}/res/bob/a{i}",
                b"a",
            )
        # ...so alice still has hers
        await alice.publish(f"{base}/req/alice", rpc("eth_chainId"), f"{base}/res/alice", b"mine")
        assert (await alice.answer(b"mine"))["result"] == hex(31337)
        assert all(c != b"a" for _, c, _ in bob.got)
    finally:
        alice.close()
        bob.close()


@pytest.mark.timeout(120)  # two Mosquittos and an agent process on a busy machine
@pytest.mark.parametrize("vary_topic", [False, True])
def test_an_oracle_client_flooding_is_limited_and_another_is_still_served(
    vary_topic: bool,
    tmp_path: Path,
    generated: GeneratedBroker,
    upstream_broker: LocalMosquitto,
    agent_process: Callable[[Path], AgentProcess],
) -> None:
    """Against `edgence-agent run` as a process: the oracle's limit is per username, whether
    the flood keeps one Response Topic or names a new one each time."""
    login = {"username": AGENT, "password_file": str(generated.logins[AGENT].password_file)}
    cfg = agent_config_dict(generated.broker, upstream_broker)
    cfg["sources"]["mqtt"] |= login
    # A bucket of 3 that refills once in 100 s: within the test only 3 queries pass.
    cfg["oracle"] = {"enabled": True, "rate": 0.01, "burst": 3, "mqtt": dict(login)}
    config, key = write_agent_dir(tmp_path / "etc", cfg)
    proc = agent_process(config)
    proc.start()  # ready: the oracle has subscribed to its requests
    base = f"edgence/{key.address}/oracle"
    query = {"device": "dev-1", "sensor": "t"}
    bob = Client(generated, "bob", [f"{base}/res/bob/#"])
    alice = Client(generated, "alice", [f"{base}/res/alice/#"])
    try:
        for i in range(8):
            reply_to = f"{base}/res/bob/{i}" if vary_topic else f"{base}/res/bob"
            bob._publish(f"{base}/req/bob", query, reply_to, b"%d" % i)
        answers = [bob._answer(b"%d" % i, 10.0)["error"] for i in range(8)]
        # served (the journal was asked: no observation of dev-1 yet) while the budget lasts,
        # then refused with the time to wait
        codes = [a["code"] for a in answers]
        assert codes == ["no_data"] * 3 + ["rate_limited"] * 5, answers
        assert all(a["retry_after_ms"] > 0 for a in answers[3:])
        alice._publish(f"{base}/req/alice", query, f"{base}/res/alice", b"mine")
        assert alice._answer(b"mine", 10.0)["error"]["code"] == "no_data"
        # one log line for the flood (the rest at debug level), naming the client
        lines = [
            line
            for line in proc.log_text().splitlines()
            if "event=oracle_query_refused" in line and "reason=rate_limited" in line
        ]
        assert len(lines) == 1 and "client=mqtt:bob" in lines[0], lines
    finally:
        alice.close()
        bob.close()


async def test_coap_forwarding_limits_per_peer_address_whatever_its_source_port(
    generated: GeneratedBroker,
    upstream_broker: LocalMosquitto,
    anvil: LocalAnvil,
    start_agent: Callable[..., Any],
) -> None:
    port = free_port()
    running, _gw = await start(
        start_agent,
        generated,
        upstream_broker,
        anvil,
        rate=0.01,
        burst=2,
        coap={"enabled": True, "bind": f"127.0.0.1:{port}"},
    )
    await async_wait_until(lambda: running.agent.forward_coap.ready.is_set(), 10, "coap")
    reasons = []
    for _ in range(4):  # a new client context each time: a new source port
        ctx = await aiocoap.Context.create_client_context()
        try:
            msg = aiocoap.Message(
                code=aiocoap.POST,
                uri=f"coap://127.0.0.1:{port}/rpc",
                payload=json.dumps(rpc("eth_chainId")).encode(),
            )
            resp = await asyncio.wait_for(ctx.request(msg).response, 10)
            body = json.loads(resp.payload)
            reasons.append(body.get("error", {}).get("data", {}).get("reason", "ok"))
        finally:
            await ctx.shutdown()
    assert reasons == ["ok", "ok", "rate_limited", "rate_limited"]
