"""MasternodeRegistry, ObservationOracle and ConsumerExample on a real anvil, driven with
observations signed by the agent's own ObservationSigner."""

from __future__ import annotations

from typing import Any

import pytest
from eth_account.messages import encode_typed_data

from agent.attest.eip712 import OBSERVATION_TYPES
from agent.attest.keys import SECP256K1_N
from agent.attest.observation import verify_envelope
from agent.model import label_bytes32
from agent.oracle import observation_tuple
from tests.integration.oracle.conftest import (
    COLLATERAL,
    MAX_AGE_S,
    QUORUM,
    WINDOW_BLOCKS,
    Deployment,
    Reverted,
    obs_args,
    reading,
)

DEV = label_bytes32("dev-1", "device id")
TEMP = label_bytes32("temp", "sensor")


def rejected(d: Deployment, *args: Any) -> Reverted:
    with pytest.raises(Reverted) as info:
        d.chain.call(d.oracle, "submit", *args)
    return info.value


def test_agent_digest_equals_eth_account_and_the_contract_view(deployment: Deployment) -> None:
    d = deployment
    key = d.masternode(register=False)
    o = d.signer(key).sign(reading(-1234, exponent=-3), gateway_sequence=77)
    v = verify_envelope(o.envelope)
    msg = {
        "deviceId": label_bytes32("dev-1", "device id"),
        "sensor": label_bytes32("temp", "sensor"),
        "value": -1234,
        "exponent": -3,
        "unit": label_bytes32("Cel", "unit"),
        "timestamp": v.reading.timestamp,
        "deviceCounter": 1,
        "gatewaySequence": 77,
    }
    domain = {
        "name": "Edgence",
        "version": "1",
        "chainId": d.chain.node.chain_id,
        "verifyingContract": d.oracle.address,
    }
    signable = encode_typed_data(
        full_message={
            "types": OBSERVATION_TYPES,
            "primaryType": "Observation",
            "domain": domain,
            "message": msg,
        }
    )
    independent = b"\x19\x01" + signable.header + signable.body
    from agent.attest.eip712 import keccak256

    (on_chain,) = d.chain.call(d.oracle, "hashTypedData", observation_tuple(v))
    assert o.digest == keccak256(independent) == on_chain
    (signer,) = d.chain.call(d.oracle, "recoverSigner", observation_tuple(v), o.signature)
    assert signer.lower() == key.address


def test_three_masternodes_median_accepted_at_quorum_and_read_by_the_consumer(
    deployment: Deployment,
) -> None:
    d = deployment
    keys = [d.masternode(vrf_byte=2 + i % 2) for i in range(3)]
    assert d.chain.call(d.registry, "activeCount") == (3,)
    consumer = d.chain.deploy(
        "ConsumerExample",
        d.oracle.address,
        DEV,
        TEMP,
        label_bytes32("Cel", "unit"),
        MAX_AGE_S,
        0,  # frost below 0.000 Cel
    )
    values = [2150, -75, 2190]  # hundredths of a degree as seen by three gateways
    for i, (key, value) in enumerate(zip(keys, values, strict=True)):
        o = d.signer(key).sign(reading(value, counter=10 + i), gateway_sequence=5)
        (accepted,) = d.chain.call(d.oracle, "submit", *obs_args(o))
        assert accepted == (i == QUORUM - 1)
        d.chain.transact(key, d.oracle, "submit", *obs_args(o))
        if i < QUORUM - 1:
            assert rejected_latest(d) == "NoValue"
    (value,) = d.chain.call(d.oracle, "latest", DEV, TEMP)
    assert value[0] == 2150 and value[1] == -2 and value[5] == 3  # median, exponent, reporters
    d.chain.transact(d.chain.dev, consumer, "refresh")
    assert d.chain.call(consumer, "lastMilli") == (21500,)
    assert d.chain.call(consumer, "frost") == (False,)


def rejected_latest(d: Deployment) -> str:
    with pytest.raises(Reverted) as info:
        d.chain.call(d.oracle, "latest", DEV, TEMP)
    return info.value.name


def test_each_bad_observation_is_rejected_with_its_reason(deployment: Deployment) -> None:
    d = deployment
    good, other = d.masternode(), d.masternode(vrf_byte=3)
    stranger = d.masternode(register=False)
    signer = d.signer(good)
    now = d.chain.block_timestamp()

    # Forged: another key's signature presented as the registered gateway's.
    forged = d.signer(stranger).sign(reading(1), gateway_sequence=1)
    gateway, tup, sig = obs_args(forged)
    err = rejected(d, good.address, tup, sig)
    assert err.name == "SignerMismatch" and stranger.address[2:] in err.reason.lower()
    # Forged by editing the value after signing: recovers to some other address.
    o = signer.sign(reading(1), gateway_sequence=1)
    gateway, tup, sig = obs_args(o)
    assert rejected(d, gateway, (*tup[:2], 999, *tup[3:]), sig).name == "SignerMismatch"
    # High S: the same signature mirrored (s -> n - s, v flipped) still recovers, but is refused.
    s = int.from_bytes(sig[32:64])
    high = sig[:32] + (SECP256K1_N - s).to_bytes(32) + bytes([55 - sig[64]])
    assert rejected(d, gateway, tup, high).name == "HighS"
    # Unregistered masternode.
    lone = d.signer(stranger).sign(reading(1), gateway_sequence=1)
    assert rejected(d, *obs_args(lone)).name == "NotRegistered"
    # Stale: older than maxAge against block.timestamp.
    stale = signer.sign(reading(1, timestamp=now - MAX_AGE_S - 30), gateway_sequence=2)
    assert rejected(d, *obs_args(stale)).name == "Stale"
    # Replayed: accepted once, refused the second time, and so is any lower sequence.
    d.chain.transact(good, d.oracle, "submit", *obs_args(o))
    err = rejected(d, *obs_args(o))
    assert err.name == "Replayed" and err.reason.endswith(", 1, 1)")
    # Inactive: the other masternode stops its heartbeats for longer than the window.
    late = d.signer(other).sign(reading(1), gateway_sequence=1)
    d.chain.mine(WINDOW_BLOCKS + 1)
    assert rejected(d, *obs_args(late)).name == "Inactive"


