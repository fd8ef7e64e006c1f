"""Defaults are written once, on the dataclass fields: an empty config loads to exactly the
dataclass defaults, and the shipped example differs from them only where it says so."""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

import agent.config
from agent.config import (
    AgentConfig,
    ChainConfig,
    DownlinkConfig,
    ElectionConfig,
    EnrollmentConfig,
    ForwardConfig,
    GatewayConfig,
    HomeAssistantConfig,
    JournalConfig,
    OracleConfig,
    config_from_dict,
    load_config,
)
from agent.config.broker import LOCAL_BROKER
from agent.frame import DEFAULT_MAX_BYTES, DEFAULT_MAX_VALUES
from tests.unit.config.helpers import EXAMPLE, MINIMAL, load


def test_only_gateway_key_file_is_required_and_everything_else_has_defaults(
    tmp_path: Path,
) -> None:
    cfg = load(tmp_path, MINIMAL)
    g = cfg.gateway
    assert (g.data_dir, g.passphrase_file, g.chain_id) == (tmp_path / "data", None, 31337)
    assert g.verifying_contract == "0x" + "00" * 20
    assert (g.domain_name, g.domain_version, g.feeds) == ("Edgence", "2", ())
    m = cfg.sources.mqtt
    assert m.enabled and m.broker.url == "mqtt://127.0.0.1:1883" and m.broker.protocol == 4
    assert (m.topics, m.qos, m.max_payload, m.max_values_per_frame) == (
        ("devices/+/up",),
        1,
        4096,
        16,
    )
    assert m.allowed_devices == ()
    b = cfg.bridge
    assert b.enabled and b.broker.url == "mqtt://127.0.0.1:1884" and b.fallbacks == ()
    assert (b.topic_prefix, b.inflight, b.batch, b.broker.keepalive) == ("edgence", 256, 512, 30)
    assert b.envelopes_per_message == 1  # batched upstream envelopes are off by default
    j = cfg.journal
    assert j.path == tmp_path / "data" / "journal.sqlite"
    assert (j.max_bytes, j.max_age_s) == (256 * 2**20, 7 * 86400.0)
    assert (j.synchronous, j.overflow, j.replay_window) == ("normal", "pause", 64)
    assert (cfg.pipeline.queue_size, cfg.pipeline.batch_max) == (20_000, 256)
    assert cfg.log.level == "info"


def test_an_empty_config_loads_to_the_dataclass_defaults(tmp_path: Path) -> None:
    cfg = load(tmp_path, MINIMAL)
    data = tmp_path / "data"
    mqtt5 = replace(LOCAL_BROKER, protocol=5)  # forwarding and oracle answer on the local broker
    assert cfg == AgentConfig(
        path=tmp_path / "agent.toml",
        gateway=GatewayConfig(key_file=tmp_path / "gateway.key", data_dir=data),
        journal=JournalConfig(path=data / "journal.sqlite"),
        enrollment=EnrollmentConfig(registry_dir=data / "devices"),
        chain=ChainConfig(store=data / "chain.sqlite"),
        election=ElectionConfig(store=data / "election.sqlite"),
        forward=ForwardConfig(mqtt=mqtt5),
        oracle=OracleConfig(mqtt=mqtt5),
        homeassistant=HomeAssistantConfig(mqtt=LOCAL_BROKER),
        downlink=DownlinkConfig(mqtt=mqtt5, store=data / "downlink.sqlite"),
    )
    # Every source shares the frame codec's own limits.
    for source in (cfg.sources.mqtt, cfg.sources.coap, cfg.sources.ble):
        assert source.max_payload == DEFAULT_MAX_BYTES
    for limited in (cfg.sources.mqtt, cfg.sources.coap, cfg.sources.ble, cfg.sources.serial):
        assert limited.max_values_per_frame == DEFAULT_MAX_VALUES


def test_the_shipped_example_writes_the_defaults_except_its_development_allowlist(
    tmp_path: Path,
) -> None:
    example = load_config(EXAMPLE)
    defaults = config_from_dict(
        {"gateway": {"key_file": "gateway.key"}}, str(EXAMPLE), EXAMPLE.resolve().parent
    )
    # a generated or installed config allowlists no one
    assert example.sources.mqtt.allowed_devices == ()
    mqtt = replace(example.sources.mqtt, allowed_devices=())
    assert replace(example, sources=replace(example.sources, mqtt=mqtt)) == defaults


# Reader calls whose default is a literal on purpose: (module, key) -> why.
_LITERAL_DEFAULTS = {
    ("sources/coap.py", "reregister_after"): "read only when present; the default is None",
    ("broker.py", "protocol"): 'the TOML spells the protocol "3.1.1" / "5", the field 4 / 5',
}
_GETTERS = {"int_range", "choice", "size", "duration", "str_list", "device_ids", "checked", "path"}


def _literal_defaults() -> list[tuple[str, str]]:
    """(module, key) of each Section getter called with a literal default in agent/config."""
    package = Path(agent.config.__file__).parent
    found = []
    for module in sorted(package.rglob("*.py")):
        tree = ast.parse(module.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            name = node.func.attr
            position = 2 if name == "get" else 1 if name in _GETTERS else None
            if position is None or len(node.args) <= position:
                continue
            key, default = node.args[0], node.args[position]
            if (
                isinstance(key, ast.Constant)
                and isinstance(default, ast.Constant)
                and default.value is not None
            ):
                found.append((module.relative_to(package).as_posix(), str(key.value)))
    return found


def test_readers_take_their_defaults_from_the_dataclasses() -> None:
    found = _literal_defaults()
    assert set(found) - set(_LITERAL_DEFAULTS) == set(), "write the default on the field"
    assert set(_LITERAL_DEFAULTS) <= set(found)  # the allowlist names real calls
