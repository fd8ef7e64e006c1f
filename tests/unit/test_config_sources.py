"""Config of the CoAP and serial sources: defaults, arrays of tables, and errors that name the
file and the dotted key (with the entry's index)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load_config
from agent.errors import ConfigError

MINIMAL = '[gateway]\nkey_file = "gateway.key"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(MINIMAL + text, encoding="utf-8")
    return path


def test_coap_and_serial_are_off_unless_configured(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ""))
    assert not cfg.coap.enabled and cfg.coap.port == 5683 and cfg.coap.observe == ()
    assert cfg.serial.ports == ()


def test_a_full_coap_and_serial_configuration_is_read(tmp_path: Path) -> None:
    cfg = load_config(
        write(
            tmp_path,
            """
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
[[sources.serial.ports]]
path = "/dev/serial/by-id/usb-gps"
baud = 9600
framing = "7E2"
gps_device = "gps-1"
[[sources.serial.ports]]
path = "ttyACM0"
device = "s-1"
allowed_devices = ["s-2"]
""",
        )
    )
    c = cfg.coap
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
    gps, acm = cfg.serial.ports
    assert (gps.baud, gps.bytesize, gps.parity, gps.stopbits, gps.gps_device) == (
        9600,
        7,
        "E",
        2,
        "gps-1",
    )
    assert acm.path == tmp_path / "ttyACM0" and acm.baud == 115200
    assert cfg.serial.allowed_devices == {"gps-1", "s-1", "s-2"}


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
        ("[[sources.serial.ports]]\nbaud = 9600\n", "sources.serial.ports[0].path", "required"),
        (
            "[[sources.serial.ports]]\npath = 'a'\nframing = '8X1'\n",
            "sources.serial.ports[0].framing",
            "8N1",
        ),
        (
            "[[sources.serial.ports]]\npath = 'a'\n[[sources.serial.ports]]\npath = 'a'\n",
            "sources.serial.ports",
            "one path twice",
        ),
        (
            "[[sources.serial.ports]]\npath = 'a'\ngps_device = 'no/slash'\n",
            "sources.serial.ports[0].gps_device",
            "device id",
        ),
        (
            "[[sources.serial.ports]]\npath = 'a'\nspeed = 9600\n",
            "sources.serial.ports[0].speed",
            "allowed here: ",
        ),
    ],
)
def test_bad_source_settings_name_the_file_and_the_key(
    tmp_path: Path, text: str, key: str, words: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert str(path) in msg and f"[{key}]" in msg and words in msg, msg


def test_coap_source_and_coap_forwarding_on_one_port_are_refused(tmp_path: Path) -> None:
    forward = '[forward]\nenabled = true\n[forward.coap]\nenabled = true\nbind = "127.0.0.1:5683"\n'
    path = write(tmp_path, "[sources.coap]\nenabled = true\n" + forward)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert "[forward.coap.bind]" in msg and "[sources.coap]" in msg and "own port" in msg
    cfg = load_config(write(tmp_path, "[sources.coap]\nenabled = true\nport = 5700\n" + forward))
    assert (cfg.coap.port, cfg.forward.coap_port) == (5700, 5683)


def test_oracle_coap_server_may_not_share_the_sources_port(tmp_path: Path) -> None:
    oracle = '[oracle]\nenabled = true\n[oracle.coap]\nenabled = true\nbind = "0.0.0.0:5683"\n'
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "[sources.coap]\nenabled = true\n" + oracle))
    assert "[oracle.coap.bind]" in str(info.value) and "UDP port 5683" in str(info.value)
    cfg = load_config(write(tmp_path, "[sources.coap]\nenabled = true\nport = 5700\n" + oracle))
    assert (cfg.coap.port, cfg.oracle.coap_port) == (5700, 5683)
