"""The oracle service's answers: calldata only for the oracle contract's own domain, and a
type v1 envelope refused with the reason."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.attest.keys import GatewayKey
from agent.attest.observation import ObservationSigner
from agent.journal import JournalEntry
from agent.metrics import Metrics
from agent.model import AuthMethod, Eip712Domain, Reading, Transport
from agent.oracle.query import QueryError
from agent.oracle.service import OracleService

DOMAIN = Eip712Domain("Edgence", "2", 31337, "0x" + "cd" * 20)


def _service(contract: str) -> Any:
    # render() does not read the journal: the entry is given.
    return OracleService(
        None,  # type: ignore[arg-type]
        contract=contract,
        known_device=lambda d: True,
        metrics=Metrics(),
    )


def test_an_answer_for_another_domain_has_no_calldata_and_a_v1_envelope_says_why() -> None:
    r = Reading("dev-1", "temp", 5, -2, "Cel", 1_767_225_600, 4, Transport.MQTT, AuthMethod.HMAC)
    envelope = ObservationSigner(GatewayKey.generate(), DOMAIN).sign(r, 3).envelope
    entry = JournalEntry(3, "dev-1", "temp", 0.0, envelope)
    same = json.loads(_service(DOMAIN.verifying_contract).render(entry))
    assert same["submit"]["to"] == DOMAIN.verifying_contract
    other = json.loads(_service("0x" + "ee" * 20).render(entry))
    assert other["submit"] is None and "would refuse it" in other["submit_refused"]
    old = entry.envelope.replace(b'{"v":2,', b'{"v":1,', 1)
    with pytest.raises(QueryError) as info:
        _service(DOMAIN.verifying_contract).render(JournalEntry(3, "dev-1", "temp", 0.0, old))
    assert info.value.code == "not_found" and "Observation type v1" in info.value.message
