"""[masternode]: this gateway in the MasternodeRegistry (registry address, VRF key, heartbeats),
the RewardPool it checks in with, the DappRegistry whose approvals forwarding follows, and
[masternode.probe]: the proof-of-service probes it sends when it is on an epoch's committee."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from agent.config.broker import BrokerEndpoint, read_broker
from agent.config.reader import Section


@dataclass(frozen=True, kw_only=True)
class ProbeConfig:
    """[masternode.probe]: probing every masternode when this node is on the epoch's elected
    committee. The fleet agrees on one (device, sensor) every masternode's oracle serves."""

    enabled: bool = False
    device: str = ""  # required when enabled
    sensor: str = ""  # required when enabled
    timeout_s: float = 5.0  # per answer
    max_age_s: int = 600  # the oracle's observation at most this old
    max_lag: int = 5  # the forwarded eth_blockNumber at most this many blocks off our head
    concurrency: int = 16  # probes in flight
    mqtt: BrokerEndpoint | None = None  # None: the bridge's upstream broker


def read_probe(sec: Section) -> ProbeConfig:
    P = ProbeConfig
    enabled = sec.get("enabled", bool, P.enabled)
    m = sec.sub("mqtt")
    broker = replace(read_broker(m, None), protocol=5) if m.data else None
    m.done()
    cfg = ProbeConfig(
        enabled=enabled,
        device=sec.get("device", str, P.device, required=enabled),
        sensor=sec.get("sensor", str, P.sensor, required=enabled),
        timeout_s=sec.duration("timeout", P.timeout_s),
        max_age_s=sec.int_range("max_age", P.max_age_s, 1, 86_400 * 30),
        max_lag=sec.int_range("max_lag", P.max_lag, 0, 10_000),
        concurrency=sec.int_range("concurrency", P.concurrency, 1, 1024),
        mqtt=broker,
    )
    sec.done()
    return cfg


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
    probe: ProbeConfig = field(default_factory=ProbeConfig)


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
        probe=read_probe(mn.sub("probe")),
    )
    if cfg.probe.enabled and cfg.registry is None:
        raise mn.err("probe", "needs registry (the MasternodeRegistry whose masternodes it probes)")
    mn.done()
    return cfg
