"""The MQTT request/response helpers (agent/responder.py): JSON reply properties pack as paho's
own Properties do (and paho reads them back), and the reply-topic check (with its cache)
answers as paho's topic matching does."""

from __future__ import annotations

import logging

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.responder import JsonReplyProperties, reply_topic_allowed


def paho_reply_properties(correlation: bytes | None) -> Properties:
    p = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if correlation is not None:
        p.CorrelationData = correlation
    p.ContentType = "application/json"
    return p


@pytest.mark.parametrize(
    "correlation", [None, b"", b"\x00\x01", bytes(range(256)) * 3, "é".encode() * 40]
)
def test_reply_properties_pack_like_paho(correlation: bytes | None) -> None:
    ours = JsonReplyProperties(correlation)
    theirs = paho_reply_properties(correlation).pack()  # type: ignore[no-untyped-call]
    assert ours.pack() == theirs
    back = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    back.unpack(ours.pack())  # type: ignore[no-untyped-call]
    assert getattr(back, "ContentType", None) == "application/json"
    assert getattr(back, "CorrelationData", None) == correlation
    # the attributes are there for paho's logging and for readers of the message
    assert getattr(ours, "ContentType", None) == "application/json"
    assert getattr(ours, "CorrelationData", None) == correlation
    assert str(ours) == str(paho_reply_properties(correlation))


@pytest.mark.parametrize(
    ("topic", "filters", "allowed"),
    [
        ("edgence/0xab/rpc/res/app", ("edgence/0xab/rpc/res/#",), True),
        ("edgence/0xab/rpc/res", ("edgence/0xab/rpc/res/#",), True),  # '#' matches the parent
        ("edgence/0xab/obs/dev-1", ("edgence/0xab/rpc/res/#",), False),
        ("edgence/0xab/rpc/res/+", ("edgence/0xab/rpc/res/#",), False),  # not a concrete topic
        ("edgence/0xab/rpc/res/#", ("edgence/0xab/rpc/res/#",), False),
        ("app/replies/1", ("edgence/0xab/rpc/res/#", "app/+/1"), True),
        ("app/replies/2", ("edgence/0xab/rpc/res/#", "app/+/1"), False),
    ],
)
def test_reply_topic_check(topic: str, filters: tuple[str, ...], allowed: bool) -> None:
    for _ in range(2):  # the second answer comes from the cache
        assert reply_topic_allowed(topic, filters) is allowed
    # the same topic under other filters is judged again, not taken from the cache
    assert reply_topic_allowed(topic, ("elsewhere/#",)) is False


@pytest.mark.parametrize(
    ("asker", "reply_to", "corr", "reason"),
    [
        ("alice", "e/gw/rpc/res/alice", b"1", None),
        ("alice", "e/gw/rpc/res/alice/deep/er", None, None),
        ("alice", "e/gw/rpc/res/bob", b"1", "reply_topic_denied"),  # another client's topic
        ("alice", "e/gw/rpc/res/alicex", b"1", "reply_topic_denied"),  # a longer name
        ("alice", "e/gw/obs/dev-1/t", b"1", "reply_topic_denied"),
        ("alice", "e/gw/rpc/res/alice", b"x" * 257, "correlation_invalid"),
        ("alice", "e/gw/rpc/res/alice", "x" * 254, None),  # a 3.1.1 string, 256 bytes as JSON
        ("alice", "e/gw/rpc/res/alice", {"a": 1}, "correlation_invalid"),
        ("alice", "e/gw/rpc/res/alice", True, "correlation_invalid"),
        ("", "e/gw/rpc/res/", b"1", "client_name_invalid"),
        ("a" * 129, "e/gw/rpc/res/" + "a" * 129, b"1", "client_name_invalid"),
    ],
)
def test_an_answer_goes_only_under_the_askers_own_name(
    asker: str, reply_to: str, corr: object, reason: str | None
) -> None:
    from agent.config import BrokerEndpoint
    from agent.responder import MqttResponder

    r = MqttResponder(
        BrokerEndpoint(host="127.0.0.1", port=1, protocol=5),
        request_topic="e/gw/rpc/req",
        reply_filters=("e/gw/rpc/res/{client}/#",),
        client_id="t",
        link="rpc",
        logger=logging.getLogger("test"),
    )
    got = r.reply_refusal(asker, reply_to, corr)
    assert (got[0] if got else None) == reason


def test_a_service_responder_takes_its_topics_from_its_config_section() -> None:
    from agent.config import BrokerEndpoint
    from agent.config.service import RequestResponseConfig
    from agent.responder import ServiceResponder

    class Echo(ServiceResponder[str]):
        link = "echo"
        logger_name = "test.echo"

    cfg = RequestResponseConfig(
        mqtt=BrokerEndpoint(host="127.0.0.1", port=1, protocol=5),
        topic_prefix="e",
        reply_topics=("{prefix}/{gateway}/echo/res/{client}/#",),
    )
    r = Echo.from_config("the service", cfg, gateway="gw", client_id="t")
    assert r.service == "the service" and r.conn.name == "echo"
    assert r.request_topic == "e/gw/echo/req"
    assert r.reply_filters == ("e/gw/echo/res/{client}/#",)
    assert r.reply_refusal("alice", "e/gw/echo/res/alice/1", b"1") is None
    assert r.reply_refusal("alice", "e/gw/echo/res/bob/1", b"1") is not None
