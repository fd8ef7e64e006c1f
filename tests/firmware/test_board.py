"""The firmware's config.json loading and its BLE link: a bundle written by the real `pair`
is accepted, mistakes name the key, and BTHome advertisements decrypt with the bindkey."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from Crypto.Cipher import AES
from edgence import board, bthome, config
from edgence.app import Node
from edgence.counter import BlockCounter
from edgence.outbox import Outbox

from agent.cli.pair import build_bundle
from agent.config import config_from_dict
from agent.devices.registry import DeviceRegistry
from agent.model import Transport
from tests.integration.conftest import agent_config_dict


class Broker:
    url = "mqtt://127.0.0.1:1883"


def test_a_bundle_from_the_agents_pairing_loads(tmp_path: Path) -> None:
    cfg = config_from_dict(
        agent_config_dict(Broker(), Broker()),  # type: ignore[arg-type]
        str(tmp_path / "agent.toml"),
        tmp_path,
    )
    reg = DeviceRegistry(tmp_path / "devices")
    rec, key = reg.enroll("dev-9", transport=Transport.MQTT, sensors=[("t", "Cel")])
    bundle = build_bundle(cfg, rec, key, counter_start=7, mqtt_password="pw", host="10.0.0.2")
    c = config.parse(json.dumps(bundle))
    assert (c.device_id, c.key, c.counter_start) == ("dev-9", key, 7)
    assert c.mqtt["host"] == "10.0.0.2" and c.mqtt["password"] == "pw"
    assert c.firmware == config.DEFAULTS


GOOD = {
    "edgence": 1,
    "device_id": "d",
    "transport": "mqtt",
    "key": "ab" * 32,
    "counter_start": 0,
    "mqtt": {"host": "h", "port": 1883, "topic": "devices/d/up"},
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"edgence": 2}, "edgence must be 1"),
        ({"key": "ab" * 31}, "key must be 64 hex digits"),
        ({"key": "zz" * 32}, "key must be 64 hex digits"),
        ({"counter_start": "0"}, "counter_start has the wrong type"),
        ({"transport": "coap"}, "section coap is missing"),
        ({"mqtt": {"host": "h", "port": 1883}}, "mqtt.topic missing"),
        ({"device_id": "a b"}, "device_id 'a b'"),
        ({"firmware": {"intervall_s": 5}}, "firmware.intervall_s is not a setting"),
        ({"firmware": {"interval_s": 0}}, "firmware.interval_s must be a positive number"),
    ],
)
def test_config_mistakes_name_the_key(change: dict[str, Any], message: str) -> None:
    with pytest.raises((config.ConfigError, ValueError), match=message):
        config.parse(json.dumps(GOOD | change))


def test_a_missing_config_says_how_to_provision(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="pair --serial"):
        config.load(str(tmp_path / "config.json"))


class Radio:
    """Stands in for MicroPython's bluetooth.BLE (no radio here): keeps what is advertised."""

    def __init__(self) -> None:
        self.adverts: list[bytes] = []

    def active(self, on: bool) -> None:
        pass

    def config(self, name: str) -> tuple[int, bytes]:
        return (0, bytes.fromhex("5448e68f80a5"))

    def gap_advertise(self, interval_us: int, adv_data: bytes) -> None:
        self.adverts.append(adv_data)


def counter_at(flash: Path, n: int) -> Any:
    flash.mkdir(exist_ok=True)
    return BlockCounter(str(flash), n, 16)


def test_ble_link_sends_bthome_adverts_that_decrypt_with_the_bindkey(tmp_path: Path) -> None:
    bindkey = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
    cfg: Any = SimpleNamespace(device_id="b1", key=bindkey, key_kind="bthome")
    radio = Radio()
    link = board.BleLink(cfg, ble=radio)
    (adv,) = link.encode(
        counter_at(tmp_path, 0x33221100),
        [("temperature", 2506, -2, "Cel"), ("humidity", 5055, -2, "%")],
    )
    assert link.send(adv) and radio.adverts == [adv]
    sd = adv[3:]
    assert sd[1:4] == b"\x16\xd2\xfc" and sd[4] == 0x41
    payload = sd[5:]
    ct, ctr, mic = payload[:-8], payload[-8:-4], payload[-4:]
    nonce = bytes.fromhex("5448e68f80a5") + b"\xd2\xfc\x41" + ctr
    plain = AES.new(bindkey, AES.MODE_CCM, nonce=nonce, mac_len=4).decrypt_and_verify(ct, mic)
    assert plain == bytes.fromhex("02ca0903bf13") and ctr == bytes.fromhex("00112233")


def test_ble_link_without_bindkey_sends_plain_adverts_with_packet_id(tmp_path: Path) -> None:
    cfg: Any = SimpleNamespace(device_id="b1", key=bytes(32), key_kind="hmac")
    (adv,) = board.BleLink(cfg, ble=Radio()).encode(
        counter_at(tmp_path, 300), [("voltage", 3012, -3, "V")]
    )
    assert adv[3:13] == bytes.fromhex("09" + "16d2fc40" + "002c" + "0cc40b")


