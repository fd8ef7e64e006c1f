"""Signing a Reading into an Observation (EIP-712 digest, r‖s‖v signature, JSON envelope) and
verifying such an envelope from the digest up, never trusting its "digest" field.

Envelope v2 (Observation type v2, domain version "2"): UTF-8 JSON, compact separators, keys in
this order::

    {"v":2,"gateway":"0x<40 hex, lowercase>",
     "domain":{"name":str,"version":str,"chainId":int,"verifyingContract":"0x<40 hex>"},
     "message":{"feed":"0x<64 hex>","deviceId":"0x<64 hex>","sensor":"0x<64 hex>",
                "value":"<int256, decimal>","exponent":int,"unit":"0x<64 hex>","timestamp":int,
                "deviceCounter":int,"gatewaySequence":int,"transport":int,"assurance":int},
     "reading":{"device":"sim-1","sensor":"temp","value":"21.37","unit":"Cel",
                "transport":"mqtt","auth":"hmac"},
     "unsigned":["reading.auth"],
     "digest":"0x<64 hex>","signature":"0x<130 hex: r ‖ s ‖ v, v 27/28, low S>"}

"domain" and "message" are exactly the EIP-712 domain and Observation struct that are signed
(bytes32 labels left-aligned and zero-padded; value as a decimal string because int256 does not
fit a JSON number). "reading" repeats them for people and must agree with "message": its
"transport" is the signed transport code's name, its "auth" must be a method of the signed
assurance level. Which method of that level (e.g. "hmac" or "bthome", both level 2) is not
signed: "unsigned" names exactly the fields the signature does not claim, and a verifier
refuses an envelope whose list differs, or that has any field not listed above.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.attest.eip712 import domain_fields, domain_separator, observation_digest
from agent.attest.feeds import FeedMap
from agent.attest.keys import GatewayKey, recover_address
from agent.errors import EnvelopeError
from agent.model import (
    ASSURANCE_NAMES,
    INT256_MAX,
    INT256_MIN,
    TRANSPORT_CODES,
    UINT64_MAX,
    AuthMethod,
    Eip712Domain,
    Observation,
    Reading,
    Transport,
    bytes32_label,
    decimal_string,
    label_bytes32,
    transport_code,
)

ENVELOPE_VERSION = 2
UNSIGNED_FIELDS = ("reading.auth",)
"""Envelope fields the signature does not claim (the auth method within its signed level)."""
_FIELDS = {
    "": ("v", "gateway", "domain", "message", "reading", "unsigned", "digest", "signature"),
    "domain": ("name", "version", "chainId", "verifyingContract"),
    "message": (
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
    ),
    "reading": ("device", "sensor", "value", "unit", "transport", "auth"),
}
# json.dumps builds a new encoder per call when given separators; reuse one (same output).
_COMPACT = json.JSONEncoder(separators=(",", ":"))
_UNSIGNED_JSON = _COMPACT.encode(list(UNSIGNED_FIELDS))
_BYTES32_RE = re.compile(r"^0x[0-9a-fA-F]{64}\Z")
_SIGNATURE_RE = re.compile(r"^0x[0-9a-fA-F]{130}\Z")
_ADDRESS_RE = re.compile(r"^0x[0-9a-fA-F]{40}\Z")
_DECIMAL_INT_RE = re.compile(r"^-?(?:0|[1-9][0-9]{0,77})\Z")
# Labels repeat (a few devices x sensors); bound the cache so odd input cannot grow it forever.
_LABEL_CACHE_MAX = 4096


@dataclass(frozen=True, slots=True)
class VerifiedObservation:
    """What a valid envelope proves: `signer` signed `reading` as number `gateway_sequence`."""

    signer: str  # 0x-lowercase address recovered from the signature (equals "gateway")
    digest: bytes
    signature: bytes
    gateway_sequence: int
    reading: Reading
    domain: Eip712Domain
    feed: bytes

    @property
    def assurance(self) -> int:
        return self.reading.auth.assurance

    @property
    def transport_code(self) -> int:
        return transport_code(self.reading.transport)

    @property
    def unsigned(self) -> tuple[str, ...]:
        return UNSIGNED_FIELDS


class ObservationSigner:
    """Signs Readings with the gateway key under one EIP-712 domain, each into its feed."""

    __slots__ = (
        "_domain",
        "_domain_sep",
        "_feeds",
        "_key",
        "_label_hex",
        "_label_json",
        "_prefix",
    )

    def __init__(self, key: GatewayKey, domain: Eip712Domain, feeds: FeedMap | None = None) -> None:
        self._key = key
        self._domain = domain
        self._feeds = feeds or FeedMap()
        self._domain_sep = domain_separator(domain)
        head = {
            "v": ENVELOPE_VERSION,
            "gateway": key.address,
            "domain": domain_fields(domain),
        }
        # The constant head of every envelope, left open so the body can be appended.
        self._prefix = _COMPACT.encode(head)[:-1] + ","
        self._label_hex: dict[str, str] = {}
        self._label_json: dict[str, str] = {}

    @property
    def gateway(self) -> str:
        return self._key.address

    @property
    def domain(self) -> Eip712Domain:
        return self._domain

    def _hex32(self, label: str, what: str) -> str:
        cached = self._label_hex.get(label)
        if cached is None:
            if len(self._label_hex) >= _LABEL_CACHE_MAX:
                self._label_hex.clear()
            cached = self._label_hex[label] = "0x" + label_bytes32(label, what).hex()
        return cached

    def _json(self, text: str) -> str:
        """`text` as a JSON string (cached like the labels: a unit may hold `"` or `\\`)."""
        cached = self._label_json.get(text)
        if cached is None:
            if len(self._label_json) >= _LABEL_CACHE_MAX:
                self._label_json.clear()
            cached = self._label_json[text] = _COMPACT.encode(text)
        return cached

    def sign(self, reading: Reading, gateway_sequence: int) -> Observation:
        feed = self._feeds.feed(reading.device_id, reading.sensor)
        digest = observation_digest(self._domain_sep, reading, gateway_sequence, feed)
        signature = self._key.sign_digest(digest)
        device, sensor, unit = reading.device_id, reading.sensor, reading.unit
        # The body written straight into the envelope's fixed layout: the same bytes as
        # json.dumps(compact) of the documented key order (tests compare the two), at a
        # fraction of its cost per reading. Device and sensor ids are NAME_RE (nothing to
        # escape: observation_digest checked them), numbers are ints, the rest is escaped once.
        envelope = (
            f'{self._prefix}"message":{{"feed":"0x{feed.hex()}",'
            f'"deviceId":"{self._hex32(device, "device id")}",'
            f'"sensor":"{self._hex32(sensor, "sensor")}",'
            f'"value":"{int(reading.value)}","exponent":{int(reading.exponent)},'
            f'"unit":"{self._hex32(unit, "unit")}","timestamp":{int(reading.timestamp)},'
            f'"deviceCounter":{int(reading.counter)},"gatewaySequence":{int(gateway_sequence)},'
            f'"transport":{transport_code(reading.transport)},'
            f'"assurance":{int(reading.auth.assurance)}}},'
            f'"reading":{{"device":"{device}","sensor":"{sensor}",'
            f'"value":"{decimal_string(reading.value, reading.exponent)}",'
            f'"unit":{self._json(unit)},"transport":{self._json(reading.transport.value)},'
            f'"auth":{self._json(reading.auth.value)}}},'
            f'"unsigned":{_UNSIGNED_JSON},"digest":"0x{digest.hex()}",'
            f'"signature":"0x{signature.hex()}"}}'
        )
        return Observation(
            reading=reading,
            gateway_sequence=gateway_sequence,
            gateway=self._key.address,
            digest=digest,
            signature=signature,
            envelope=envelope.encode("utf-8"),
        )


# --- verification ---------------------------------------------------------------------------


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Parsers disagree on which duplicate wins; a reader could be shown one value while
    # another was checked, so duplicates are refused outright.
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise EnvelopeError(f"duplicate key {key!r} in envelope")
        obj[key] = value
    return obj


def _get(obj: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path, or EnvelopeError naming the missing field."""
    value: Any = obj
    walked: list[str] = []
    for part in path.split("."):
        if not isinstance(value, Mapping):
            raise EnvelopeError(f"field {'.'.join(walked)} must be an object")
        walked.append(part)
        if part not in value:
            raise EnvelopeError(f"missing field {path}")
        value = value[part]
    return value


