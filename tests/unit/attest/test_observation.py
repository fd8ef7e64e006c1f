"""Signing readings into envelopes and verifying envelopes: every tampering is caught."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils.crypto import keccak as eth_keccak

from agent.attest.eip712 import OBSERVATION_TYPES, domain_separator, observation_digest
from agent.attest.feeds import FeedMap, default_feed
from agent.attest.keys import SECP256K1_HALF_N, SECP256K1_N, GatewayKey
from agent.attest.observation import ObservationSigner, split_batch, verify_envelope
from agent.errors import EnvelopeError
from agent.model import AuthMethod, Eip712Domain, Observation, Reading, Transport

DOMAIN = Eip712Domain(
    name="Edgence",
    version="2",
    chain_id=31337,
    verifying_contract="0x5FbDB2315678afecb367f032d93F642f64180aa3",
)
READING = Reading(
    device_id="sim-1",
    sensor="temp",
    value=2137,
    exponent=-2,
    unit="Cel",
    timestamp=1_700_000_000,
    counter=41,
    transport=Transport.MQTT,
    auth=AuthMethod.ALLOWLIST,
)
OTHER_ADDRESS = "0x" + "11" * 20

Envelope = dict[str, Any]


@pytest.fixture(scope="module")
def key() -> GatewayKey:
    return GatewayKey.generate()


@pytest.fixture(scope="module")
def signer(key: GatewayKey) -> ObservationSigner:
    return ObservationSigner(key, DOMAIN)


@pytest.fixture
def observation(signer: ObservationSigner) -> Observation:
    return signer.sign(READING, 7)


@pytest.fixture
def envelope(observation: Observation) -> Envelope:
    data: Envelope = json.loads(observation.envelope)
    return data


def _refresh_digest(env: Envelope) -> None:
    """Make the digest field honest for a tampered message, so only the signature can fail."""
    digest = observation_digest(
        domain_separator(
            Eip712Domain(
                name=env["domain"]["name"],
                version=env["domain"]["version"],
                chain_id=env["domain"]["chainId"],
                verifying_contract=env["domain"]["verifyingContract"],
            )
        ),
        verify_reading(env),
        env["message"]["gatewaySequence"],
        bytes.fromhex(env["message"]["feed"][2:]),
    )
    env["digest"] = "0x" + digest.hex()


def verify_reading(env: Envelope) -> Reading:
    m, r = env["message"], env["reading"]
    return Reading(
        device_id=bytes.fromhex(m["deviceId"][2:]).rstrip(b"\0").decode(),
        sensor=bytes.fromhex(m["sensor"][2:]).rstrip(b"\0").decode(),
        value=int(m["value"]),
        exponent=m["exponent"],
        unit=bytes.fromhex(m["unit"][2:]).rstrip(b"\0").decode(),
        timestamp=m["timestamp"],
        counter=m["deviceCounter"],
        transport=Transport(r["transport"]),
        auth=AuthMethod(r["auth"]),
    )


def test_signed_envelope_verifies_to_the_gateway_key(
    key: GatewayKey, observation: Observation
) -> None:
    verified = verify_envelope(observation.envelope)
    assert verified.signer == key.address == observation.gateway
    assert verified.reading == READING
    assert verified.gateway_sequence == 7
    assert verified.domain == DOMAIN
    assert verified.digest == observation.digest
    assert verified.signature == observation.signature


def test_envelope_is_compact_json_in_the_documented_order(observation: Observation) -> None:
    text = observation.envelope.decode()
    assert " " not in text
    env = json.loads(text)
    assert list(env) == [
        "v",
        "gateway",
        "domain",
        "message",
        "reading",
        "unsigned",
        "digest",
        "signature",
    ]
    assert list(env["message"]) == [
        "feed",
        "deviceId",
        "sensor",
        "value",
        "exponent",
        "unit",
        "timestamp",
        "deviceCounter",
        "gatewaySequence",
        "transport",
        "assurance",
    ]
    assert env["message"]["value"] == "2137"
    assert env["message"]["feed"] == "0x" + default_feed("sim-1", "temp").hex()
    assert (env["message"]["transport"], env["message"]["assurance"]) == (1, 0)
    assert env["unsigned"] == ["reading.auth"]
    assert env["message"]["deviceId"] == "0x" + b"sim-1".ljust(32, b"\0").hex()
    assert env["reading"] == {
        "device": "sim-1",
        "sensor": "temp",
        "value": "21.37",
        "unit": "Cel",
        "transport": "mqtt",
        "auth": "allowlist",
    }


def test_envelope_verifies_with_eth_account_alone(key: GatewayKey, envelope: Envelope) -> None:
    message = {**envelope["message"], "value": int(envelope["message"]["value"])}
    signable = encode_typed_data(
        full_message={
            "types": OBSERVATION_TYPES,
            "primaryType": "Observation",
            "domain": envelope["domain"],
            "message": message,
        }
    )
    digest = eth_keccak(b"\x19" + signable.version + signable.header + signable.body)
    assert "0x" + digest.hex() == envelope["digest"]
    signature = bytes.fromhex(envelope["signature"][2:])
    assert Account._recover_hash(digest, signature=signature) == key.checksum_address


def test_verify_accepts_bytes_str_and_parsed_mapping(
    observation: Observation, envelope: Envelope
) -> None:
    from_bytes = verify_envelope(observation.envelope)
    assert verify_envelope(observation.envelope.decode()) == from_bytes
    assert verify_envelope(envelope) == from_bytes


MESSAGE_TAMPERING: dict[str, Callable[[Envelope], None]] = {
    "deviceId": lambda e: e["message"].update(deviceId="0x" + b"sim-2".ljust(32, b"\0").hex()),
    "sensor": lambda e: e["message"].update(sensor="0x" + b"hum".ljust(32, b"\0").hex()),
    "value": lambda e: e["message"].update(value="2138"),
    "exponent": lambda e: e["message"].update(exponent=-1),
    "unit": lambda e: e["message"].update(unit="0x" + b"K".ljust(32, b"\0").hex()),
    "timestamp": lambda e: e["message"].update(timestamp=1_700_000_001),
    "deviceCounter": lambda e: e["message"].update(deviceCounter=42),
    "gatewaySequence": lambda e: e["message"].update(gatewaySequence=8),
    "feed": lambda e: e["message"].update(feed="0x" + "42" * 32),
}


@pytest.mark.parametrize("field", list(MESSAGE_TAMPERING))
def test_tampered_message_field_is_detected(envelope: Envelope, field: str) -> None:
    MESSAGE_TAMPERING[field](envelope)
    with pytest.raises(EnvelopeError, match=r"disagrees|digest mismatch"):
        verify_envelope(envelope)


@pytest.mark.parametrize("field", list(MESSAGE_TAMPERING))
def test_tampered_message_with_consistent_digest_fails_on_the_signature(
    envelope: Envelope, field: str
) -> None:
    MESSAGE_TAMPERING[field](envelope)
    tampered = verify_reading(envelope)
    envelope["reading"].update(
        device=tampered.device_id,
        sensor=tampered.sensor,
        unit=tampered.unit,
        value=tampered.decimal,
    )
    _refresh_digest(envelope)
    with pytest.raises(EnvelopeError, match="does not recover to gateway"):
        verify_envelope(envelope)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "Evil"),
        ("version", "1"),
        ("chainId", 1),
        ("verifyingContract", OTHER_ADDRESS),
    ],
)
def test_tampered_domain_is_detected(envelope: Envelope, field: str, value: object) -> None:
    envelope["domain"][field] = value
    with pytest.raises(EnvelopeError, match="digest mismatch"):
        verify_envelope(envelope)


def test_claimed_gateway_other_than_the_signer_is_detected(envelope: Envelope) -> None:
    envelope["gateway"] = OTHER_ADDRESS
    with pytest.raises(EnvelopeError, match=f"does not recover to gateway {OTHER_ADDRESS}"):
        verify_envelope(envelope)


@pytest.mark.parametrize(
    ("field", "value"),
    [("device", "sim-2"), ("sensor", "hum"), ("value", "21.38"), ("unit", "K")],
)
def test_reading_block_disagreeing_with_the_signed_message_is_detected(
    envelope: Envelope, field: str, value: str
) -> None:
    envelope["reading"][field] = value
    with pytest.raises(EnvelopeError, match=f"reading.{field} .* disagrees"):
        verify_envelope(envelope)


def test_reading_value_must_be_the_exact_decimal_text(envelope: Envelope) -> None:
    envelope["reading"]["value"] = "21.370"
    with pytest.raises(EnvelopeError, match="disagrees"):
        verify_envelope(envelope)


def test_signed_assurance_and_transport_cannot_be_relabelled(envelope: Envelope) -> None:
    # The attack: "auth":"allowlist" edited to "hmac" must not pass for authenticated.
    envelope["reading"]["auth"] = "hmac"
    with pytest.raises(EnvelopeError, match=r"assurance 2 .* signed message\.assurance is 0"):
        verify_envelope(envelope)
    envelope["reading"]["auth"] = "allowlist"
    envelope["message"]["assurance"] = 2
    _refresh_digest_signed(envelope)
    with pytest.raises(EnvelopeError, match=r"assurance 0 .* signed message\.assurance is 2"):
        verify_envelope(envelope)
    envelope["reading"]["auth"] = "hmac"
    with pytest.raises(EnvelopeError, match="does not recover to gateway"):
        verify_envelope(envelope)


def _refresh_digest_signed(env: Envelope) -> None:
    """Recompute the digest from the message (signed fields only, as a forger would)."""
    m = env["message"]
    reading = verify_reading({**env, "reading": {**env["reading"], "auth": "hmac"}})
    if m["assurance"] == 0:
        reading = verify_reading({**env, "reading": {**env["reading"], "auth": "allowlist"}})
    env["digest"] = (
        "0x"
        + observation_digest(
            domain_separator(DOMAIN),
            reading,
            m["gatewaySequence"],
            bytes.fromhex(m["feed"][2:]),
        ).hex()
    )


@pytest.mark.parametrize(("auth", "other"), [("hmac", "bthome"), ("oscore", "broker-acl")])
def test_auth_method_within_its_level_is_the_one_field_not_signed(
    signer: ObservationSigner, auth: str, other: str
) -> None:
    reading = Reading("sim-1", "temp", 1, 0, "Cel", 1, 1, Transport.COAP, AuthMethod(auth))
    env = json.loads(signer.sign(reading, 3).envelope)
    env["reading"]["auth"] = other
    verified = verify_envelope(env)  # same level: the envelope says this field is unsigned
    assert verified.unsigned == ("reading.auth",) == tuple(env["unsigned"])
    assert verified.assurance == AuthMethod(auth).assurance


def test_transport_relabelled_in_the_reading_block_is_detected(envelope: Envelope) -> None:
    envelope["reading"]["transport"] = "ble"
    with pytest.raises(EnvelopeError, match=r"disagrees with the signed message\.transport"):
        verify_envelope(envelope)


def test_configured_feed_is_signed_and_default_feed_is_deterministic(key: GatewayKey) -> None:
    named = ObservationSigner(key, DOMAIN, FeedMap({"sim-1/temp": "greenhouse-1 air"}))
    v = verify_envelope(named.sign(READING, 1).envelope)
    from agent.attest.eip712 import keccak256

    assert v.feed == keccak256(b"greenhouse-1 air")
    other = verify_envelope(
        ObservationSigner(GatewayKey.generate(), DOMAIN).sign(READING, 1).envelope
    )
    assert (
        other.feed
        == default_feed("sim-1", "temp")
        == keccak256(b"sim-1".ljust(32, b"\0") + b"temp".ljust(32, b"\0"))
    )


def test_unknown_transport_in_reading_block_is_refused(envelope: Envelope) -> None:
    envelope["reading"]["transport"] = "carrier-pigeon"
    with pytest.raises(EnvelopeError, match="bad reading block"):
        verify_envelope(envelope)


def _flip_byte(signature_hex: str, index: int) -> str:
    raw = bytearray.fromhex(signature_hex[2:])
    raw[index] ^= 0x01
    return "0x" + raw.hex()


@pytest.mark.parametrize("index", [0, 31, 32, 63])
def test_tampered_signature_is_detected(envelope: Envelope, index: int) -> None:
    envelope["signature"] = _flip_byte(envelope["signature"], index)
    with pytest.raises(EnvelopeError, match="signature"):
        verify_envelope(envelope)


def test_flipped_recovery_id_recovers_someone_else(envelope: Envelope) -> None:
    raw = bytearray.fromhex(envelope["signature"][2:])
    raw[64] = 55 - raw[64]
    envelope["signature"] = "0x" + raw.hex()
    with pytest.raises(EnvelopeError, match="does not recover to gateway"):
        verify_envelope(envelope)


def test_high_s_twin_signature_is_refused(envelope: Envelope) -> None:
    raw = bytes.fromhex(envelope["signature"][2:])
    s = int.from_bytes(raw[32:64])
    twin = raw[:32] + (SECP256K1_N - s).to_bytes(32) + bytes((55 - raw[64],))
    envelope["signature"] = "0x" + twin.hex()
    with pytest.raises(EnvelopeError, match="high"):
        verify_envelope(envelope)


def test_digest_field_that_disagrees_is_reported(envelope: Envelope) -> None:
    envelope["digest"] = "0x" + "00" * 32
    with pytest.raises(EnvelopeError, match="digest mismatch"):
        verify_envelope(envelope)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda e: e["message"].pop("value"), "missing field message.value"),
        (lambda e: e.pop("domain"), "missing field domain.name"),
        (lambda e: e.pop("signature"), "missing field signature"),
        (lambda e: e.update(v=1), "unsupported envelope version 1"),
        (lambda e: e.update(note="x"), "unknown field.* note: not part of envelope v2"),
        (lambda e: e["message"].update(extra=1), "unknown field.* message.extra"),
        (lambda e: e["reading"].update(auth2="hmac"), "unknown field.* reading.auth2"),
        (lambda e: e.update(unsigned=[]), "field unsigned must be"),
        (lambda e: e.pop("unsigned"), "missing field unsigned"),
        (lambda e: e["message"].update(assurance=3), "message.assurance = 3 is out of range"),
        (lambda e: e["message"].update(value=2137), "message.value must be a string"),
        (lambda e: e["message"].update(value="02137"), "canonical decimal"),
        (lambda e: e["message"].update(exponent=-129), "message.exponent = -129 is out of range"),
        (lambda e: e["message"].update(timestamp=-1), "message.timestamp = -1 is out of range"),
        (lambda e: e["message"].update(gatewaySequence=True), "must be an integer"),
        (lambda e: e["message"].update(deviceId="0x" + "ff" * 32), "not a device id label"),
        (lambda e: e["message"].update(sensor="0x" + "00" * 32), "not a sensor label"),
        (lambda e: e["domain"].update(chainId=0), "domain.chainId = 0 is out of range"),
        (lambda e: e.update(gateway="0x1234"), "field gateway is malformed"),
        (lambda e: e.update(signature="0x" + "ab" * 64), "field signature is malformed"),
        (lambda e: e.update(message=[]), "field message must be an object"),
    ],
)
def test_malformed_envelopes_give_a_one_line_reason(
    envelope: Envelope, mutate: Callable[[Envelope], object], reason: str
) -> None:
    mutate(envelope)
    with pytest.raises(EnvelopeError, match=reason) as caught:
        verify_envelope(envelope)
    assert "\n" not in str(caught.value)


def test_labels_with_bytes_after_the_padding_are_refused(envelope: Envelope) -> None:
    # "sim-1\0...\0x" would decode to a different label than the one signed.
    raw = bytearray(b"sim-1".ljust(32, b"\0"))
    raw[31] = ord("x")
    envelope["message"]["deviceId"] = "0x" + raw.hex()
    with pytest.raises(EnvelopeError, match="not a device id label"):
        verify_envelope(envelope)


def test_non_json_and_duplicate_keys_are_refused(observation: Observation) -> None:
    with pytest.raises(EnvelopeError, match="not valid JSON"):
        verify_envelope(b"\xff{")
    with pytest.raises(EnvelopeError, match="must be a JSON object"):
        verify_envelope("[1]")
    doubled = observation.envelope.replace(b'"v":2,', b'"v":2,"v":2,', 1)
    with pytest.raises(EnvelopeError, match="duplicate key 'v'"):
        verify_envelope(doubled)


def test_signatures_are_canonical_over_many_readings(signer: ObservationSigner) -> None:
    seen_v = set()
    for sequence in range(500):
        obs = signer.sign(READING, sequence)
        v = obs.signature[64]
        s = int.from_bytes(obs.signature[32:64])
        assert v in (27, 28)
        assert 0 < s <= SECP256K1_HALF_N
        seen_v.add(v)
    assert seen_v == {27, 28}


def test_signer_rejects_gateway_sequence_outside_uint64(signer: ObservationSigner) -> None:
    with pytest.raises(ValueError, match="gateway sequence"):
        signer.sign(READING, 2**64)


@pytest.mark.parametrize("unit", ["m/s", "[ppm]", '"', "\\", "%RH"])
def test_units_with_json_special_characters_round_trip(
    signer: ObservationSigner, unit: str
) -> None:
    reading = Reading(
        device_id="sim-1",
        sensor="s",
        value=-5,
        exponent=3,
        unit=unit,
        timestamp=0,
        counter=0,
        transport=Transport.BLE,
        auth=AuthMethod.BTHOME,
    )
    verified = verify_envelope(signer.sign(reading, 0).envelope)
    assert verified.reading == reading
    assert json.loads(signer.sign(reading, 0).envelope)["reading"]["value"] == "-5000"


@pytest.mark.parametrize("unit", ["Cel", "m/s", '"', "\\", '\\"{}[],:'])
@pytest.mark.parametrize(
    ("value", "exponent"), [(0, 0), (-5, 3), (2**255 - 1, -77), (-(2**255), 5), (7, -128)]
)
def test_envelope_bytes_are_exactly_compact_json_dumps_of_its_fields(
    signer: ObservationSigner, unit: str, value: int, exponent: int
) -> None:
    # The signer writes the envelope from a template; it must be byte for byte what
    # json.dumps with compact separators makes of the same fields in the same order.
    reading = Reading(
        "dev.A:1-x_", "s_2", value, exponent, unit, 2**40, 2**63, Transport.SERIAL, AuthMethod.HMAC
    )
    envelope = signer.sign(reading, 2**64 - 1).envelope
    assert envelope == json.dumps(json.loads(envelope), separators=(",", ":")).encode()
    assert verify_envelope(envelope).reading == reading


def _leaves(obj: Any, path: str = "") -> list[str]:
    if isinstance(obj, dict):
        return [leaf for k, v in obj.items() for leaf in _leaves(v, f"{path}.{k}" if path else k)]
    return [path]


def _mutated(value: Any) -> list[Any]:
    """Other plausible values of a leaf: a neighbour of an int, edited text, another list."""
    if isinstance(value, bool) or value is None:
        return [not value]
    if isinstance(value, int):
        return [value + 1, value - 1]
    if isinstance(value, str):
        hexdigit = value.startswith("0x") and len(value) > 2
        return [value[:-1] + ("0" if value[-1] != "0" else "1")] + (
            [] if hexdigit else [value + "x", value.upper() if value != value.upper() else "z"]
        )
    if isinstance(value, list):
        return [[], [*value, "reading.device"]]
    raise AssertionError(value)


def test_every_envelope_field_is_signed_checked_or_declared_unsigned(
    signer: ObservationSigner,
) -> None:
    reading = Reading(
        "sim-1", "temp", 2137, -2, "Cel", 1_700_000_000, 41, Transport.MQTT, AuthMethod.HMAC
    )
    original = json.loads(signer.sign(reading, 7).envelope)
    unsigned_ok = {"reading.auth": ["bthome"]}  # same level (2): the field the envelope names
    for leaf in _leaves(original):
        *parents, name = leaf.split(".")
        candidates = _mutated(functools.reduce(lambda o, k: o[k], leaf.split("."), original))
        for value in candidates + unsigned_ok.get(leaf, []):
            env = json.loads(json.dumps(original))
            functools.reduce(lambda o, k: o[k], parents, env)[name] = value
            try:
                verify_envelope(env)
            except EnvelopeError:
                continue
            assert leaf in env["unsigned"], f"{leaf} = {value!r} passed verification unnoticed"


def test_a_batch_splits_into_envelopes_that_each_verify_on_their_own(
    signer: ObservationSigner,
) -> None:
    readings = [
        Reading("sim-1", "temp", v, -1, "Cel", 1_700_000_000, v, Transport.MQTT, AuthMethod.HMAC)
        for v in range(1, 4)
    ]
    batch = b"[" + b",".join(signer.sign(r, i + 10).envelope for i, r in enumerate(readings)) + b"]"
    verified = [verify_envelope(env) for env in split_batch(batch)]
    assert [v.reading for v in verified] == readings
    assert [v.gateway_sequence for v in verified] == [10, 11, 12]
    # A tampered member fails alone; its neighbours still verify.
    tampered = split_batch(batch.replace(b'"value":"2"', b'"value":"9"', 1))
    with pytest.raises(EnvelopeError):
        verify_envelope(tampered[1])
    assert verify_envelope(tampered[0]).reading == readings[0]
    assert verify_envelope(tampered[2]).reading == readings[2]


@pytest.mark.parametrize("payload", [b"{}", b"[]", b"[1]", b'[{"a":1,"a":2}]', b"[", b"\xff"])
def test_what_is_not_a_batch_of_envelope_objects_is_refused(payload: bytes) -> None:
    with pytest.raises(EnvelopeError):
        split_batch(payload)
