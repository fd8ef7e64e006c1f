"""EIP-712 hashing: the EIP's own Mail example, value checks, and the Observation fast path
against eth-account's independent encoder."""

from __future__ import annotations

import json
import random
import string
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from eth_account.messages import encode_typed_data
from eth_utils.crypto import keccak as eth_keccak

from agent.attest.eip712 import (
    DOMAIN_TYPE,
    OBSERVATION_TYPE,
    OBSERVATION_TYPE_HASH,
    OBSERVATION_TYPES,
    domain_separator,
    encode_type,
    hash_domain,
    hash_struct,
    hash_typed_data,
    keccak256,
    observation_digest,
    observation_struct_hash,
    type_hash,
)
from agent.attest.keys import GatewayKey, recover_address
from agent.model import (
    INT256_MAX,
    INT256_MIN,
    UINT64_MAX,
    AuthMethod,
    Eip712Domain,
    Reading,
    Transport,
    label_bytes32,
    transport_code,
)

MAIL_TYPES: dict[str, list[dict[str, str]]] = {
    "Person": [{"name": "name", "type": "string"}, {"name": "wallet", "type": "address"}],
    "Mail": [
        {"name": "from", "type": "Person"},
        {"name": "to", "type": "Person"},
        {"name": "contents", "type": "string"},
    ],
}


@pytest.fixture(scope="module")
def mail(vectors_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((vectors_dir / "eip712_mail.json").read_text())
    return data


def test_keccak256_of_empty_input_is_the_ethereum_constant() -> None:
    assert keccak256(b"").hex() == (
        "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
    )


def test_mail_encode_type_lists_referenced_structs_after_primary(mail: dict[str, Any]) -> None:
    assert encode_type(MAIL_TYPES, "Mail") == mail["types"]["Mail"]
    assert encode_type(MAIL_TYPES, "Person") == mail["types"]["Person"]


def test_mail_type_and_struct_hash_match_the_eip(mail: dict[str, Any]) -> None:
    expected = mail["expected"]
    assert type_hash(MAIL_TYPES, "Mail").hex() == expected["type_hash_mail"]
    assert hash_struct(MAIL_TYPES, "Mail", mail["message"]).hex() == expected["struct_hash_mail"]


def test_mail_domain_separator_matches_the_eip(mail: dict[str, Any]) -> None:
    assert hash_domain(mail["domain"]).hex() == mail["expected"]["domain_separator"]


def test_mail_digest_matches_with_derived_or_explicit_domain_type(mail: dict[str, Any]) -> None:
    expected = mail["expected"]["digest"]
    derived = hash_typed_data(MAIL_TYPES, "Mail", mail["domain"], mail["message"])
    explicit_types = {**MAIL_TYPES, "EIP712Domain": OBSERVATION_TYPES["EIP712Domain"]}
    explicit = hash_typed_data(explicit_types, "Mail", mail["domain"], mail["message"])
    assert derived.hex() == expected
    assert explicit.hex() == expected


def test_mail_signature_with_cow_key_matches_the_eip(mail: dict[str, Any]) -> None:
    expected = mail["expected"]
    key = GatewayKey.from_bytes(keccak256(b"cow"))
    digest = hash_typed_data(MAIL_TYPES, "Mail", mail["domain"], mail["message"])
    signature = key.sign_digest(digest)
    assert signature[:32].hex() == expected["r"]
    assert signature[32:64].hex() == expected["s"]
    assert signature[64] == expected["v"]
    assert key.checksum_address == expected["signer"]
    assert recover_address(digest, signature) == expected["signer"].lower()


def test_fast_path_type_strings_are_what_the_generic_encoder_derives() -> None:
    assert encode_type(OBSERVATION_TYPES, "Observation") == OBSERVATION_TYPE
    assert encode_type(OBSERVATION_TYPES, "EIP712Domain") == DOMAIN_TYPE
    assert type_hash(OBSERVATION_TYPES, "Observation") == OBSERVATION_TYPE_HASH


# --- values ---------------------------------------------------------------------------------

NUMBERS = {"N": [{"name": "u8", "type": "uint8"}, {"name": "i8", "type": "int8"}]}


@pytest.mark.parametrize(
    ("u8", "i8"),
    [(255, -128), ("255", "-128"), ("0xff", "-0x80"), (0, 127), ("0", "0x7f")],
)
def test_integers_accept_ints_decimal_and_hex_strings(u8: object, i8: object) -> None:
    as_ints = {"u8": int(str(u8), 0), "i8": int(str(i8), 0)}
    assert hash_struct(NUMBERS, "N", {"u8": u8, "i8": i8}) == hash_struct(NUMBERS, "N", as_ints)


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"u8": 256, "i8": 0}, "N.u8"),
        ({"u8": -1, "i8": 0}, "N.u8"),
        ({"u8": 0, "i8": 128}, "N.i8"),
        ({"u8": 0, "i8": -129}, "N.i8"),
        ({"u8": True, "i8": 0}, "N.u8"),
        ({"u8": 1.0, "i8": 0}, "N.u8"),
        ({"u8": "12a", "i8": 0}, "N.u8"),
        ({"i8": 0}, "N.u8"),
    ],
)
def test_out_of_range_or_malformed_values_name_the_field(
    message: dict[str, object], field: str
) -> None:
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        hash_struct(NUMBERS, "N", message)


