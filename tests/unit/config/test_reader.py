"""The typed section reader (agent/config/reader.py): paths, sizes, durations, types, ranges,
choices and unknown keys, each refusal naming the file, the dotted key and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load_config
from tests.unit.config.helpers import MINIMAL, load, refusal, write


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
    ("text", "key", "bounds"),
    [
        (MINIMAL + "[sources.mqtt]\nqos = 2\n", "sources.mqtt.qos", "between 0 and 1, got 2"),
        (MINIMAL + "[sources.mqtt]\nqos = -1\n", "sources.mqtt.qos", "between 0 and 1, got -1"),
        (MINIMAL + "[bridge]\ninflight = 0\n", "bridge.inflight", "between 1 and 65000, got 0"),
        (MINIMAL + "[bridge]\nkeepalive = 4\n", "bridge.keepalive", "between 5 and 3600, got 4"),
        (
            MINIMAL + "[bridge]\nenvelopes_per_message = 257\n",
            "bridge.envelopes_per_message",
            "between 1 and 256, got 257",
        ),
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
        (
            '[journal]\noverflow = "drop-newest"\n',
            "journal.overflow",
            "pause, drop-oldest, reject-new",
        ),
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


@pytest.mark.parametrize("size", [0, 4097])
def test_a_replay_window_outside_1_to_4096_is_refused_naming_key_and_file(
    tmp_path: Path, size: int
) -> None:
    path, message = refusal(tmp_path, MINIMAL + f"[journal]\nreplay_window = {size}\n")
    assert str(path) in message
    assert f"[journal.replay_window] must be between 1 and 4096, got {size}" in message


def test_the_replay_window_is_read_from_the_journal_section(tmp_path: Path) -> None:
    assert (
        load(tmp_path, MINIMAL + "[journal]\nreplay_window = 1024\n").journal.replay_window == 1024
    )
