"""[masternode]: this gateway in the MasternodeRegistry (registry address, VRF key, heartbeats),
the RewardPool it checks in with and the DappRegistry whose approvals forwarding follows."""

from __future__ import annotations

from dataclasses import dataclass

from agent.config.reader import Section


@dataclass(frozen=True, kw_only=True)
class MasternodeConfig:
    """[masternode]: this gateway as a masternode in the MasternodeRegistry."""

    registry: str | None = None  # the registry contract's address
    vrf_public_key: bytes | None = None  # 33-byte compressed point given at registration
    heartbeat: bool = True  # send heartbeats automatically (needs [chain] and registry)
    heartbeat_every_blocks: int = 0  # 0: half the registry's heartbeat window
    check_interval_s: float = 15.0
    rewards: str | None = None  # the RewardPool's address: check in every epoch, claim by CLI
    dapps: str | None = None  # the DappRegistry's address: forwarding admits only its approvals


def _vrf_public_key(mn: Section) -> bytes | None:
    vrf_hex = mn.get("vrf_public_key", str)
    if vrf_hex is None:
        return None
    try:
        vrf = bytes.fromhex(vrf_hex.removeprefix("0x"))
    except ValueError:
        vrf = b""
    if len(vrf) != 33 or vrf[0] not in (2, 3):
        raise mn.err(
            "vrf_public_key",
            "must be a 33-byte compressed secp256k1 point in hex (0x02... or 0x03...)",
        )
    return vrf


def read_masternode(mn: Section) -> MasternodeConfig:
    M = MasternodeConfig
    cfg = MasternodeConfig(
        registry=mn.address("registry", M.registry),
        vrf_public_key=_vrf_public_key(mn),
        heartbeat=mn.get("heartbeat", bool, M.heartbeat),
        heartbeat_every_blocks=mn.int_range(
            "heartbeat_every_blocks", M.heartbeat_every_blocks, 0, 10_000_000
        ),
        check_interval_s=mn.duration("check_interval", M.check_interval_s),
        rewards=mn.address("rewards", M.rewards),
        dapps=mn.address("dapps", M.dapps),
    )
    mn.done()
    return cfg
