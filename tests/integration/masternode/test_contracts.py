"""RewardPool, ServiceStanding (attached to the MasternodeRegistry, its committee the
ElectionBoard's) and DappRegistry on a real anvil: equal shares among the masternodes in
service, nothing for epochs out of service, K failed epochs in a row before a masternode is
out, verdicts by the epoch's posted committee only, votes by active masternodes only."""

from __future__ import annotations

import pytest

from agent.attest.keys import GatewayKey
from tests.integration.masternode.conftest import FAIL_EPOCHS, REWARD, Layer
from tests.integration.oracle.conftest import Reverted


def balance(layer: Layer, who: str) -> int:
    return int(str(layer.chain.node.rpc("eth_getBalance", [who, "latest"])), 16)


def gas_cost(rc: dict[str, object]) -> int:
    return int(str(rc["gasUsed"]), 16) * int(str(rc["effectiveGasPrice"]), 16)


def verdicts(layer: Layer, epoch: int, nodes: list[GatewayKey], passed: list[bool]) -> None:
    """Every committee member submits the same verdicts."""
    for m in layer.committee:
        layer.chain.transact(
            m, layer.standing, "submitVerdicts", epoch, [n.address for n in nodes], passed
        )


def test_reward_is_split_equally_among_those_checked_in_and_paid_once(layer: Layer) -> None:
    c = layer.chain
    nodes = [layer.masternode() for _ in range(3)]
    c.transact(c.dev, layer.rewards, "fund", value=10 * REWARD)
    e = layer.next_epoch()
    for n in nodes:
        c.transact(n, layer.rewards, "checkIn")
    with pytest.raises(Reverted) as exc:
        c.transact(nodes[0], layer.rewards, "checkIn")
    assert exc.value.name == "AlreadyCheckedIn"
    e2 = layer.next_epoch()
    for n in nodes[:2]:  # the third one does not check in for e2
        c.transact(n, layer.rewards, "checkIn")
    layer.next_epoch()
    amount, lo, hi = c.call(layer.rewards, "claimable", nodes[0].address, 2**64)
    assert (lo, hi) == (e, e2 + 1)
    assert amount == REWARD // 3 + REWARD // 2
    assert c.call(layer.rewards, "claimable", nodes[2].address, 2**64)[0] == REWARD // 3
    before = balance(layer, nodes[0].address)
    rc = c.transact(nodes[0], layer.rewards, "claim", 2**64)
    assert balance(layer, nodes[0].address) == before + amount - gas_cost(rc)
    with pytest.raises(Reverted) as exc:
        c.transact(nodes[0], layer.rewards, "claim", 2**64)
    assert exc.value.name == "NothingToClaim"


def test_an_unregistered_or_out_of_service_node_cannot_check_in(layer: Layer) -> None:
    c = layer.chain
    stranger = GatewayKey.generate()
    c.fund(stranger)
    with pytest.raises(Reverted) as exc:
        c.transact(stranger, layer.rewards, "checkIn")
    assert exc.value.name == "NotInService"
    good, bad = layer.masternode(), layer.masternode()
    for _ in range(FAIL_EPOCHS):
        e = layer.next_epoch()
        verdicts(layer, e, [good, bad], [True, False])
    assert c.call(layer.standing, "inService", bad.address) == (False,)
    assert c.call(layer.registry, "isActive", bad.address) == (False,)
    assert c.call(layer.registry, "isActive", good.address) == (True,)
    with pytest.raises(Reverted) as exc:
        c.transact(bad, layer.rewards, "checkIn")
    assert exc.value.name == "NotInService"
    c.transact(good, layer.rewards, "checkIn")


def test_underfunded_pool_refuses_the_claim_and_keeps_it_for_later(layer: Layer) -> None:
    c = layer.chain
    n = layer.masternode()
    layer.next_epoch()
    c.transact(n, layer.rewards, "checkIn")
    layer.next_epoch()
    with pytest.raises(Reverted) as exc:
        c.transact(n, layer.rewards, "claim", 2**64)
    assert exc.value.name == "Underfunded"
    c.transact(c.dev, layer.rewards, "fund", value=REWARD)
    c.transact(n, layer.rewards, "claim", 2**64)
    assert balance(layer, layer.rewards.address) == 0


def test_out_of_service_after_k_failed_epochs_in_a_row_and_back_after_a_pass(
    layer: Layer,
) -> None:
    c = layer.chain
    n = layer.masternode()
    e = layer.next_epoch()
    verdicts(layer, e, [n], [False])
    layer.next_epoch()
    layer.next_epoch()  # an epoch without a decision breaks the row
    e = layer.next_epoch()
    verdicts(layer, e, [n], [False])
    assert c.call(layer.standing, "standing", n.address) == (False, 1, e)
    e = layer.next_epoch()
    verdicts(layer, e, [n], [False])
    assert c.call(layer.standing, "standing", n.address) == (True, 2, e)
    e = layer.next_epoch()
    verdicts(layer, e, [n], [True])
    assert c.call(layer.standing, "standing", n.address)[:2] == (False, 0)
    assert c.call(layer.registry, "isActive", n.address) == (True,)


def test_a_minority_of_the_committee_cannot_fail_a_node(layer: Layer) -> None:
    c = layer.chain
    n = layer.masternode()
    for _ in range(FAIL_EPOCHS + 1):
        e = layer.next_epoch()
        c.transact(layer.committee[0], layer.standing, "submitVerdicts", e, [n.address], [False])
        c.transact(layer.committee[0], layer.standing, "submitVerdicts", e, [n.address], [False])
        c.transact(layer.committee[1], layer.standing, "submitVerdicts", e, [n.address], [True])
    assert c.call(layer.standing, "tally", e, n.address) == (1, 1, False)
    assert c.call(layer.standing, "inService", n.address) == (True,)


