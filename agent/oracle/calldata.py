"""ObservationOracle calldata for verified observations (submit, submitBatch), and the check of
an oracle answer: its envelope, and that its calldata is exactly submit() of it. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from eth_abi.abi import encode as abi_encode

from agent.attest.eip712 import keccak256
from agent.attest.observation import VerifiedObservation, parse_document, verify_envelope
from agent.errors import EnvelopeError
from agent.model import ASSURANCE_NAMES, label_bytes32

OBSERVATION_TUPLE = "(bytes32,bytes32,bytes32,int256,int8,bytes32,uint64,uint64,uint64,uint8,uint8)"
SUBMIT_SIGNATURE = f"submit(address,{OBSERVATION_TUPLE},bytes)"
SUBMIT_BATCH_SIGNATURE = f"submitBatch(address[],{OBSERVATION_TUPLE}[],bytes[])"
SUBMIT_SELECTOR = keccak256(SUBMIT_SIGNATURE.encode("ascii"))[:4]
SUBMIT_BATCH_SELECTOR = keccak256(SUBMIT_BATCH_SIGNATURE.encode("ascii"))[:4]


def observation_tuple(v: VerifiedObservation) -> tuple[Any, ...]:
    """The ObservationOracle.Observation struct of a verified envelope, as eth-abi takes it."""
    r = v.reading
    return (
        v.feed,
        label_bytes32(r.device_id, "device id"),
        label_bytes32(r.sensor, "sensor"),
        r.value,
        r.exponent,
        label_bytes32(r.unit, "unit"),
        r.timestamp,
        r.counter,
        v.gateway_sequence,
        v.transport_code,
        v.assurance,
    )


def submit_calldata(v: VerifiedObservation) -> bytes:
    """Calldata of ObservationOracle.submit(gateway, observation, signature)."""
    return SUBMIT_SELECTOR + abi_encode(
        ["address", OBSERVATION_TUPLE, "bytes"], [v.signer, observation_tuple(v), v.signature]
    )


def submit_batch_calldata(items: Sequence[VerifiedObservation]) -> bytes:
    """Calldata of ObservationOracle.submitBatch(gateways, observations, signatures)."""
    return SUBMIT_BATCH_SELECTOR + abi_encode(
        ["address[]", f"{OBSERVATION_TUPLE}[]", "bytes[]"],
        [
            [v.signer for v in items],
            [observation_tuple(v) for v in items],
            [v.signature for v in items],
        ],
    )


def check_answer(answer: Mapping[str, Any]) -> VerifiedObservation:
    """Verify an oracle answer: its envelope, and that its calldata (if any) is exactly
    ObservationOracle.submit of that envelope to the contract the envelope was signed for."""
    if answer.get("ok") is not True or "observation" not in answer:
        raise EnvelopeError('not a successful oracle answer (no "observation")')
    v = verify_envelope(answer["observation"])
    submit = answer.get("submit")
    if submit is None:
        return v
    if not isinstance(submit, Mapping):
        raise EnvelopeError("field submit of the answer must be an object or null")
    to = str(submit.get("to", ""))
    if to.lower() != v.domain.verifying_contract.lower():
        raise EnvelopeError(
            f"the answer's calldata goes to {to}, but the observation was signed for "
            f"{v.domain.verifying_contract}"
        )
    if str(submit.get("data", "")).lower() != "0x" + submit_calldata(v).hex():
        raise EnvelopeError("the answer's calldata is not submit() of its observation")
    return v


def verify_document(data: bytes | str | Mapping[str, Any]) -> list[str]:
    """What `edgence-agent verify` prints for an envelope or an oracle answer (EnvelopeError
    when either is invalid): the signed fields, then what the signature does not claim."""
    doc = parse_document(data)
    answer = "observation" in doc and "ok" in doc
    v = check_answer(doc) if answer else verify_envelope(doc)
    r = v.reading
    lines = [
        f"ok signer={v.signer} seq={v.gateway_sequence} device={r.device_id} "
        f"sensor={r.sensor} value={r.decimal} unit={r.unit} counter={r.counter} "
        f"timestamp={r.timestamp} chainId={v.domain.chain_id} "
        f"feed=0x{v.feed.hex()} transport={r.transport.value} "
        f"assurance={v.assurance} ({ASSURANCE_NAMES[v.assurance]}) "
        f"contract={v.domain.verifying_contract}"
    ]
    for field in v.unsigned:
        lines.append(
            f"  not signed: {field} ({r.auth.value!r}: the signature claims only its "
            f"assurance level {v.assurance}, not which method of that level)"
        )
    if answer:
        if doc.get("submit") is None:
            why = doc.get("submit_refused", "no reason given")
            lines.append(f"  answer: no calldata offered: {why}")
        else:
            lines.append(
                f"  answer: calldata is submit() of this observation to {doc['submit']['to']}"
            )
    return lines