def test_fixed_bytes_must_have_exactly_their_size() -> None:
    types = {"B": [{"name": "b", "type": "bytes4"}]}
    assert hash_struct(types, "B", {"b": "0x01020304"}) == hash_struct(
        types, "B", {"b": b"\x01\x02\x03\x04"}
    )
    with pytest.raises(ValueError, match=r"B\.b has 5 bytes"):
        hash_struct(types, "B", {"b": "0x0102030405"})
    with pytest.raises(ValueError, match=r"B\.b has 3 bytes"):
        hash_struct(types, "B", {"b": b"\x01\x02\x03"})


def test_fixed_length_array_rejects_wrong_item_count() -> None:
    types = {"A": [{"name": "xs", "type": "uint8[2]"}]}
    hash_struct(types, "A", {"xs": [1, 2]})
    with pytest.raises(ValueError, match=r"A\.xs has 3 items"):
        hash_struct(types, "A", {"xs": [1, 2, 3]})


def test_unknown_types_and_domain_fields_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown type 'uint7x'"):
        hash_struct({"T": [{"name": "a", "type": "uint7x"}]}, "T", {"a": 1})
    with pytest.raises(ValueError, match="not a valid integer type"):
        hash_struct({"T": [{"name": "a", "type": "uint7"}]}, "T", {"a": 1})
    with pytest.raises(ValueError, match="unknown EIP712Domain field"):
        hash_domain({"name": "x", "chain": 1})


RICH_TYPES: dict[str, list[dict[str, str]]] = {
    "EIP712Domain": [
        {"name": "name", "type": "string"},
        {"name": "chainId", "type": "uint256"},
        {"name": "salt", "type": "bytes32"},
    ],
    "Leaf": [{"name": "flag", "type": "bool"}, {"name": "blob", "type": "bytes"}],
    "Group": [
        {"name": "title", "type": "string"},
        {"name": "leaves", "type": "Leaf[]"},
        {"name": "pair", "type": "int16[2]"},
    ],
    "Root": [
        {"name": "owner", "type": "address"},
        {"name": "groups", "type": "Group[]"},
        {"name": "tags", "type": "string[]"},
        {"name": "matrix", "type": "uint32[2][]"},
        {"name": "tiny", "type": "bytes1"},
        {"name": "amount", "type": "int256"},
    ],
}


def test_nested_structs_arrays_and_dynamic_bytes_match_eth_account() -> None:
    domain = {"name": "Rich", "chainId": 5, "salt": "0x" + "ab" * 32}
    message = {
        "owner": "0x" + "12" * 20,
        "groups": [
            {
                "title": "first ✓",
                "leaves": [{"flag": True, "blob": "0x"}, {"flag": False, "blob": "0xdeadbeef"}],
                "pair": [-32768, 32767],
            },
            {"title": "", "leaves": [], "pair": [0, -1]},
        ],
        "tags": ["a", "bc", ""],
        "matrix": [[1, 2], [2**32 - 1, 0]],
        "tiny": "0x7f",
        "amount": INT256_MIN,
    }
    signable = encode_typed_data(
        full_message={
            "types": RICH_TYPES,
            "primaryType": "Root",
            "domain": domain,
            "message": message,
        }
    )
    theirs = eth_keccak(b"\x19" + signable.version + signable.header + signable.body)
    assert hash_struct(RICH_TYPES, "Root", message) == signable.body
    assert hash_typed_data(RICH_TYPES, "Root", domain, message) == theirs
    assert encode_type(RICH_TYPES, "Root") == (
        "Root(address owner,Group[] groups,string[] tags,uint32[2][] matrix,bytes1 tiny,"
        "int256 amount)Group(string title,Leaf[] leaves,int16[2] pair)Leaf(bool flag,bytes blob)"
    )


# --- Observation fast path ------------------------------------------------------------------

NAME_CHARS = string.ascii_letters + string.digits + "_.:-"
UNIT_CHARS = "".join(chr(c) for c in range(ord("!"), ord("~") + 1))  # printable, no space


def _label(rng: random.Random, chars: str = NAME_CHARS) -> str:
    return "".join(rng.choice(chars) for _ in range(rng.randint(1, 32)))


