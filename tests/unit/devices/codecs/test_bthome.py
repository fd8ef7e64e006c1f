"""The BTHome v2 codec from raw service-data bytes: known answers from the BTHome specification
(bthome.io format and encryption pages) and from independent decoders, round trips through the
encoder, and malformed input."""

from __future__ import annotations

import pytest

from agent.devices.codecs.bthome import (
    BTHomePacket,
    encode_bthome,
    encode_objects,
    mac_bytes,
    parse_bthome,
)
from agent.devices.codecs.bthome_objects import OBJECT_TYPES
from agent.errors import FrameError

# The bthome.io encryption example: bindkey, MAC, plaintext 02ca0903bf13 (25.06 Cel, 50.55 %).
KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
MAC = mac_bytes("54:48:E6:8F:80:A5")


def values(p: BTHomePacket) -> dict[str, tuple[int, int, str]]:
    return {v.name: (v.value, v.exponent, v.unit) for v in p.values}


def test_spec_plain_temperature_and_humidity() -> None:
    p = parse_bthome(bytes.fromhex("4002ca0903bf13"))
    assert not p.encrypted and p.counter is None and p.packet_id is None
    assert values(p) == {"temperature": (2506, -2, "Cel"), "humidity": (5055, -2, "%")}


def test_spec_encryption_example_decrypts_with_the_bindkey() -> None:
    p = parse_bthome(bytes.fromhex("41e445f3c9962b332211006c7c4519"), mac=MAC, bindkey=KEY)
    assert p.encrypted
    assert p.counter == 0x00112233
    assert values(p) == {"temperature": (2506, -2, "Cel"), "humidity": (5055, -2, "%")}


def test_encrypted_example_with_other_counter_bytes() -> None:
    p = parse_bthome(bytes.fromhex("41a47266c95f730011223378237214"), mac=MAC, bindkey=KEY)
    assert p.counter == 0x33221100
    assert values(p)["temperature"] == (2506, -2, "Cel")


def test_encrypted_advert_carrying_its_mac_needs_no_address() -> None:
    p = parse_bthome(bytes.fromhex("43a5808fe64854f196c06ffb4900112233f08ecbde"), bindkey=KEY)
    assert p.mac == MAC
    assert values(p)["humidity"] == (5055, -2, "%")


def test_encoder_reproduces_the_spec_encryption_example() -> None:
    adv = encode_bthome([(0x02, 2506), (0x03, 5055)], mac=MAC, bindkey=KEY, counter=0x00112233)
    assert adv.hex() == "41e445f3c9962b332211006c7c4519"
    adv = encode_bthome(
        [(0x02, 2506), (0x03, 5055)], mac=MAC, bindkey=KEY, counter=0x33221100, include_mac=True
    )
    assert adv.hex() == "43a5808fe64854f196c06ffb4900112233f08ecbde"


def test_mac_included_plain_pressure() -> None:
    p = parse_bthome(bytes.fromhex("42b2188d38c1a404138a01"))
    assert p.mac == mac_bytes("A4:C1:38:8D:18:B2")
    assert values(p) == {"pressure": (100883, -2, "hPa")}


def test_trigger_based_text_object() -> None:
    p = parse_bthome(bytes.fromhex("44530c48656c6c6f20576f726c6421"))
    assert p.trigger_based
    assert p.texts == (("text", b"Hello World!"),)
    assert p.values == ()


def test_packet_id_battery_binary_and_small_objects() -> None:
    # A Shelly BLU H&T display: packet id 46, battery 100 %, light on, 52 %, 27.8 Cel.
    p = parse_bthome(bytes.fromhex("40002e01641e012e34451601"))
    assert p.packet_id == 46
    assert values(p) == {
        "battery": (100, 0, "%"),
        "light": (1, 0, "{bool}"),
        "humidity": (52, 0, "%"),
        "temperature": (278, -1, "Cel"),
    }


