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


async def test_each_client_has_its_own_budget_and_a_refusal_says_when_to_retry() -> None:
    # One query per 1000 s after a burst of 2: within the test, only the burst passes.
    metrics = Metrics()
    service = OracleService(
        None,  # type: ignore[arg-type]  # malformed queries never reach the journal
        contract=DOMAIN.verifying_contract,
        known_device=lambda d: True,
        metrics=metrics,
        rate=0.001,
        burst=2,
    )
    bob = [json.loads(await service.handle_json(b"{", "mqtt", client="mqtt:bob")) for _ in "abc"]
    assert [a["error"]["code"] for a in bob] == ["malformed", "malformed", "rate_limited"]
    assert bob[2]["error"]["retry_after_ms"] > 900_000
    alice = json.loads(await service.handle_json(b"{", "mqtt", client="mqtt:alice"))
    assert alice["error"]["code"] == "malformed"  # served: bob's flood is not alice's
    assert metrics.get("oracle_queries", transport="mqtt", result="rate_limited") == 1
    assert metrics.get("oracle_queries", transport="mqtt", result="malformed") == 3
