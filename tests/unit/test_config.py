"""The TOML config: the shipped example loads, defaults, relative paths, sizes and durations,
and every refusal is a ConfigError naming the file, the dotted key and what is allowed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from agent.config import AgentConfig, load_config
from agent.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "agent" / "resources" / "agent.example.toml"
EXAMPLE_LINK = ROOT / "configs" / "agent.example.toml"
MINIMAL = '[gateway]\nkey_file = "gateway.key"\n'


def write(directory: Path, text: str, name: str = "agent.toml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, text: str) -> AgentConfig:
    return load_config(write(tmp_path, text))


def refusal(tmp_path: Path, text: str) -> tuple[Path, str]:
    """The config file written and the message of the ConfigError loading it raises."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.file == str(path)
    return path, str(info.value)


# --- the shipped example --------------------------------------------------------------------


def test_shipped_example_loads_with_its_relative_key_file_beside_it() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.gateway.key_file == EXAMPLE.parent / "gateway.key"
    assert cfg.gateway.data_dir == EXAMPLE.parent / "data"
    assert cfg.mqtt.allowed_devices == ("sim-1",)
    assert cfg.journal.max_bytes == 256 * 2**20
    assert cfg.journal.max_age_s == 7 * 86400.0


def test_configs_example_is_the_same_file_as_the_packaged_example() -> None:
    assert EXAMPLE_LINK.is_symlink()
    assert os.path.samefile(EXAMPLE_LINK, EXAMPLE)
    linked = load_config(EXAMPLE_LINK)
    assert linked.gateway == load_config(EXAMPLE).gateway


def test_example_copied_elsewhere_resolves_the_key_beside_the_copy(tmp_path: Path) -> None:
    copy = tmp_path / "etc" / "agent.toml"
    copy.parent.mkdir()
    shutil.copyfile(EXAMPLE, copy)
    cfg = load_config(copy)
    assert cfg.path == copy
    assert cfg.gateway.key_file == copy.parent / "gateway.key"
    assert cfg.journal.path == copy.parent / "data" / "journal.sqlite"


# --- defaults and paths ---------------------------------------------------------------------


def test_only_gateway_key_file_is_required_and_everything_else_has_defaults(
    tmp_path: Path,
) -> None:
    cfg = load(tmp_path, MINIMAL)
    g = cfg.gateway
    assert (g.data_dir, g.passphrase_file, g.chain_id) == (tmp_path / "data", None, 31337)
    assert g.verifying_contract == "0x" + "00" * 20
    assert (g.domain_name, g.domain_version, g.feeds) == ("Edgence", "2", ())
    m = cfg.mqtt
    assert m.enabled and m.broker.url == "mqtt://127.0.0.1:1883" and m.broker.protocol == 4
    assert (m.topics, m.qos, m.max_payload, m.max_values_per_frame) == (
        ("devices/+/up",),
        1,
        4096,
        16,
    )
    assert m.allowed_devices == ()
    b = cfg.bridge
    assert b.enabled and b.broker.url == "mqtt://127.0.0.1:1884"
    assert (b.topic_prefix, b.inflight, b.batch, b.broker.keepalive) == ("edgence", 256, 512, 30)
    j = cfg.journal
    assert j.path == tmp_path / "data" / "journal.sqlite"
    assert (j.max_bytes, j.max_age_s) == (256 * 2**20, 7 * 86400.0)
    assert (j.synchronous, j.overflow) == ("normal", "drop-oldest")
    assert (cfg.pipeline.queue_size, cfg.pipeline.batch_max) == (20_000, 256)
    assert cfg.log.level == "info"


def test_relative_paths_resolve_against_the_config_directory_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    conf_dir = tmp_path / "conf"
    path = write(
        conf_dir,
        '[gateway]\nkey_file = "keys/gw.key"\npassphrase_file = "gw.pass"\ndata_dir = "var"\n'
        '[bridge]\nurl = "mqtts://up.example"\nca_file = "ca.pem"\n',
    )
    cfg = load_config(path)
    assert cfg.gateway.key_file == conf_dir / "keys" / "gw.key"
    assert cfg.gateway.passphrase_file == conf_dir / "gw.pass"
    assert cfg.gateway.data_dir == conf_dir / "var"
    assert cfg.journal.path == conf_dir / "var" / "journal.sqlite"
    assert cfg.bridge.broker.ca_file == conf_dir / "ca.pem"


