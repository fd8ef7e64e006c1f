"""MasternodeRegistry, ObservationOracle and ConsumerExample on a real anvil, driven with
observations signed by the agent's own ObservationSigner (Observation type v2)."""

from __future__ import annotations

from typing import Any

import pytest
from eth_abi.abi import decode as abi_decode
from eth_account.messages import encode_typed_data

from agent.attest.eip712 import OBSERVATION_TYPES, keccak256
from agent.attest.feeds import default_feed
from agent.attest.keys import SECP256K1_N, GatewayKey
from agent.attest.observation import verify_envelope
from agent.chainclient.contractclient import revert_reason
from agent.chainclient.tx import event_topic
from agent.model import AuthMethod, Transport, label_bytes32
from agent.oracle import observation_tuple
from tests.integration.oracle.conftest import (
    COLLATERAL,
    MAX_AGE_S,
    QUORUM,
    WINDOW_BLOCKS,
    Deployment,
    Reverted,
    batch_args,
    obs_args,
    reading,
)

DEV = label_bytes32("dev-1", "device id")
TEMP = label_bytes32("temp", "sensor")
FEED = default_feed("dev-1", "temp")


OBSERVATION_KEYS = [f["name"] for f in OBSERVATION_TYPES["Observation"]]


def _domain(d: Deployment) -> dict[str, Any]:
    return {
        "name": "Edgence",
        "version": "2",
        "chainId": d.chain.node.chain_id,
        "verifyingContract": d.oracle.address,
    }


def rejected(d: Deployment, *args: Any) -> Reverted:
    with pytest.raises(Reverted) as info:
        d.chain.call(d.oracle, "submit", *args)
    return info.value


def events(d: Deployment, rc: dict[str, Any], name: str) -> list[dict[str, Any]]:
    topic = event_topic(d.oracle.art.event(name))
    return [lg for lg in rc["logs"] if lg["topics"][0] == topic]


def rejections(d: Deployment, rc: dict[str, Any]) -> list[str]:
    """The reasons of a batch's ObservationRejected events, in order."""
    out = []
    for lg in events(d, rc, "ObservationRejected"):
        _seq, reason = abi_decode(["uint64", "bytes"], bytes.fromhex(lg["data"][2:]))
        out.append(revert_reason(d.oracle.art.abi, "0x" + bytes(reason).hex()))
    return out


def latest(d: Deployment, feed: bytes = FEED) -> tuple[Any, ...]:
    (value,) = d.chain.call(d.oracle, "latest", feed)
    return tuple(value)