def test_only_the_posted_committee_submits_verdicts_and_only_for_recent_epochs(
    layer: Layer,
) -> None:
    c = layer.chain
    n = layer.masternode()
    with pytest.raises(Reverted) as exc:  # no committee posted for the deployment's epoch
        c.transact(layer.committee[0], layer.standing, "submitVerdicts", layer.epoch(), [], [])
    assert exc.value.name == "CommitteeNotPosted"
    old = layer.next_epoch()
    with pytest.raises(Reverted) as exc:
        c.transact(n, layer.standing, "submitVerdicts", old, [n.address], [False])
    assert exc.value.name == "NotCommittee"
    assert c.call(layer.standing, "isCommittee", old, layer.committee[0].address) == (True,)
    assert c.call(layer.standing, "isCommittee", old, n.address) == (False,)
    with pytest.raises(Reverted) as exc:  # verdicts for an epoch not begun
        c.transact(layer.committee[0], layer.standing, "submitVerdicts", old + 1, [], [])
    assert exc.value.name == "WrongEpoch"
    layer.next_epoch()
    layer.next_epoch()
    with pytest.raises(Reverted) as exc:
        c.transact(layer.committee[0], layer.standing, "submitVerdicts", old, [n.address], [False])
    assert exc.value.name == "WrongEpoch"
    with pytest.raises(Reverted) as exc:
        c.transact(c.dev, layer.registry, "attachServiceStanding", n.address)
    assert exc.value.name == "StandingAlreadyAttached"
    with pytest.raises(Reverted) as exc:
        c.transact(n, layer.registry, "attachServiceStanding", layer.standing.address)
    assert exc.value.name == "NotDeployer"
    fresh = c.deploy("MasternodeRegistry", 10**18, 100)
    with pytest.raises(Reverted) as exc:
        c.transact(c.dev, fresh, "attachServiceStanding", n.address)  # not a contract
    assert exc.value.reason == "standing must be a contract"


def test_the_committee_follows_the_board_and_a_disputed_epoch_takes_no_verdicts(
    layer: Layer,
) -> None:
    c = layer.chain
    n = layer.masternode()
    other = [GatewayKey.generate() for _ in range(3)]
    for k in other:
        c.fund(k)
    e = layer.next_epoch(other)  # this epoch's committee: three others, majority two
    with pytest.raises(Reverted) as exc:
        c.transact(layer.committee[0], layer.standing, "submitVerdicts", e, [n.address], [False])
    assert exc.value.name == "NotCommittee"
    c.transact(other[0], layer.standing, "submitVerdicts", e, [n.address], [False])
    c.transact(other[1], layer.standing, "submitVerdicts", e, [n.address], [False])
    assert c.call(layer.standing, "standing", n.address) == (False, 1, e)
    # A second, different committee posted for the next epoch: disputed, no verdicts at all.
    e = layer.next_epoch()
    c.transact(layer.poster, layer.board, "postCommittee", e, [other[0].address])
    assert c.call(layer.board, "disputed", e) == (True,)
    with pytest.raises(Reverted) as exc:
        c.transact(layer.committee[0], layer.standing, "submitVerdicts", e, [n.address], [False])
    assert exc.value.name == "CommitteeDisputed"
    assert c.call(layer.standing, "isCommittee", e, layer.committee[0].address) == (False,)
    assert c.call(layer.standing, "inService", n.address) == (True,)


def test_dapp_is_approved_by_a_majority_of_active_masternodes_and_revoked_by_vote(
    layer: Layer,
) -> None:
    c = layer.chain
    nodes = [layer.masternode() for _ in range(5)]
    dapp = GatewayKey.generate()
    c.fund(dapp)
    target = "0x" + "ab" * 20
    c.transact(dapp, layer.dapps, "propose", "meter", [target])
    with pytest.raises(Reverted) as exc:
        c.transact(dapp, layer.dapps, "vote", 0, True)
    assert exc.value.name == "NotActive"
    for n in nodes[:2]:
        c.transact(n, layer.dapps, "vote", 0, True)
    assert c.call(layer.dapps, "proposal", 0)[5] is False
    rc = c.transact(nodes[2], layer.dapps, "vote", 0, True)
    assert c.call(layer.dapps, "proposal", 0)[3:] == (3, 0, True)
    assert len(rc["logs"]) == 2  # Voted, Approved
    for n in nodes[:3]:
        c.transact(n, layer.dapps, "vote", 0, False)
    assert c.call(layer.dapps, "proposal", 0)[3:] == (0, 3, False)


def test_masternodes_out_of_service_do_not_count_or_vote(layer: Layer) -> None:
    c = layer.chain
    nodes = [layer.masternode() for _ in range(4)]
    for _ in range(FAIL_EPOCHS):
        e = layer.next_epoch()
        verdicts(layer, e, nodes[2:], [False, False])
    c.transact(c.dev, layer.dapps, "propose", "x", ["0x" + "cd" * 20])
    with pytest.raises(Reverted) as exc:
        c.transact(nodes[3], layer.dapps, "vote", 0, True)
    assert exc.value.name == "NotActive"
    assert c.call(layer.registry, "activeCount") == (2,)
    c.transact(nodes[0], layer.dapps, "vote", 0, True)
    assert c.call(layer.dapps, "proposal", 0)[5] is False  # 1 of 2 is not more than half
    c.transact(nodes[1], layer.dapps, "vote", 0, True)
    assert c.call(layer.dapps, "proposal", 0)[5] is True