def test_negative_values_are_signed() -> None:
    p = parse_bthome(encode_bthome([(0x02, -1234), (0x57, -40), (0x5C, -500)]))
    assert values(p) == {
        "temperature": (-1234, -2, "Cel"),
        "temperature_2": (-40, 0, "Cel"),
        "power": (-500, -2, "W"),
    }


def test_factor_0_35_stays_exact() -> None:
    p = parse_bthome(encode_bthome([(0x58, -3)]))
    assert values(p) == {"temperature": (-105, -2, "Cel")}  # -3 x 0.35 = -1.05


def test_repeated_objects_are_numbered_in_order() -> None:
    p = parse_bthome(bytes.fromhex("4002ca0902c409036416"))  # two temperatures, one humidity
    assert [(v.name, v.value) for v in p.values] == [
        ("temperature", 2506),
        ("temperature_2", 2500),
        ("humidity", 5732),
    ]


def test_button_and_dimmer_events() -> None:
    p = parse_bthome(encode_bthome([(0x3A, 0x02), (0x3A, 0x80), (0x3C, 0x01 | 3 << 8)]))
    assert values(p) == {
        "button": (2, 0, "{event}"),
        "button_2": (0x80, 0, "{event}"),
        "dimmer": (-3, 0, "{step}"),
    }
    p = parse_bthome(encode_bthome([(0x3C, 0x02 | 5 << 8)]))
    assert values(p) == {"dimmer": (5, 0, "{step}")}


def test_timestamp_and_device_information_are_not_values() -> None:
    p = parse_bthome(encode_bthome([(0x50, 1_764_000_000), (0xF0, 1), (0xF2, 0x010203)]))
    assert p.timestamp == 1_764_000_000
    assert p.device_type_id == 1 and p.firmware_version == 0x010203
    assert p.values == ()


@pytest.mark.parametrize("oid", sorted(OBJECT_TYPES))
def test_every_object_id_round_trips(oid: int) -> None:
    t = OBJECT_TYPES[oid]
    raw: int | bytes = b"\x01\x02" if t.length == 0 else (1 << (8 * t.length - 2)) - 1
    if t.kind == "binary":
        raw = 1
    p = parse_bthome(
        encode_bthome([(oid, raw)], mac=MAC, bindkey=KEY, counter=7), mac=MAC, bindkey=KEY
    )
    assert p.counter == 7
    if t.kind in ("sensor", "button", "binary"):
        assert isinstance(raw, int)
        assert [(v.name, v.value, v.exponent, v.object_id) for v in p.values] == [
            (t.name, raw * t.multiplier, t.exponent, oid)
        ]
    elif t.kind == "command":
        assert [(v.name, v.value, v.unit) for v in p.values] == [("command", 1, "{command}")]
        assert p.texts == (("command", b"\x02"),)
    elif t.kind in ("text", "raw"):
        assert p.texts == ((t.name, raw),)
    elif t.kind == "packet_id":
        assert p.packet_id == raw


def test_unknown_object_id_keeps_what_came_before_it() -> None:
    p = parse_bthome(bytes.fromhex("40015dfe5d0903b718"))
    assert values(p) == {"battery": (93, 0, "%")}
    assert p.unknown_object_id == 0xFE


@pytest.mark.parametrize(
    ("hexdata", "reason"),
    [
        ("", "short_payload"),
        ("2002ca09", "bad_version"),  # BTHome v1 in the version bits
        ("e1020c04", "bad_version"),
        ("4002ca", "truncated_object"),
        ("4004138a", "truncated_object"),
        ("4053", "truncated_object"),  # text without its length
        ("40530548656c", "truncated_object"),  # text shorter than its length
        ("42b2188d", "short_payload"),  # MAC flag, MAC cut short
        ("41e445f3c9", "short_payload"),
    ],
)
def test_malformed_input_is_refused_with_a_reason(hexdata: str, reason: str) -> None:
    with pytest.raises(FrameError) as err:
        parse_bthome(bytes.fromhex(hexdata), mac=MAC, bindkey=KEY)
    assert err.value.reason == reason


