"""[sources.coap] (agent/config/sources/coap.py): defaults, observed devices as an array of
tables, and errors that name the file and the dotted key (with the entry's index)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.config.helpers import MINIMAL, load, refusal


def test_coap_is_off_unless_configured(tmp_path: Path) -> None:
    c = load(tmp_path, MINIMAL).sources.coap
    assert not c.enabled and c.port == 5683 and c.observe == ()


def test_a_full_coap_configuration_is_read(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        MINIMAL
        + """
[sources.coap]
enabled = true
bind = "127.0.0.1"
port = 5700
allowed_devices = ["c-1"]
oscore_dir = "oscore"
busy_max_age = 5
[[sources.coap.observe]]
device = "o-1"
uri = "coap://192.0.2.7/sensor"
timeout = "3s"
reregister_after = "90s"
""",
    )
    c = cfg.sources.coap
    assert (c.enabled, c.bind, c.port, c.allowed_devices, c.busy_max_age) == (
        True,
        "127.0.0.1",
        5700,
        ("c-1",),
        5,
    )
    assert c.oscore_dir == tmp_path / "oscore"
    (o,) = c.observe
    assert (o.device, o.uri, o.timeout_s, o.reregister_s) == (
        "o-1",
        "coap://192.0.2.7/sensor",
        3.0,
        90.0,
    )


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("[sources.coap]\nport = 0\n", "sources.coap.port", "between 1 and 65535"),
        ("[sources.coap]\nallowed_devices = ['a b']\n", "sources.coap.allowed_devices", "1-32"),
        ("[sources.coap]\nbind_addr = 'x'\n", "sources.coap.bind_addr", "not a known key"),
        (
            "[[sources.coap.observe]]\ndevice = 'o-1'\nuri = 'http://x/y'\n",
            "sources.coap.observe[0].uri",
            "coap://HOST",
        ),
        (
            "[[sources.coap.observe]]\nuri = 'coap://x/y'\n",
            "sources.coap.observe[0].device",
            "required",
        ),
        (
            "[[sources.coap.observe]]\ndevice='a'\nuri='coap://x/1'\n"
            "[[sources.coap.observe]]\ndevice='a'\nuri='coap://x/2'\n",
            "sources.coap.observe",
            "observed once",
        ),
        ("[sources.coap]\nobserve = 'x'\n", "sources.coap.observe", "array of tables"),
    ],
)
def test_bad_coap_settings_name_the_file_and_the_key(
    tmp_path: Path, text: str, key: str, words: str
) -> None:
    path, msg = refusal(tmp_path, MINIMAL + text)
    assert str(path) in msg and f"[{key}]" in msg and words in msg, msg