def _random_reading(rng: random.Random) -> Reading:
    value = rng.choice(
        [
            INT256_MIN,
            INT256_MAX,
            -1,
            0,
            rng.randint(-(10**6), 10**6),
            rng.randint(INT256_MIN, INT256_MAX),
        ]
    )
    return Reading(
        device_id=_label(rng),
        sensor=_label(rng),
        value=value,
        exponent=rng.choice([-128, 127, 0, -2, rng.randint(-128, 127)]),
        unit=_label(rng, UNIT_CHARS),
        timestamp=rng.choice([0, UINT64_MAX, rng.randint(0, UINT64_MAX)]),
        counter=rng.choice([0, UINT64_MAX, rng.randint(0, UINT64_MAX)]),
        transport=rng.choice(list(Transport)),
        auth=rng.choice(list(AuthMethod)),
    )


def _random_domain(rng: random.Random) -> Eip712Domain:
    return Eip712Domain(
        name=rng.choice(["Edgence", "Edgence Oracle ✓", ""]),
        version=rng.choice(["1", "2.0"]),
        chain_id=rng.choice([1, 31337, 2**256 - 1, rng.randint(1, 2**64)]),
        verifying_contract="0x" + rng.randbytes(20).hex(),
    )


def _typed_message(reading: Reading, sequence: int, feed: bytes) -> dict[str, Any]:
    return {
        "feed": feed,
        "deviceId": label_bytes32(reading.device_id, "device id"),
        "sensor": label_bytes32(reading.sensor, "sensor"),
        "value": reading.value,
        "exponent": reading.exponent,
        "unit": label_bytes32(reading.unit, "unit"),
        "timestamp": reading.timestamp,
        "deviceCounter": reading.counter,
        "gatewaySequence": sequence,
        "transport": transport_code(reading.transport),
        "assurance": reading.auth.assurance,
    }


def _domain_fields(domain: Eip712Domain) -> dict[str, Any]:
    return {
        "name": domain.name,
        "version": domain.version,
        "chainId": domain.chain_id,
        "verifyingContract": domain.verifying_contract,
    }


def test_observation_digest_matches_eth_account_on_random_readings() -> None:
    rng = random.Random(712)
    for _ in range(200):
        reading, domain = _random_reading(rng), _random_domain(rng)
        sequence = rng.choice([0, UINT64_MAX, rng.randint(0, UINT64_MAX)])
        feed = rng.randbytes(32)
        signable = encode_typed_data(
            full_message={
                "types": OBSERVATION_TYPES,
                "primaryType": "Observation",
                "domain": _domain_fields(domain),
                "message": _typed_message(reading, sequence, feed),
            }
        )
        theirs = eth_keccak(b"\x19" + signable.version + signable.header + signable.body)
        separator = domain_separator(domain)
        assert separator == signable.header, reading
        assert observation_struct_hash(reading, sequence, feed) == signable.body, reading
        assert observation_digest(separator, reading, sequence, feed) == theirs, reading


def test_generic_encoder_equals_the_fast_path() -> None:
    rng = random.Random(1)
    for _ in range(200):
        reading, domain = _random_reading(rng), _random_domain(rng)
        sequence = rng.randint(0, UINT64_MAX)
        feed = rng.randbytes(32)
        message = _typed_message(reading, sequence, feed)
        message["value"] = str(reading.value)  # decimal strings are accepted too
        generic = hash_typed_data(OBSERVATION_TYPES, "Observation", _domain_fields(domain), message)
        assert generic == observation_digest(domain_separator(domain), reading, sequence, feed)
        assert hash_domain(_domain_fields(domain)) == domain_separator(domain)


@pytest.mark.parametrize("sequence", [-1, UINT64_MAX + 1])
def test_fast_path_rejects_gateway_sequence_outside_uint64(sequence: int) -> None:
    reading = _random_reading(random.Random(0))
    with pytest.raises(ValueError, match="gateway sequence"):
        observation_struct_hash(reading, sequence, bytes(32))


def test_keccak256_matches_pycryptodome_at_block_edges_and_across_threads() -> None:
    # keccak256 reuses one hashing state per thread; every length around the 136-byte rate
    # and hashes made in several threads at once must still give keccak.new()'s digests.
    import threading

    from Crypto.Hash import keccak

    def reference(data: bytes) -> bytes:
        return keccak.new(data=data, digest_bits=256).digest()

    inputs = [bytes(range(256))[:n] * 3 for n in (0, 1, 135, 136, 137, 255)] + [b"x" * 5000]
    assert [keccak256(d) for d in inputs] == [reference(d) for d in inputs]
    assert keccak256(b"") == bytes.fromhex(
        "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
    )
    wrong: list[bytes] = []

    def hash_many(seed: int) -> None:
        for i in range(300):
            data = bytes([seed, i % 256]) * (i % 70)
            if keccak256(data) != reference(data):
                wrong.append(data)

    threads = [threading.Thread(target=hash_many, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []


def test_keccak256_uses_the_reused_state_without_loading_cffi() -> None:
    # The fast path opens pycryptodome's library with ctypes; its own loader would bring cffi
    # and pycparser (about 1 MB) into every agent process.
    code = (
        "import sys\n"
        "from agent.attest import eip712\n"
        "assert eip712.keccak256 is not eip712._keccak256_new\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('cffi', 'pycparser')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
