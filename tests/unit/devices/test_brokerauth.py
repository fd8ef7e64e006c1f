"""The broker ACL `pair` writes (agent/devices/brokerauth.py), as text: Home Assistant discovery's
topics are granted to the login that publishes discovery and to Home Assistant's, never by a
pattern (which every device login would match), and only with [homeassistant] on. The same ACL
on a real Mosquitto: tests/adversarial/test_homeassistant_acl.py."""

from __future__ import annotations

from agent.config import BrokerAuthConfig, HomeAssistantConfig
from agent.config.broker import BrokerEndpoint
from agent.devices.brokerauth import acl_text
from agent.devices.registry import DeviceRecord, DeviceStatus, KeyKind
from agent.model import Transport

DEVICE = DeviceRecord(
    id="dev-1",
    name="dev-1",
    transport=Transport.MQTT,
    address="",
    key_kind=KeyKind.HMAC,
    status=DeviceStatus.ACTIVE,
    created=0,
    sensors=(),
)
AUTH = BrokerAuthConfig(agent_username="agent", homeassistant_username="hass")


def blocks(text: str) -> dict[str, set[str]]:
    """user -> its topic lines (Mosquitto merges repeated `user` blocks); "*" for patterns."""
    out: dict[str, set[str]] = {"*": set()}
    user = "*"
    for line in text.splitlines():
        if line.startswith("user "):
            user = line.split(" ", 1)[1]
            out.setdefault(user, set())
        elif line.startswith("topic "):
            out[user].add(line)
        elif line.startswith("pattern "):
            out["*"].add(line)
    return out


def test_with_discovery_on_the_agent_writes_and_home_assistant_reads_it() -> None:
    acl = blocks(acl_text(AUTH, [DEVICE], homeassistant=HomeAssistantConfig(enabled=True)))
    assert {
        "topic write homeassistant/+/+/+/config",
        "topic write edgence/+/ha/#",
        "topic read homeassistant/status",
    } <= acl["agent"]
    assert acl["hass"] == {
        "topic read homeassistant/#",
        "topic read edgence/+/ha/#",
        "topic write homeassistant/status",
    }
    assert acl["dev-1"] == {"topic write devices/dev-1/up"}
    assert not any("homeassistant" in p or "/ha/" in p for p in acl["*"])


def test_the_prefixes_and_the_discovery_login_come_from_the_config() -> None:
    ha = HomeAssistantConfig(
        enabled=True,
        discovery_prefix="hass/disc",
        topic_prefix="site",
        mqtt=BrokerEndpoint(host="127.0.0.1", port=1883, username="ha-writer"),
    )
    acl = blocks(acl_text(AUTH, [], homeassistant=ha))
    assert "topic write hass/disc/+/+/+/config" in acl["ha-writer"]
    assert "topic write site/+/ha/#" in acl["ha-writer"]
    assert not any("hass/disc" in t for t in acl["agent"])
    assert "topic read hass/disc/#" in acl["hass"]


def test_with_discovery_off_nobody_gets_its_topics() -> None:
    for ha in (None, HomeAssistantConfig(enabled=False)):
        text = acl_text(AUTH, [DEVICE], homeassistant=ha)
        assert "homeassistant" not in text and "/ha/" not in text