def test_a_batch_keeps_the_good_and_logs_each_refusal(deployment: Deployment) -> None:
    d = deployment
    key = d.masternode()
    signer = d.signer(key)
    obs = [signer.sign(reading(100 + i, counter=i + 1), gateway_sequence=i + 1) for i in range(4)]
    args = [obs_args(o) for o in obs]
    args[2] = (args[2][0], args[2][1], args[1][2])  # a signature of another observation
    rc = d.chain.transact(
        key,
        d.oracle,
        "submitBatch",
        [a[0] for a in args],
        [a[1] for a in args],
        [a[2] for a in args],
    )
    from agent.chainclient.tx import event_topic

    rejected_topic = event_topic(d.oracle.art.event("ObservationRejected"))
    accepted_topic = event_topic(d.oracle.art.event("ObservationAccepted"))
    topics = [lg["topics"][0] for lg in rc["logs"]]
    assert topics.count(accepted_topic) == 3 and topics.count(rejected_topic) == 1
    assert d.chain.call(d.oracle, "lastSequence", key.address) == (4,)


def test_withdrawn_collateral_removes_the_masternode_and_refuses_its_observations(
    deployment: Deployment,
) -> None:
    d = deployment
    a, b = d.masternode(), d.masternode(vrf_byte=3)
    assert d.chain.call(d.registry, "count") == (2,)
    before = int(str(d.chain.node.rpc("eth_getBalance", [a.address, "latest"])), 16)
    rc = d.chain.transact(a, d.registry, "withdraw")
    after = int(str(d.chain.node.rpc("eth_getBalance", [a.address, "latest"])), 16)
    gas_paid = int(rc["gasUsed"], 16) * int(rc["effectiveGasPrice"], 16)
    assert after - before == COLLATERAL - gas_paid
    assert d.chain.call(d.registry, "count") == (1,)
    assert d.chain.call(d.registry, "masternodeAt", 0) == (b.address,)
    assert d.chain.call(d.registry, "isRegistered", a.address) == (False,)
    o = d.signer(a).sign(reading(5), gateway_sequence=9)
    assert rejected(d, *obs_args(o)).name == "NotRegistered"
    with pytest.raises(Reverted) as info:
        d.chain.call(d.registry, "withdraw", sender=a.address)
    assert info.value.name == "NotRegistered"


def test_missed_heartbeats_make_a_masternode_inactive_until_it_resumes(
    deployment: Deployment,
) -> None:
    d = deployment
    key = d.masternode()
    signer = d.signer(key)
    d.chain.mine(WINDOW_BLOCKS - 1)
    assert d.chain.call(d.registry, "isActive", key.address) == (True,)
    with pytest.raises(Reverted) as info:
        d.chain.call(d.registry, "reportInactive", key.address)
    assert info.value.name == "StillActive"
    d.chain.mine(2)
    assert d.chain.call(d.registry, "isActive", key.address) == (False,)
    rc = d.chain.transact(d.chain.dev, d.registry, "reportInactive", key.address)
    assert _events(d, rc) == ["Inactive"]
    assert rejected(d, *obs_args(signer.sign(reading(1), gateway_sequence=1))).name == "Inactive"

    rc = d.chain.transact(key, d.registry, "heartbeat")
    assert _events(d, rc) == ["Resumed", "Heartbeat"]
    assert d.chain.call(d.registry, "isActive", key.address) == (True,)
    d.chain.transact(
        key, d.oracle, "submit", *obs_args(signer.sign(reading(1), gateway_sequence=2))
    )
    # A heartbeat in time is just a heartbeat.
    assert _events(d, d.chain.transact(key, d.registry, "heartbeat")) == ["Heartbeat"]


def test_registration_rules(deployment: Deployment) -> None:
    d = deployment
    key = d.masternode(register=False)
    vrf = b"\x02" + bytes(32)
    with pytest.raises(Reverted) as info:
        d.chain.transact(key, d.registry, "register", vrf, value=COLLATERAL - 1)
    assert info.value.name == "WrongCollateral"
    with pytest.raises(Reverted) as info:
        d.chain.transact(key, d.registry, "register", b"\x04" + bytes(32), value=COLLATERAL)
    assert info.value.name == "BadVrfPublicKey"
    d.chain.transact(key, d.registry, "register", vrf, value=COLLATERAL)
    assert d.chain.call(d.registry, "vrfPublicKey", key.address) == (vrf,)
    (at,) = d.chain.call(d.registry, "registeredAt", key.address)
    assert at == d.chain.block_number()
    with pytest.raises(Reverted) as info:
        d.chain.transact(key, d.registry, "register", vrf, value=COLLATERAL)
    assert info.value.name == "AlreadyRegistered"


def _events(d: Deployment, rc: dict[str, Any]) -> list[str]:
    from agent.chainclient.tx import event_topic

    names = {
        event_topic(item): item["name"] for item in d.registry.art.abi if item["type"] == "event"
    }
    return [names[lg["topics"][0]] for lg in rc["logs"] if lg["topics"][0] in names]