def test_relative_config_path_resolves_against_its_own_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "sub", MINIMAL)
    monkeypatch.chdir(tmp_path)
    cfg = load_config("sub/agent.toml")
    assert cfg.gateway.key_file == tmp_path.resolve() / "sub" / "gateway.key"
    assert cfg.gateway.key_file.is_absolute()


def test_absolute_and_home_paths_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg = load(
        tmp_path,
        '[gateway]\nkey_file = "/srv/gw.key"\ndata_dir = "~/edgence"\n'
        '[journal]\npath = "/var/lib/j.sqlite"\n',
    )
    assert cfg.gateway.key_file == Path("/srv/gw.key")
    assert cfg.gateway.data_dir == tmp_path / "home" / "edgence"
    assert cfg.journal.path == Path("/var/lib/j.sqlite")


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


# --- sizes and durations --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('"256 MiB"', 256 * 2**20),
        ("1024", 1024),
        ('"1024"', 1024),
        ('"1GiB"', 2**30),
        ('"10 KB"', 10_000),
        ('"3 MB"', 3_000_000),
        ('"4 KiB"', 4096),
        ('"5 B"', 5),
    ],
)
def test_size_accepts_bytes_or_a_number_with_a_unit(
    tmp_path: Path, toml: str, expected: int
) -> None:
    assert (
        load(tmp_path, MINIMAL + f"[journal]\nmax_bytes = {toml}\n").journal.max_bytes == expected
    )


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('"7d"', 7 * 86400.0),
        ('"12h"', 43_200.0),
        ("3600", 3600.0),
        ("0.5", 0.5),
        ('"90m"', 5400.0),
        ('"1.5h"', 5400.0),
        ('"30s"', 30.0),
        ('"250ms"', 0.25),
        ('"45"', 45.0),
    ],
)
def test_duration_accepts_seconds_or_a_number_with_a_unit(
    tmp_path: Path, toml: str, expected: float
) -> None:
    cfg = load(tmp_path, MINIMAL + f"[journal]\nmax_age = {toml}\n")
    assert cfg.journal.max_age_s == pytest.approx(expected)


@pytest.mark.parametrize(
    "toml", ['"256 MB/s"', '"1.5 GiB"', '"lots"', '"-1"', '"0 MiB"', "0", "-5", "true", "1.5"]
)
def test_bad_size_is_refused_naming_the_key_and_an_example(tmp_path: Path, toml: str) -> None:
    path, message = refusal(tmp_path, MINIMAL + f"[journal]\nmax_bytes = {toml}\n")
    assert str(path) in message
    assert "[journal.max_bytes]" in message
    assert '"256 MiB"' in message


@pytest.mark.parametrize("toml", ['"7 days"', '"1w"', '""', '"0"', "0", "-5", "false"])
def test_bad_duration_is_refused_naming_the_key_and_an_example(tmp_path: Path, toml: str) -> None:
    path, message = refusal(tmp_path, MINIMAL + f"[journal]\nmax_age = {toml}\n")
    assert str(path) in message
    assert "[journal.max_age]" in message
    assert '"7d"' in message


# --- refusals -------------------------------------------------------------------------------


