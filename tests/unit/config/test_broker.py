"""Broker endpoints and topic prefixes (agent/config/broker.py), read the same way in every
section that connects to a broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.config.helpers import MINIMAL, load, refusal


@pytest.mark.parametrize(
    ("url", "host", "port", "tls"),
    [
        ("mqtt://broker.local", "broker.local", 1883, False),
        ("mqtts://broker.local", "broker.local", 8883, True),
        ("mqtt://10.0.0.2:1999", "10.0.0.2", 1999, False),
        ("ssl://h:8884", "h", 8884, True),
        ("tcp://[::1]:1885", "::1", 1885, False),
    ],
)
def test_broker_url_gives_host_port_and_tls(
    tmp_path: Path, url: str, host: str, port: int, tls: bool
) -> None:
    broker = load(tmp_path, MINIMAL + f'[bridge]\nurl = "{url}"\n').bridge.broker
    assert (broker.host, broker.port, broker.tls) == (host, port, tls)


@pytest.mark.parametrize("url", ["http://h", "ws://h:80", "h:1883", "mqtt://", "mqtt:///x"])
def test_broker_url_with_wrong_scheme_or_no_host_is_refused(tmp_path: Path, url: str) -> None:
    path, message = refusal(tmp_path, MINIMAL + f'[sources.mqtt]\nurl = "{url}"\n')
    assert str(path) in message
    assert "[sources.mqtt.url]" in message
    assert "must be mqtt://HOST[:PORT] or mqtts://HOST[:PORT]" in message


def test_broker_url_with_bad_port_is_refused(tmp_path: Path) -> None:
    path, message = refusal(tmp_path, MINIMAL + '[bridge]\nurl = "mqtt://h:99999"\n')
    assert str(path) in message
    assert "[bridge.url] has an invalid port" in message


@pytest.mark.parametrize("url", ["mqtt://gw:s3cret@h", "mqtts://gw@h:8883"])
def test_broker_url_with_credentials_is_refused_without_echoing_them(
    tmp_path: Path, url: str
) -> None:
    path, message = refusal(tmp_path, MINIMAL + f'[bridge]\nurl = "{url}"\n')
    assert str(path) in message
    assert "[bridge.url] must not carry credentials" in message
    assert "password_file" in message
    assert "s3cret" not in message


def test_broker_url_with_wrong_scheme_never_echoes_a_password(tmp_path: Path) -> None:
    _, message = refusal(tmp_path, MINIMAL + '[bridge]\nurl = "http://gw:s3cret@h"\n')
    assert "s3cret" not in message


@pytest.mark.parametrize("prefix", ["", "a/+", "#", "/edgence", "edgence/"])
def test_bad_bridge_topic_prefix_is_refused(tmp_path: Path, prefix: str) -> None:
    path, message = refusal(tmp_path, MINIMAL + f'[bridge]\ntopic_prefix = "{prefix}"\n')
    assert str(path) in message
    assert (
        "[bridge.topic_prefix] must be a topic prefix without + # or leading/trailing /" in message
    )


def test_bridge_url_may_list_several_brokers_sharing_the_sections_login(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        MINIMAL + '[bridge]\nurl = ["mqtt://a:1883", "mqtt://b:1884"]\nusername = "gw"\n'
        'failback_check = "10s"\n',
    ).bridge
    assert [(b.host, b.port, b.username) for b in cfg.brokers] == [
        ("a", 1883, "gw"),
        ("b", 1884, "gw"),
    ]
    assert cfg.failback_check_s == 10.0


@pytest.mark.parametrize(
    ("urls", "problem"),
    [
        ("[]", "must be a broker URL or a non-empty list of distinct ones"),
        ('["mqtt://a", "mqtt://a"]', "must be a broker URL or a non-empty list of distinct ones"),
        ('["mqtt://a", 5]', "must be a broker URL or a non-empty list of distinct ones"),
        ('["mqtt://a", "mqtts://b"]', "must use one scheme for every broker"),
        ('["mqtt://a", "http://b"]', "must be mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"),
    ],
)
def test_a_bad_bridge_url_list_is_refused_naming_key_and_file(
    tmp_path: Path, urls: str, problem: str
) -> None:
    path, message = refusal(tmp_path, MINIMAL + f"[bridge]\nurl = {urls}\n")
    assert str(path) in message
    assert "[bridge.url]" in message
    assert problem in message
