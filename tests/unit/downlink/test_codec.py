"""The downlink frame and the device's answer (docs/downlink.md): canonical bytes as specified,
MACs an independent HMAC reproduces, strict parsing; and the gateway's CommandReceipt."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from edgence import downlink as fw

from agent.attest.eip712 import keccak256
from agent.attest.keys import GatewayKey
from agent.attest.receipt import receipt_message, sign_receipt, verify_receipt
from agent.downlink.codec import (
    Command,
    DownlinkError,
    answer_canonical,
    command_canonical,
    encode_answer,
    encode_command,
    parse_answer,
    parse_command,
    verify_answer,
)
from agent.model import Eip712Domain

KEY = bytes(range(32))
CMD = Command("c-42", "dev-1", "set_output", {"pin": 2, "value": 1, "label": "gate"}, 1764000060, 7)


def test_the_command_canonical_bytes_are_as_documented() -> None:
    assert command_canonical(CMD) == (
        b"EDGENCE-CMD-1\ndev-1\n7\nc-42\n1764000060\nset_output\n"
        b"label\ts\tgate\npin\ti\t2\nvalue\ti\t1\n"
    )


def test_the_command_mac_is_plain_hmac_sha256_and_the_documented_vector() -> None:
    obj = json.loads(encode_command(KEY, CMD))
    want = hmac.new(KEY, command_canonical(CMD), hashlib.sha256).hexdigest()
    assert obj["mac"] == want
    assert want == DOC_COMMAND_MAC


DOC_COMMAND_MAC = "b3f1d82ad4648996dcc48ea1563c1d9f2af671d2e0d8066ae24a92c74aa8277a"


def test_the_firmware_builds_the_same_canonical_bytes_and_answer_json() -> None:
    assert fw.command_canonical("dev-1", 7, "c-42", 1764000060, "set_output", dict(CMD.args)) == (
        command_canonical(CMD)
    )
    res: dict[str, int | str] = {"pin": 2, "value": 1}
    assert fw.encode_answer(KEY, "dev-1", 7, "c-42", "ok", res) == encode_answer(
        KEY, "dev-1", 7, "c-42", "ok", res
    )


def test_a_command_round_trips_and_a_changed_field_fails_its_mac() -> None:
    payload = encode_command(KEY, CMD)
    assert parse_command(KEY, "dev-1", payload) == CMD
    with pytest.raises(DownlinkError, match="bad_mac"):
        parse_command(KEY, "dev-2", payload)  # moved to another device's topic
    tampered = payload.replace(b'"value":1', b'"value":0')
    with pytest.raises(DownlinkError, match="bad_mac"):
        parse_command(KEY, "dev-1", tampered)


def test_an_answer_verifies_only_with_the_device_key_and_its_exact_fields() -> None:
    payload = encode_answer(KEY, "dev-1", 7, "c-42", "ok", {"pin": 2})
    ans = parse_answer(payload, "dev-1")
    assert ans.ok and verify_answer(KEY, ans)
    assert not verify_answer(bytes(32), ans)
    assert not verify_answer(KEY, parse_answer(payload, "dev-2"))
    assert not verify_answer(KEY, parse_answer(payload.replace(b'"pin":2', b'"pin":3'), "dev-1"))


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{", "not_json"),
        (b"[]", "bad_fields"),
        (b'{"v":1,"id":"c","n":1,"st":"ok","r":{},"mac":"00"}', "bad_mac"),
        (b'{"v":2,"id":"c","n":1,"st":"ok","r":{},"mac":"' + b"0" * 64 + b'"}', "bad_version"),
        (b'{"v":1,"id":"c","n":-1,"st":"ok","r":{},"mac":"' + b"0" * 64 + b'"}', "out_of_range"),
        (b'{"v":1,"id":"c","n":1,"st":"ok","r":{"a":1.5},"mac":"' + b"0" * 64 + b'"}', "bad_args"),
        (b'{"v":1,"id":"c","n":1,"st":"ok","r":{},"mac":"' + b"0" * 64 + b'","x":1}', "bad_fields"),
        (b"x" * 2000, "oversize"),
    ],
)
def test_malformed_answers_are_refused_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(DownlinkError) as e:
        parse_answer(payload, "dev-1")
    assert e.value.reason == reason


def test_command_fields_are_checked() -> None:
    with pytest.raises(DownlinkError, match="bad_label"):
        Command("c 1", "dev-1", "x", {}, 1, 1)
    with pytest.raises(DownlinkError, match="bad_args"):
        Command("c1", "dev-1", "x", {"t": 'a"b'}, 1, 1)
    with pytest.raises(DownlinkError, match="bad_args"):
        Command("c1", "dev-1", "x", {f"a{i}": i for i in range(9)}, 1, 1)


DOMAIN = Eip712Domain("Edgence", "1", 31337, "0x" + "11" * 20)


def _receipt() -> tuple[GatewayKey, dict[str, object]]:
    key = GatewayKey.from_bytes(b"\x01" * 32)
    canon = answer_canonical("dev-1", 7, "c-42", "ok", {"pin": 2})
    msg = receipt_message("c-42", "dev-1", "set_output", "ok", canon, 7, 1764000001)
    return key, sign_receipt(key, DOMAIN, msg, canon, {"pin": 2}).as_json(DOMAIN)


def test_a_receipt_recovers_to_the_gateway_and_binds_the_device_answer() -> None:
    key, doc = _receipt()
    assert verify_receipt(doc) == key.address
    msg = doc["message"]
    assert isinstance(msg, dict)
    assert msg["answerHash"] == "0x" + keccak256(str(doc["answer"]).encode()).hex()
    assert msg["commandId"] == "0x" + b"c-42".ljust(32, b"\0").hex()


@pytest.mark.parametrize(
    "tamper",
    [
        lambda d: d["message"].__setitem__("status", "0x" + b"failed".ljust(32, b"\0").hex()),
        lambda d: d.__setitem__("answer", d["answer"].replace("pin\ti\t2", "pin\ti\t3")),
        lambda d: d.__setitem__("gateway", "0x" + "22" * 20),
    ],
)
def test_a_changed_receipt_does_not_verify(tamper: object) -> None:
    _, doc = _receipt()
    tamper(doc)  # type: ignore[operator]
    with pytest.raises(ValueError):
        verify_receipt(doc)