def test_wrong_bindkey_fails_the_mic() -> None:
    adv = bytes.fromhex("41e445f3c9962b332211006c7c4519")
    with pytest.raises(FrameError) as err:
        parse_bthome(adv, mac=MAC, bindkey=bytes(16))
    assert err.value.reason == "bad_mic"


def test_any_flipped_bit_fails_the_mic() -> None:
    adv = bytearray.fromhex("41e445f3c9962b332211006c7c4519")
    for i in range(1, len(adv)):
        forged = bytearray(adv)
        forged[i] ^= 0x01
        with pytest.raises(FrameError) as err:
            parse_bthome(bytes(forged), mac=MAC, bindkey=KEY)
        assert err.value.reason == "bad_mic", i


def test_wrong_mac_fails_the_mic() -> None:
    with pytest.raises(FrameError) as err:
        parse_bthome(
            bytes.fromhex("41e445f3c9962b332211006c7c4519"),
            mac=mac_bytes("54:48:E6:8F:80:A6"),
            bindkey=KEY,
        )
    assert err.value.reason == "bad_mic"


def test_encrypted_advert_without_key_or_mac() -> None:
    adv = bytes.fromhex("41e445f3c9962b332211006c7c4519")
    with pytest.raises(FrameError) as err:
        parse_bthome(adv, mac=MAC)
    assert err.value.reason == "no_bindkey"
    with pytest.raises(FrameError) as err:
        parse_bthome(adv, bindkey=KEY)
    assert err.value.reason == "no_mac"


def test_encoder_refuses_values_that_do_not_fit() -> None:
    with pytest.raises(ValueError):
        encode_objects([(0x01, 256)])
    with pytest.raises(ValueError):
        encode_objects([(0x02, 40000)])
    with pytest.raises(ValueError):
        encode_objects([(0xEE, 1)])
    with pytest.raises(ValueError):
        encode_bthome([(0x01, 1)], bindkey=KEY, counter=1)  # no mac


@pytest.mark.parametrize("byte", [2, 0x80, 0xFF])
def test_a_binary_sensor_byte_other_than_0_or_1_is_refused(byte: int) -> None:
    with pytest.raises(FrameError) as info:
        parse_bthome(bytes((0x40, 0x01, 93, 0x1A, byte)))
    assert info.value.reason == "bad_binary"
    assert values(parse_bthome(bytes((0x40, 0x1A, 0x00, 0x1A, 0x01)))) == {
        "door": (0, 0, "{bool}"),
        "door_2": (1, 0, "{bool}"),
    }


def test_the_command_object_0x3b_is_decoded_and_what_follows_it_too() -> None:
    # step up 5 steps (the spec's example 3B010305), then "on" without arguments, then a door.
    p = parse_bthome(bytes.fromhex("403b0103053b00011a01"))
    assert values(p) == {
        "command": (3, 0, "{command}"),
        "command_2": (1, 0, "{command}"),
        "door": (1, 0, "{bool}"),
    }
    assert p.texts == (("command", b"\x05"),)
    assert p.unknown_object_id is None
    assert parse_bthome(encode_bthome([(0x3B, b"\x03\x05")])).values[0].value == 3


def test_a_command_with_reserved_length_bits_ends_decoding_like_an_unknown_object() -> None:
    p = parse_bthome(bytes.fromhex("40015d3b2103050201"))
    assert values(p) == {"battery": (93, 0, "%")}
    assert p.unknown_object_id == 0x3B


def test_the_settings_revision_0x65_is_decoded_and_what_follows_it_too() -> None:
    p = parse_bthome(bytes.fromhex("40015d6503f00100"))
    assert p.settings_revision == 3 and p.device_type_id == 1
    assert values(p) == {"battery": (93, 0, "%")}
    assert p.unknown_object_id is None