def _get_str(obj: Mapping[str, Any], path: str, pattern: re.Pattern[str] | None = None) -> str:
    value = _get(obj, path)
    if not isinstance(value, str):
        raise EnvelopeError(f"field {path} must be a string")
    if pattern is not None and not pattern.match(value):
        raise EnvelopeError(f"field {path} is malformed")
    return value


def _get_int(obj: Mapping[str, Any], path: str, lo: int, hi: int) -> int:
    value = _get(obj, path)
    if type(value) is not int:
        raise EnvelopeError(f"field {path} must be an integer")
    if not lo <= value <= hi:
        raise EnvelopeError(f"field {path} = {value} is out of range [{lo}, {hi}]")
    return value


def _get_label(obj: Mapping[str, Any], path: str, what: str) -> str:
    raw = bytes.fromhex(_get_str(obj, path, _BYTES32_RE)[2:])
    try:
        label = bytes32_label(raw)
        canonical = label_bytes32(label, what) == raw
    except (UnicodeDecodeError, ValueError):
        canonical = False
    if not canonical:
        raise EnvelopeError(f"field {path} is not a {what} label (ASCII, zero-padded bytes32)")
    return label


def read_domain(env: Mapping[str, Any]) -> Eip712Domain:
    """The EIP-712 domain of a signed statement's JSON (`domain.*`), or EnvelopeError."""
    try:
        return Eip712Domain(
            name=_get_str(env, "domain.name"),
            version=_get_str(env, "domain.version"),
            chain_id=_get_int(env, "domain.chainId", 1, 2**256 - 1),
            verifying_contract=_get_str(env, "domain.verifyingContract", _ADDRESS_RE),
        )
    except ValueError as exc:
        raise EnvelopeError(f"bad domain: {exc}") from None


