"""Who may stand in a round, from the MasternodeRegistry's events: a masternode whose collateral
is posted and who is in service (heartbeats in time) at the round's cutoff, registered before
the round's key height, with the VRF key its registry entry held at that height.

Pure: the events come from board.RegistryLogs (logs, so no state at old blocks is needed).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

Kind = Literal["registered", "heartbeat", "key", "withdrawn"]

# How many rounds before round r a VRF key must have been in its registry entry. Round r's
# seed is fixed by the leaders of rounds r-1 and r-2 (whose outputs only their keys' owners
# know ahead); a key chosen for a known seed needs an adversary that leads both of them.
KEY_LOOKBACK_ROUNDS = 2


@dataclass(frozen=True)
class RegistryEvent:
    node: bytes  # 20-byte address
    kind: Kind
    block: int
    index: int  # log index in the block
    vrf_key: bytes | None = None  # registered, key


@dataclass(frozen=True)
class Standing:
    """reason None: the node may stand, with `vrf_key`; else one of not-a-masternode,
    registered-too-late, inactive."""

    vrf_key: bytes | None
    reason: str | None


def standings(
    events: Iterable[RegistryEvent],
    nodes: Iterable[bytes],
    *,
    cutoff: int,
    key_height: int,
    heartbeat_window: int,
) -> dict[bytes, Standing]:
    """Each node's standing for a round: registered (and not withdrawn since) at `cutoff`, its
    registration from a block below `key_height`, and active at `cutoff` (its last heartbeat,
    or its registration, at most `heartbeat_window` blocks before it: the registry's
    `isActive`). The key is the one the entry held below `key_height`: a key set later (a
    VrfKeyChanged after the seed could be known) does not count for this round.

    `events` must hold every Registered, VrfKeyChanged and Withdrawn event up to `cutoff`, and
    the Heartbeat events from `cutoff - heartbeat_window` on (older ones cannot matter)."""
    by_node: dict[bytes, list[RegistryEvent]] = {}
    for ev in events:
        if ev.block <= cutoff:
            by_node.setdefault(ev.node, []).append(ev)
    out: dict[bytes, Standing] = {}
    for node in nodes:
        since: int | None = None
        key: bytes | None = None
        key_then: bytes | None = None
        last_beat = -1
        for ev in sorted(by_node.get(node, ()), key=lambda e: (e.block, e.index)):
            if ev.kind == "registered":
                since, key, last_beat = ev.block, ev.vrf_key, ev.block
            elif ev.kind == "withdrawn":
                since, key, last_beat = None, None, -1
            elif since is None:
                continue  # (a log of an earlier registration: cannot be, kept harmless)
            elif ev.kind == "heartbeat":
                last_beat = max(last_beat, ev.block)
            else:
                key = ev.vrf_key
            if ev.block < key_height:
                key_then = key
        out[node] = _judge(since, key_then, last_beat, cutoff, key_height, heartbeat_window)
    return out


def _judge(
    since: int | None,
    key_then: bytes | None,
    last_beat: int,
    cutoff: int,
    key_height: int,
    heartbeat_window: int,
) -> Standing:
    if since is None:
        return Standing(None, "not-a-masternode")
    if since >= key_height or key_then is None:
        return Standing(None, "registered-too-late")
    if cutoff > last_beat + heartbeat_window:
        return Standing(None, "inactive")
    return Standing(key_then, None)


def key_height(start: int, length: int, round: int, lookback: int = KEY_LOOKBACK_ROUNDS) -> int:
    """The block below which a VRF key must have been registered to stand in `round`: the
    boundary of round `round - lookback` (it may lie before the board's start)."""
    return start + (round - lookback) * length


def eligible(st: Mapping[bytes, Standing]) -> dict[bytes, bytes]:
    """node -> VRF key of the nodes that may stand."""
    return {n: s.vrf_key for n, s in st.items() if s.reason is None and s.vrf_key is not None}