def test_the_agents_bthome_codec_reads_the_firmwares_adverts(tmp_path: Path) -> None:
    codec = pytest.importorskip(
        "agent.devices.codecs.bthome", reason="the agent's BTHome codec (BLE branch) not merged"
    )
    bindkey = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
    mac = bytes.fromhex("5448e68f80a5")
    readings = [("temperature", -1234, -2, "Cel"), ("humidity", 45678, -3, "%")]
    for key_kind, key in (("bthome", bindkey), ("hmac", bytes(32))):
        cfg: Any = SimpleNamespace(device_id="b1", key=key, key_kind=key_kind)
        (adv,) = board.BleLink(cfg, ble=Radio()).encode(
            counter_at(tmp_path / key_kind, 77), readings
        )
        service_data = adv[3 + 4 : 3 + 1 + adv[3]]  # after flags, length, 0x16 and the UUID
        p = codec.parse_bthome(service_data, mac=mac, bindkey=bindkey)
        got = {v.name: (v.value, v.exponent, v.unit) for v in p.values}
        assert got["temperature"] == (-1234, -2, "Cel")
        assert got["humidity"] == (4568, -2, "%")  # BTHome's 0.01 % steps, rounded
        assert (p.counter if p.encrypted else p.packet_id) == 77


FOUR = [
    ("temperature", 2137, -2, "Cel"),
    ("humidity", 45500, -3, "%"),
    ("pressure", 101325, -2, "hPa"),
    ("battery", 3700, -3, "V"),
]


@pytest.mark.parametrize("device_id", ["dev-0001", "d" * 32])
@pytest.mark.parametrize("readings", [FOUR, FOUR + [("t2", 1, 0, "Cel"), ("h2", 2, 0, "%")] * 3])
@pytest.mark.parametrize("key_kind", ["hmac", "bthome"])
def test_bthome_adverts_always_fit_31_bytes_and_carry_every_reading(
    tmp_path: Path, device_id: str, readings: list[Any], key_kind: str
) -> None:
    bindkey = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
    key = bindkey if key_kind == "bthome" else bytes(32)
    cfg: Any = SimpleNamespace(device_id=device_id, key=key, key_kind=key_kind)
    counter = counter_at(tmp_path, 5)
    adverts = board.BleLink(cfg, ble=Radio()).encode(counter, readings)
    assert all(len(a) <= 31 for a in adverts)
    assert len(adverts) == counter.peek() - 5  # one counter (packet id) per advert
    objects = b""
    for adv in adverts:
        sd = adv[3 : 4 + adv[3]]
        if key_kind == "bthome":
            payload = sd[5:]
            ct, ctr, mic = payload[:-8], payload[-8:-4], payload[-4:]
            nonce = bytes.fromhex("5448e68f80a5") + b"\xd2\xfc\x41" + ctr
            objects += AES.new(bindkey, AES.MODE_CCM, nonce=nonce, mac_len=4).decrypt_and_verify(
                ct, mic
            )
        else:
            assert sd[5] == 0x00  # each advert its own packet id
            objects += sd[7:]
            name = adv[4 + adv[3] :]
            # The name only where it fits: 8 characters fit beside few objects, 32 never do.
            assert name in (b"", bytes((len(device_id) + 1, 0x09)) + device_id.encode())
    expected = b"".join(bthome.encoded_objects(readings))
    assert sorted(objects) == sorted(expected)  # every reading's object, in some advert


def test_the_plain_advert_from_the_issue_drops_the_name_instead_of_overflowing(
    tmp_path: Path,
) -> None:
    cfg: Any = SimpleNamespace(device_id="dev-0001", key=bytes(32), key_kind="hmac")
    (adv,) = board.BleLink(cfg, ble=Radio()).encode(counter_at(tmp_path, 1), FOUR)
    assert len(adv) == 23 and b"dev-0001" not in adv  # 33 bytes with the name
    assert bthome.advertisement(b"\x02\xca\x09", name="dev-0001").endswith(b"\x09dev-0001")


class Sensors:
    def __init__(self, readings: list[Any]) -> None:
        self.readings = readings

    def read(self) -> list[Any]:
        return list(self.readings)


class Kept:
    """The link's far end: keeps what it was sent (a serial line that takes everything)."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def send(self, frame: bytes) -> bool:
        self.frames.append(frame)
        return True


def test_encoder_errors_are_caught_by_the_loop_counted_and_reported_in_the_next_frame(
    tmp_path: Path,
) -> None:
    from agent.devices.auth import mac_matches
    from agent.devices.codecs.frame import parse_frame

    cfg = config.parse(json.dumps(GOOD))
    sensors = Sensors([("temperature", 1 << 300, 0, "Cel")])  # no frame can carry this value
    link = Kept()
    node = Node(cfg, link, [sensors], counter_at(tmp_path, 0), Outbox(None, 4), clock=lambda: None)
    assert node.step() is True and node.encode_errors == 1 and link.frames == []
    sensors.readings = [("temperature", 2100, -2, "Cel")]
    node.step()
    node.step()
    first, second = (parse_frame(f) for f in link.frames)
    assert mac_matches(cfg.key, "d", first) and mac_matches(cfg.key, "d", second)
    assert [(v.sensor, v.value, v.unit) for v in first.values][1:] == [
        ("encode_errors", 1, "{error}")
    ]
    assert len(second.values) == 1  # heard once: not repeated


def test_ble_encoder_errors_are_counted_not_raised(tmp_path: Path) -> None:
    cfg = config.parse(json.dumps(GOOD | {"transport": "ble", "ble": {"mac": "00:00:00:00:00:01"}}))
    radio = Radio()
    node = Node(
        cfg,
        board.BleLink(cfg, ble=radio),
        [Sensors([("co2", 400, 0, "ppm")])],  # no BTHome object for ppm in this encoder
        counter_at(tmp_path, 0),
        Outbox(None, 4),
        clock=lambda: None,
    )
    node.step()
    node.step()
    assert node.encode_errors == 2 and radio.adverts == []