def parse_document(data: bytes | str | Mapping[str, Any]) -> Mapping[str, Any]:
    """A JSON object (duplicate keys refused), or EnvelopeError saying why not."""
    return _parse(data)


def _parse(data: bytes | str | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(data, Mapping):
        return data
    try:
        parsed = json.loads(data, object_pairs_hook=_no_duplicate_keys)
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise EnvelopeError(f"envelope is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise EnvelopeError("envelope must be a JSON object")
    return parsed


def split_batch(data: bytes | str) -> list[Mapping[str, Any]]:
    """The envelopes of a batched upstream message (bridge.envelopes_per_message > 1): a JSON
    array of envelope objects, each to be checked with `verify_envelope` on its own (a batch
    vouches for nothing as a whole); EnvelopeError when it is not such an array."""
    try:
        parsed = json.loads(data, object_pairs_hook=_no_duplicate_keys)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EnvelopeError(f"batch is not valid JSON: {exc}") from None
    if not isinstance(parsed, list) or not parsed:
        raise EnvelopeError("batch must be a non-empty JSON array of envelope objects")
    if not all(isinstance(env, dict) for env in parsed):
        raise EnvelopeError("every element of a batch must be an envelope object")
    return parsed


def verify_envelope(data: bytes | str | Mapping[str, Any]) -> VerifiedObservation:
    """Check an envelope from its signed fields up; raise EnvelopeError with the reason."""
    env = _parse(data)
    version = _get(env, "v")
    if type(version) is not int or version != ENVELOPE_VERSION:
        raise EnvelopeError(
            f"unsupported envelope version {version!r} (expected 2: Observation type v2 under "
            'domain version "2"; version 1 did not sign feed, transport and assurance)'
        )
    for where, allowed in _FIELDS.items():
        block = env if not where else env.get(where, {})
        if not isinstance(block, Mapping):
            raise EnvelopeError(f"field {where} must be an object")
        extra = sorted(set(block) - set(allowed))
        if extra:
            names = ", ".join((f"{where}." if where else "") + k for k in extra)
            raise EnvelopeError(f"unknown field(s) {names}: not part of envelope v2")
    unsigned = _get(env, "unsigned")
    if unsigned != list(UNSIGNED_FIELDS):
        raise EnvelopeError(
            f"field unsigned must be {list(UNSIGNED_FIELDS)} (the fields this signature "
            f"does not claim), not {unsigned!r}"
        )
    gateway = _get_str(env, "gateway", _ADDRESS_RE).lower()

    domain = read_domain(env)

    device = _get_label(env, "message.deviceId", "device id")
    sensor = _get_label(env, "message.sensor", "sensor")
    unit = _get_label(env, "message.unit", "unit")
    value_text = _get_str(env, "message.value")
    if not _DECIMAL_INT_RE.match(value_text) or value_text == "-0":
        raise EnvelopeError("field message.value must be an int256 as a canonical decimal string")
    value = int(value_text)
    if not INT256_MIN <= value <= INT256_MAX:
        raise EnvelopeError("field message.value is out of range for int256")
    exponent = _get_int(env, "message.exponent", -128, 127)
    timestamp = _get_int(env, "message.timestamp", 0, UINT64_MAX)
    counter = _get_int(env, "message.deviceCounter", 0, UINT64_MAX)
    sequence = _get_int(env, "message.gatewaySequence", 0, UINT64_MAX)
    feed = bytes.fromhex(_get_str(env, "message.feed", _BYTES32_RE)[2:])
    transport_signed = _get_int(env, "message.transport", 0, 255)
    assurance = _get_int(env, "message.assurance", 0, len(ASSURANCE_NAMES) - 1)

    try:
        transport = Transport(_get_str(env, "reading.transport"))
        auth = AuthMethod(_get_str(env, "reading.auth"))
    except ValueError as exc:
        raise EnvelopeError(f"bad reading block: {exc}") from None
    if TRANSPORT_CODES.get(transport.value) != transport_signed:
        raise EnvelopeError(
            f"reading.transport {transport.value!r} disagrees with the signed message.transport "
            f"({transport_signed})"
        )
    if auth.assurance != assurance:
        raise EnvelopeError(
            f"reading.auth {auth.value!r} is assurance {auth.assurance} "
            f"({ASSURANCE_NAMES[auth.assurance]}) but the signed message.assurance is "
            f"{assurance} ({ASSURANCE_NAMES[assurance]})"
        )
    reading = Reading(
        device_id=device,
        sensor=sensor,
        value=value,
        exponent=exponent,
        unit=unit,
        timestamp=timestamp,
        counter=counter,
        transport=transport,
        auth=auth,
    )
    for shown_path, signed_path, signed in (
        ("reading.device", "message.deviceId", device),
        ("reading.sensor", "message.sensor", sensor),
        ("reading.unit", "message.unit", unit),
        ("reading.value", "message.value", reading.decimal),
    ):
        shown = _get_str(env, shown_path)
        if shown != signed:
            raise EnvelopeError(
                f"{shown_path} {shown!r} disagrees with the signed {signed_path} ({signed!r})"
            )

    digest = observation_digest(domain_separator(domain), reading, sequence, feed)
    claimed_digest = _get_str(env, "digest", _BYTES32_RE)
    if bytes.fromhex(claimed_digest[2:]) != digest:
        raise EnvelopeError(f"digest mismatch: the signed fields hash to 0x{digest.hex()}")
    signature = bytes.fromhex(_get_str(env, "signature", _SIGNATURE_RE)[2:])
    signer = recover_address(digest, signature)
    if signer != gateway:
        raise EnvelopeError(f"signature does not recover to gateway {gateway} (but to {signer})")
    return VerifiedObservation(
        signer=signer,
        digest=digest,
        signature=signature,
        gateway_sequence=sequence,
        reading=reading,
        domain=domain,
        feed=feed,
    )