def test_missing_file_names_the_file_and_how_to_create_one(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "not found" in str(info.value)
    assert "edgence-agent init" in str(info.value)


def test_invalid_toml_names_the_file_and_the_parse_error(tmp_path: Path) -> None:
    path, message = refusal(tmp_path, '[gateway]\nkey_file = "unterminated\n')
    assert str(path) in message
    assert "is not valid TOML" in message
    assert "line 2" in message


def test_non_utf8_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_bytes(b'[gateway]\nkey_file = "\xff"\n')
    with pytest.raises(ConfigError, match="UTF-8") as info:
        load_config(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("text", ["", "[gateway]\n", "[sources.mqtt]\nqos = 1\n"])
def test_missing_gateway_key_file_is_refused(tmp_path: Path, text: str) -> None:
    path, message = refusal(tmp_path, text)
    assert str(path) in message
    assert "[gateway.key_file] is required (a string)" in message


@pytest.mark.parametrize(
    ("text", "key", "allowed"),
    [
        ("[gateway]\nkey_file = 5\n", "gateway.key_file", "must be a string, got int 5"),
        (MINIMAL + 'chain_id = "1"\n', "gateway.chain_id", "must be an integer, got str '1'"),
        (
            MINIMAL + "[sources.mqtt]\nenabled = 'yes'\n",
            "sources.mqtt.enabled",
            "must be true or false",
        ),
        (MINIMAL + "[sources.mqtt]\nqos = true\n", "sources.mqtt.qos", "must be an integer"),
        (
            MINIMAL + '[sources.mqtt]\ntopics = "devices/+/up"\n',
            "sources.mqtt.topics",
            "must be a list",
        ),
        (
            MINIMAL + "[sources.mqtt]\nallowed_devices = [1]\n",
            "sources.mqtt.allowed_devices",
            "must be a list of strings",
        ),
        (MINIMAL + "[bridge]\ninflight = 1.5\n", "bridge.inflight", "must be an integer"),
        ("gateway = 5\n", "gateway", "must be a table"),
        (MINIMAL + "[sources]\nmqtt = 1\n", "sources.mqtt", "must be a table"),
    ],
)
def test_wrong_type_is_refused_naming_the_key_and_the_expected_type(
    tmp_path: Path, text: str, key: str, allowed: str
) -> None:
    path, message = refusal(tmp_path, text)
    assert str(path) in message
    assert f"[{key}]" in message
    assert allowed in message


@pytest.mark.parametrize(
    ("text", "key", "allowed"),
    [
        (MINIMAL + 'key_fle = "x"\n', "gateway.key_fle", "key_file"),
        (MINIMAL + "[sources.mqtt]\nqoss = 1\n", "sources.mqtt.qoss", "qos"),
        (MINIMAL + "[sources.lora]\nport = 5683\n", "sources.lora", "coap"),
        (MINIMAL + "[journal]\nmax_size = 1\n", "journal.max_size", "max_bytes"),
    ],
)
def test_unknown_key_in_a_section_is_refused_listing_the_allowed_keys(
    tmp_path: Path, text: str, key: str, allowed: str
) -> None:
    path, message = refusal(tmp_path, text)
    assert str(path) in message
    assert f"[{key}] is not a known key; allowed here:" in message
    assert allowed in message.split("allowed here:")[1]


@pytest.mark.parametrize(
    "text", [MINIMAL + "[no_such_table]\nport = 9000\n", "debug = true\n" + MINIMAL]
)
def test_unknown_top_level_entry_is_refused_listing_the_known_tables(
    tmp_path: Path, text: str
) -> None:
    path, message = refusal(tmp_path, text)
    assert str(path) in message
    key = "no_such_table" if "[no_such_table]" in text else "debug"
    assert f"[{key}] is not a known key" in message
    listed = message.split("allowed here: ")[1].split(", ")
    assert listed == sorted(listed)
    assert {
        "bridge",
        "chain",
        "election",
        "enrollment",
        "forward",
        "gateway",
        "journal",
        "log",
        "metrics",
        "pipeline",
        "sources",
    } <= set(listed)


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


@pytest.mark.parametrize(
    "topic", ["devices/up", "devices/#", "devices/+/+", "devices/a+/up", "devices/+/#"]
)
def test_topic_without_exactly_one_plus_level_is_refused(tmp_path: Path, topic: str) -> None:
    path, message = refusal(tmp_path, MINIMAL + f'[sources.mqtt]\ntopics = ["{topic}"]\n')
    assert str(path) in message
    assert "[sources.mqtt.topics]" in message
    assert "exactly one '+' level" in message
    assert repr(topic) in message


@pytest.mark.parametrize("device", ["sim 1", "a/b", "", "x" * 33, "dev+"])
def test_bad_allowed_device_id_is_refused(tmp_path: Path, device: str) -> None:
    text = MINIMAL + f'[sources.mqtt]\nallowed_devices = ["ok-1", "{device}"]\n'
    path, message = refusal(tmp_path, text)
    assert str(path) in message
    assert "[sources.mqtt.allowed_devices]" in message
    assert "A-Z a-z 0-9 _ . : -" in message


def test_allowed_device_id_with_trailing_newline_is_refused(tmp_path: Path) -> None:
    refusal(tmp_path, MINIMAL + '[sources.mqtt]\nallowed_devices = ["sim-1\\n"]\n')


@pytest.mark.parametrize(
    "contract", ["0x123", "0x" + "g" * 40, "00" * 20 + "0000", "0x" + "0" * 41]
)
def test_bad_verifying_contract_is_refused(tmp_path: Path, contract: str) -> None:
    path, message = refusal(tmp_path, MINIMAL + f'verifying_contract = "{contract}"\n')
    assert str(path) in message
    assert "[gateway.verifying_contract] must be 0x followed by 40 hex digits" in message


@pytest.mark.parametrize(
    ("text", "key", "bounds"),
    [
        (MINIMAL + "[sources.mqtt]\nqos = 2\n", "sources.mqtt.qos", "between 0 and 1, got 2"),
        (MINIMAL + "[sources.mqtt]\nqos = -1\n", "sources.mqtt.qos", "between 0 and 1, got -1"),
        (MINIMAL + "[bridge]\ninflight = 0\n", "bridge.inflight", "between 1 and 65000, got 0"),
        (MINIMAL + "[bridge]\nkeepalive = 4\n", "bridge.keepalive", "between 5 and 3600, got 4"),
        (MINIMAL + "[pipeline]\nqueue_size = 15\n", "pipeline.queue_size", "between 16 and"),
        (MINIMAL + "chain_id = 0\n", "gateway.chain_id", "between 1 and"),
    ],
)
def test_integer_out_of_range_is_refused_with_its_bounds(
    tmp_path: Path, text: str, key: str, bounds: str
) -> None:
    path, message = refusal(tmp_path, text)
    assert str(path) in message
    assert f"[{key}] must be {bounds}" in message


@pytest.mark.parametrize(
    ("text", "key", "allowed"),
    [
        ('[journal]\noverflow = "drop-newest"\n', "journal.overflow", "drop-oldest, reject-new"),
        ('[journal]\nsynchronous = "off"\n', "journal.synchronous", "normal, full"),
        ('[log]\nlevel = "trace"\n', "log.level", "debug, info, warning, error"),
        ('[bridge]\nprotocol = "5.0"\n', "bridge.protocol", "3.1.1, 5"),
    ],
)
def test_value_outside_its_choices_is_refused_listing_them(
    tmp_path: Path, text: str, key: str, allowed: str
) -> None:
    path, message = refusal(tmp_path, MINIMAL + text)
    assert str(path) in message
    assert f"[{key}] must be one of {allowed}" in message


@pytest.mark.parametrize("prefix", ["", "a/+", "#", "/edgence", "edgence/"])
def test_bad_bridge_topic_prefix_is_refused(tmp_path: Path, prefix: str) -> None:
    path, message = refusal(tmp_path, MINIMAL + f'[bridge]\ntopic_prefix = "{prefix}"\n')
    assert str(path) in message
    assert (
        "[bridge.topic_prefix] must be a topic prefix without + # or leading/trailing /" in message
    )


# --- feeds ----------------------------------------------------------------------------------


def test_gateway_feeds_assign_device_sensors_to_named_feeds(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        MINIMAL
        + '[gateway.feeds]\n"dev-1/temp" = "greenhouse-1 air"\n"dev-2/temp" = "0x'
        + "ab" * 32
        + '"\n',
    )
    assert cfg.gateway.feeds == (
        ("dev-1/temp", "greenhouse-1 air"),
        ("dev-2/temp", "0x" + "ab" * 32),
    )


@pytest.mark.parametrize(
    ("line", "key", "why"),
    [
        ('"dev-1" = "x"', "gateway.feeds.dev-1", 'must be "device/sensor"'),
        ('"dev-1/t emp" = "x"', "gateway.feeds.dev-1/t emp", 'must be "device/sensor"'),
        ('"dev-1/temp" = 5', "gateway.feeds.dev-1/temp", "must be a feed name"),
        ('"dev-1/temp" = ""', "gateway.feeds.dev-1/temp", "1-64 printable ASCII"),
    ],
)
def test_bad_feed_assignment_names_the_key_and_what_is_allowed(
    tmp_path: Path, line: str, key: str, why: str
) -> None:
    path, message = refusal(tmp_path, MINIMAL + "[gateway.feeds]\n" + line + "\n")
    assert key in message and why in message and str(path) in message
