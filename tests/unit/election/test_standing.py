"""Who may stand in a round, from the registry's events: registered and not withdrawn at the
cutoff, registered below the key height, in service at the cutoff, with the key of the key
height."""

from __future__ import annotations

from agent.election.standing import RegistryEvent, Standing, key_height, standings

A, B = b"\xaa" * 20, b"\xbb" * 20
K1, K2 = b"\x02" + b"\x01" * 32, b"\x03" + b"\x02" * 32
WINDOW = 10


def judge(events: list[RegistryEvent], cutoff: int = 100, height: int = 50) -> Standing:
    return standings(events, [A], cutoff=cutoff, key_height=height, heartbeat_window=WINDOW)[A]


def reg(block: int, key: bytes = K1, node: bytes = A) -> RegistryEvent:
    return RegistryEvent(node, "registered", block, 0, key)


def beat(block: int, node: bytes = A) -> RegistryEvent:
    return RegistryEvent(node, "heartbeat", block, 0)


def test_registered_early_and_beating_stands_with_its_key() -> None:
    assert judge([reg(10), beat(95)]) == Standing(K1, None)
    assert judge([reg(10), beat(90)]) == Standing(K1, None)  # 100 <= 90 + 10: isActive


def test_heartbeats_that_lapsed_before_the_cutoff_make_it_inactive() -> None:
    assert judge([reg(10), beat(89)]).reason == "inactive"
    assert judge([reg(10), beat(89), beat(101)]).reason == "inactive"  # after the cutoff


def test_withdrawn_before_the_cutoff_is_out_and_a_new_registration_is_too_late() -> None:
    out = [reg(10), beat(95), RegistryEvent(A, "withdrawn", 98, 0)]
    assert judge(out).reason == "not-a-masternode"
    assert judge(out, cutoff=97).reason is None  # before it withdrew
    assert judge([*out, reg(99)]).reason == "registered-too-late"
    assert judge([]).reason == "not-a-masternode"


def test_registration_at_or_after_the_key_height_is_too_late() -> None:
    assert judge([reg(50), beat(95)]).reason == "registered-too-late"
    assert judge([reg(49), beat(95)]).reason is None


def test_a_key_changed_after_the_key_height_does_not_count_this_round() -> None:
    changed = [reg(10), RegistryEvent(A, "key", 60, 0, K2), beat(95)]
    assert judge(changed) == Standing(K1, None)
    assert judge(changed, cutoff=200, height=61) == Standing(None, "inactive")
    assert judge([*changed, beat(195)], cutoff=200, height=61) == Standing(K2, None)


def test_events_of_other_nodes_and_order_in_a_block_are_respected() -> None:
    same_block = [
        RegistryEvent(A, "withdrawn", 40, 1),
        RegistryEvent(A, "registered", 40, 0, K1),
        reg(30, K2, node=B),
    ]
    assert judge([reg(10), *same_block]).reason == "not-a-masternode"


def test_key_height_is_the_boundary_two_rounds_back() -> None:
    assert key_height(100, 8, 5) == 124
    assert key_height(100, 8, 0) == 84