def test_agent_digest_equals_eth_account_and_the_contract_view(deployment: Deployment) -> None:
    d = deployment
    key = d.masternode(register=False)
    r = reading(-1234, exponent=-3, transport=Transport.BLE, auth=AuthMethod.BTHOME)
    o = d.signer(key).sign(r, gateway_sequence=77)
    v = verify_envelope(o.envelope)
    msg = {
        "feed": FEED,
        "deviceId": DEV,
        "sensor": TEMP,
        "value": -1234,
        "exponent": -3,
        "unit": label_bytes32("Cel", "unit"),
        "timestamp": v.reading.timestamp,
        "deviceCounter": 1,
        "gatewaySequence": 77,
        "transport": 3,
        "assurance": 2,
    }
    domain = {
        "name": "Edgence",
        "version": "2",
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
    (on_chain,) = d.chain.call(d.oracle, "hashTypedData", observation_tuple(v))
    assert o.digest == keccak256(independent) == on_chain
    (signer,) = d.chain.call(d.oracle, "recoverSigner", observation_tuple(v), o.signature)
    assert signer.lower() == key.address
    assert d.chain.call(d.oracle, "defaultFeed", DEV, TEMP) == (FEED,)


def test_three_masternodes_median_accepted_at_quorum_and_read_by_the_consumer(
    deployment: Deployment,
) -> None:
    d = deployment
    d.create_feed(FEED, min_assurance=2)
    keys = [d.masternode(vrf_byte=2 + i % 2) for i in range(3)]
    assert d.chain.call(d.registry, "activeCount") == (3,)
    consumer = d.chain.deploy(
        "ConsumerExample",
        d.oracle.address,
        FEED,
        label_bytes32("Cel", "unit"),
        MAX_AGE_S,
        3,  # at least three masternodes behind the value
        2,  # every device authenticated by its own MAC
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
    value, exponent, unit, _observed, reporters, min_assurance, *_ = latest(d)
    assert (value, exponent, unit, reporters, min_assurance) == (
        2150,
        -2,
        label_bytes32("Cel", "unit"),
        3,
        2,
    )
    d.chain.transact(d.chain.dev, consumer, "refresh")
    assert d.chain.call(consumer, "lastMilli") == (21500,)
    assert d.chain.call(consumer, "frost") == (False,)


def rejected_latest(d: Deployment) -> str:
    with pytest.raises(Reverted) as info:
        d.chain.call(d.oracle, "latest", FEED)
    return info.value.name


def test_each_bad_observation_is_rejected_with_its_reason(deployment: Deployment) -> None:
    d = deployment
    d.create_feed(FEED, min_assurance=1)
    good, other = d.masternode(), d.masternode(vrf_byte=3)
    stranger = d.masternode(register=False)
    signer = d.signer(good)
    now = d.chain.block_timestamp()

    # Forged: another key's signature presented as the registered gateway's.
    forged = d.signer(stranger).sign(reading(1), gateway_sequence=1)
    gateway, tup, sig = obs_args(forged)
    err = rejected(d, good.address, tup, sig)
    assert err.name == "SignerMismatch" and stranger.address[2:] in err.reason.lower()
    # Forged by editing a signed field after signing: recovers to some other address.
    o = signer.sign(reading(1), gateway_sequence=1)
    gateway, tup, sig = obs_args(o)
    assert rejected(d, gateway, (*tup[:3], 999, *tup[4:]), sig).name == "SignerMismatch"
    # The relabelling: an allowlisted reading presented as device-authenticated.
    weak = signer.sign(reading(1, auth=AuthMethod.ALLOWLIST), gateway_sequence=1)
    gateway, tup, sig = obs_args(weak)
    assert tup[-1] == 0
    assert rejected(d, gateway, (*tup[:-1], 2), sig).name == "SignerMismatch"
    # ...and, honestly labelled, below the feed's minimum assurance.
    err = rejected(d, *obs_args(weak))
    assert err.reason == "AssuranceTooLow(0, 1)"
    # A level that does not exist, even signed by a registered masternode.
    from agent.attest.eip712 import hash_typed_data

    m = {k: v for k, v in zip(OBSERVATION_KEYS, tup, strict=True)}
    m["assurance"] = 3
    digest = hash_typed_data(OBSERVATION_TYPES, "Observation", _domain(d), m)
    made_up = (*tup[:-1], 3)
    assert rejected(d, good.address, made_up, good.sign_digest(digest)).reason == "BadAssurance(3)"
    # High S: the same signature mirrored (s -> n - s, v flipped) still recovers, but is refused.
    s = int.from_bytes(sig[32:64])
    high = sig[:32] + (SECP256K1_N - s).to_bytes(32) + bytes([55 - sig[64]])
    assert rejected(d, *obs_args(o)[:2], high).name == "HighS"
    # Unregistered masternode.
    lone = d.signer(stranger).sign(reading(1), gateway_sequence=1)
    assert rejected(d, *obs_args(lone)).name == "NotRegistered"
    # A feed nobody created.
    unknown = signer.sign(reading(1, sensor="hum"), gateway_sequence=1)
    assert rejected(d, *obs_args(unknown)).name == "UnknownFeed"
    # Stale: older than the feed's maxAge against block.timestamp.
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


def test_early_submission_of_one_feed_never_blocks_another_but_a_replay_is_refused(
    deployment: Deployment,
) -> None:
    """The issue's griefing attack: observations are public upstream; a third party submits a
    gateway's newest observation (feed B) before the gateway submits its older one (feed A)."""
    d = deployment
    feed_a, feed_b = default_feed("dev-1", "temp"), default_feed("dev-2", "temp")
    d.create_feed(feed_a, quorum=1)
    d.create_feed(feed_b, quorum=1)
    gw = d.masternode()
    griefer = GatewayKey.generate()  # any account, not a masternode
    d.chain.fund(griefer)
    signer = d.signer(gw)
    older_a = signer.sign(reading(2100, device="dev-1"), gateway_sequence=41)
    newest_b = signer.sign(reading(1800, device="dev-2"), gateway_sequence=42)

    d.chain.transact(griefer, d.oracle, "submit", *obs_args(newest_b))
    assert latest(d, feed_b)[0] == 1800
    # The gateway's older observation of the other feed is still accepted...
    d.chain.transact(gw, d.oracle, "submit", *obs_args(older_a))
    assert latest(d, feed_a)[0] == 2100
    # ...and a true replay of either is refused, by anyone.
    for o, feed in ((older_a, feed_a), (newest_b, feed_b)):
        err = rejected(d, *obs_args(o))
        assert err.name == "Replayed" and feed.hex() in err.reason
    # Within one feed, an older sequence after a newer one is a replay too.
    d.chain.transact(
        griefer, d.oracle, "submit", *obs_args(signer.sign(reading(5, device="dev-2"), 50))
    )
    assert rejected(d, *obs_args(signer.sign(reading(6, device="dev-2"), 49))).name == "Replayed"
    assert d.chain.call(d.oracle, "lastSequence", feed_a, gw.address) == (41,)
    assert d.chain.call(d.oracle, "lastSequence", feed_b, gw.address) == (50,)


def test_a_batch_decides_each_feed_once_and_skips_bad_elements(deployment: Deployment) -> None:
    d = deployment
    feeds = [default_feed(f"dev-{i}", "temp") for i in range(3)]
    for f in feeds:
        d.create_feed(f, quorum=3, min_assurance=2)
    keys = [d.masternode(vrf_byte=2 + i % 2) for i in range(4)]
    signers = [d.signer(k) for k in keys]
    obs = []
    for i in range(3):  # three feeds, the same reading of each signed by three masternodes
        for j, s in enumerate(signers[:3]):
            obs.append(s.sign(reading(100 * i + j, device=f"dev-{i}", counter=7), 10 + i))
    gateways, tuples, sigs = batch_args(obs)
    sigs[1] = sigs[0]  # feed 0: one signature of another observation -> below quorum
    weak = signers[3].sign(reading(5, device="dev-1", auth=AuthMethod.ALLOWLIST), 1)
    g, t, sg = obs_args(weak)
    gateways.insert(4, g)  # feed 1: a fourth reporter whose device was not authenticated
    tuples.insert(4, t)
    sigs.insert(4, sg)
    (count,) = d.chain.call(d.oracle, "submitBatch", gateways, tuples, sigs)
    assert count == 2
    rc = d.chain.transact(d.chain.dev, d.oracle, "submitBatch", gateways, tuples, sigs)
    reasons = rejections(d, rc)
    assert [r.split("(")[0] for r in reasons] == ["SignerMismatch", "AssuranceTooLow"], reasons
    assert len(events(d, rc, "ValueAccepted")) == 2
    assert latest(d, feeds[1])[0] == 101 and latest(d, feeds[2])[0] == 201
    assert latest(d, feeds[1])[4:6] == (3, 2)  # reporters, minimum assurance
    # Feed 0's two good reports wait in its round; the third masternode completes it alone.
    assert d.chain.call(d.oracle, "currentRound", feeds[0])[2] == 2
    again = signers[1].sign(reading(1, device="dev-0", counter=8), 11)
    d.chain.transact(keys[1], d.oracle, "submit", *obs_args(again))
    assert latest(d, feeds[0])[0] == 1 and latest(d, feeds[0])[4] == 3  # median of 0, 1, 2
    # The whole batch again: every element is a replay now, and the batch still does not revert.
    rc = d.chain.transact(d.chain.dev, d.oracle, "submitBatch", gateways, tuples, sigs)
    again_reasons = [r.split("(")[0] for r in rejections(d, rc)]
    assert len(again_reasons) == len(tuples) == 10
    assert again_reasons.count("Replayed") == 8, again_reasons
    assert events(d, rc, "ValueAccepted") == []


def test_same_reading_feed_takes_only_witnesses_of_one_device_counter(
    deployment: Deployment,
) -> None:
    d = deployment
    d.create_feed(FEED, quorum=2, same_reading=True)
    a, b, c = (d.masternode(vrf_byte=2) for _ in range(3))
    now = d.chain.block_timestamp()
    # In one batch: two witnesses of counter 7 and one of counter 8 -> the latter is refused.
    obs = [
        d.signer(a).sign(reading(10, counter=7, timestamp=now), 1),
        d.signer(b).sign(reading(12, counter=7, timestamp=now), 1),
        d.signer(c).sign(reading(99, counter=8, timestamp=now + 1), 1),
    ]
    rc = d.chain.transact(d.chain.dev, d.oracle, "submitBatch", *batch_args(obs))
    assert [r.split("(")[0] for r in rejections(d, rc)] == ["OtherReading"]
    assert latest(d)[0] == 10 and latest(d)[4] == 2
    # One at a time: a newer reading replaces a waiting round, an older one is too late.
    d.chain.transact(
        a,
        d.oracle,
        "submit",
        *obs_args(d.signer(a).sign(reading(20, counter=9, timestamp=now + 2), 2)),
    )
    d.chain.transact(
        b,
        d.oracle,
        "submit",
        *obs_args(d.signer(b).sign(reading(30, counter=10, timestamp=now + 3), 2)),
    )
    assert d.chain.call(d.oracle, "currentRound", FEED)[2] == 1
    err = rejected(d, *obs_args(d.signer(c).sign(reading(21, counter=9, timestamp=now + 2), 2)))
    assert err.name == "Superseded"
    d.chain.transact(
        c,
        d.oracle,
        "submit",
        *obs_args(d.signer(c).sign(reading(31, counter=10, timestamp=now + 3), 3)),
    )
    assert latest(d)[0] == 30


def test_feed_policy_is_fixed_at_creation_and_may_name_its_gateways(
    deployment: Deployment,
) -> None:
    d = deployment
    a, b = d.masternode(), d.masternode(vrf_byte=3)
    d.create_feed(FEED, quorum=1, allowed=(a.address,))
    with pytest.raises(Reverted) as info:
        d.create_feed(FEED, quorum=1)
    assert info.value.name == "FeedExists"
    (policy,) = d.chain.call(d.oracle, "policy", FEED)
    assert policy[0] == 1 and policy[3] is True and policy[6].lower() == d.chain.dev.address
    assert rejected(d, *obs_args(d.signer(b).sign(reading(1), 1))).name == "NotAllowed"
    d.chain.transact(a, d.oracle, "submit", *obs_args(d.signer(a).sign(reading(7), 1)))
    assert latest(d)[0] == 7
    for kwargs, why in (
        ({"quorum": 0}, "quorum must be at least 1"),
        ({"min_assurance": 3}, "minAssurance must be 0, 1 or 2"),
        ({"window": 0}, "window and maxAge must be positive"),
        ({"quorum": 2, "allowed": (a.address,)}, "fewer allowed gateways than the quorum"),
    ):
        with pytest.raises(Reverted) as info:
            d.create_feed(default_feed("dev-9", "x"), **kwargs)
        assert info.value.reason == f"BadPolicy({why})"


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
    d.create_feed(FEED)
    o = d.signer(a).sign(reading(5), gateway_sequence=9)
    assert rejected(d, *obs_args(o)).name == "NotRegistered"
    with pytest.raises(Reverted) as info:
        d.chain.call(d.registry, "withdraw", sender=a.address)
    assert info.value.name == "NotRegistered"


def test_missed_heartbeats_make_a_masternode_inactive_until_it_resumes(
    deployment: Deployment,
) -> None:
    d = deployment
    d.create_feed(FEED)
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
    names = {
        event_topic(item): item["name"] for item in d.registry.art.abi if item["type"] == "event"
    }
    return [names[lg["topics"][0]] for lg in rc["logs"] if lg["topics"][0] in names]
