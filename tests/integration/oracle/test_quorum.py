"""Quorum where it means something: several real agents (three masternodes, one anvil) witness
one physical reading and the oracle accepts its value at quorum 3 with assurance 2.

- BLE broadcast: one Bumble-emulated BTHome sensor with an AES-CCM bindkey, heard by three
  agents through three Bumble controllers on one virtual link (bleak's API over each); every
  agent hears the same encrypted advert (same packet counter) and signs it.
- A device paired with three gateways: enrolled on each with that gateway's own key, it sends
  each frame (same counter, same value) to each of them, MAC'd with the key of each.

Each agent submits on its own (its OracleSubmitter's submitBatch); the feed is created with
quorum 3, minimum assurance 2 and the same-reading rule."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.attest.feeds import default_feed
from agent.attest.keys import GatewayKey
from agent.chainclient.anvil import LocalAnvil
from agent.devices.auth import encode_signed_frame
from agent.devices.codecs.bthome import encode_bthome, mac_bytes
from agent.devices.registry import DeviceRegistry
from agent.localbroker import LocalMosquitto
from agent.model import Transport
from tests.integration.ble_bumble import BTHomeSensor, VirtualRadio
from tests.integration.conftest import Device, agent_config_dict, async_wait_until
from tests.integration.oracle.conftest import (
    COLLATERAL,
    MAX_AGE_S,
    MAX_FUTURE_S,
    ROUND_WINDOW_S,
    WINDOW_BLOCKS,
    Chain,
    Contract,
    Reverted,
)

BINDKEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
SENSOR_MAC = "54:48:E6:8F:80:A5"


class Oracle:
    """Registry and oracle on anvil, one feed (quorum 3, assurance 2, same reading), and three
    registered masternode keys."""

    def __init__(self, node: LocalAnvil, feed: bytes) -> None:
        self.chain = Chain(node)
        self.registry = self.chain.deploy("MasternodeRegistry", COLLATERAL, WINDOW_BLOCKS)
        self.oracle: Contract = self.chain.deploy(
            "ObservationOracle", self.registry.address, MAX_FUTURE_S
        )
        self.feed = feed
        self.chain.transact(
            self.chain.dev,
            self.oracle,
            "createFeed",
            feed,
            3,
            2,
            True,
            ROUND_WINDOW_S,
            MAX_AGE_S,
            [],
        )
        self.keys = []
        for _ in range(3):
            key = GatewayKey.generate()
            self.chain.fund(key)
            vrf = b"\x02" + key.public_key_uncompressed[1:33]
            self.chain.transact(key, self.registry, "register", vrf, value=COLLATERAL)
            self.keys.append(key)

    def chain_sections(self, node: LocalAnvil, sensor: str) -> dict[str, Any]:
        return {
            "gateway": {"verifying_contract": self.oracle.address},
            "chain": {"enabled": True, "rpc_url": node.url, "poll_interval": 0.05},
            "masternode": {"registry": self.registry.address, "check_interval": 0.2},
            "oracle": {"submit": {"enabled": True, "sensors": [sensor], "interval": 0.1}},
        }

    def latest(self) -> tuple[Any, ...] | None:
        try:
            (value,) = self.chain.call(self.oracle, "latest", self.feed)
        except Reverted as exc:
            assert exc.name == "NoValue", exc.reason
            return None
        return tuple(value)


def with_sections(cfg: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for section, values in extra.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


async def test_one_encrypted_bthome_advert_heard_by_three_agents_reaches_quorum_3(
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    anvil: LocalAnvil,
    contracts_built: Path,
    start_agent: Callable[..., Any],
    tmp_path: Path,
) -> None:
    chain = Oracle(anvil, default_feed("ht-enc", "temperature"))
    radio = VirtualRadio()
    bindkey = tmp_path / "bindkey"
    bindkey.write_text(BINDKEY.hex() + "\n")
    bindkey.chmod(0o600)
    agents = []
    for i, key in enumerate(chain.keys):
        await radio.add_adapter(f"hci{i}", f"F0:F0:F0:F0:F0:F{i}")
        ble = {
            "enabled": True,
            "adapter": f"hci{i}",
            "devices": {"ht-enc": {"mac": SENSOR_MAC, "bindkey_file": str(bindkey)}},
        }
        cfg = agent_config_dict(
            local_broker,
            upstream_broker,
            sources={"mqtt": {"url": local_broker.url}, "ble": ble},
        )
        cfg = with_sections(cfg, chain.chain_sections(anvil, "ht-enc/temperature"))
        agents.append(await start_agent(cfg, key, name=f"mn{i}", ble_backend=radio.backend()))

    sensor = BTHomeSensor(radio, SENSOR_MAC)
    await sensor.power_on()
    advert = encode_bthome(
        [(0x02, 2150), (0x03, 4550)], mac=mac_bytes(SENSOR_MAC), bindkey=BINDKEY, counter=7000
    )
    await sensor.advertise(advert)
    await async_wait_until(lambda: chain.latest() is not None, 60, "a value at quorum 3")
    value, exponent, unit, _observed, reporters, min_assurance, *_ = chain.latest() or ()
    assert (value, exponent, reporters, min_assurance) == (2150, -2, 3, 2)
    assert unit.rstrip(b"\0") == b"Cel"
    # Every agent submitted its own witness of the same advert, and each was accepted.
    await async_wait_until(
        lambda: all(
            a.agent.metrics.get("oracle_submitted", result="accepted") >= 1 for a in agents
        ),
        30,
        "each agent's receipt",
    )
    assert all(a.agent.metrics.get("oracle_submit_failed") == 0 for a in agents)
    await sensor.stop()


async def test_a_device_paired_with_three_gateways_reaches_quorum_3(
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    device: Device,
    anvil: LocalAnvil,
    contracts_built: Path,
    start_agent: Callable[..., Any],
    tmp_path: Path,
) -> None:
    chain = Oracle(anvil, default_feed("dev-1", "temp"))
    device_keys = []
    agents = []
    for i, key in enumerate(chain.keys):
        # `pair` on each gateway: the device gets a key per gateway (enrolled, then active).
        registry = DeviceRegistry(tmp_path / f"mn{i}" / "data" / "devices")
        _, device_key = registry.enroll("dev-1", transport=Transport.MQTT)
        registry.activate(["dev-1"])
        device_keys.append(device_key)
        cfg = agent_config_dict(
            local_broker,
            upstream_broker,
            sources={
                "mqtt": {"url": local_broker.url, "allowed_devices": [], "topics": [f"gw{i}/+/up"]}
            },
        )
        cfg = with_sections(cfg, chain.chain_sections(anvil, "dev-1/temp"))
        agents.append(await start_agent(cfg, key, name=f"mn{i}"))

    # One reading (counter 1), sent to each gateway with that gateway's MAC.
    now = int(time.time())
    for i, k in enumerate(device_keys):
        frame = encode_signed_frame(k, "dev-1", 1, [("temp", 2150, -2, "Cel")], timestamp=now)
        await asyncio.to_thread(device.publish, f"gw{i}/dev-1/up", frame)
    await async_wait_until(lambda: chain.latest() is not None, 60, "a value at quorum 3")
    value, exponent, _unit, observed, reporters, min_assurance, *_ = chain.latest() or ()
    assert (value, exponent, observed, reporters, min_assurance) == (2150, -2, now, 3, 2)

    # A replay of the same frame to one gateway is refused there and changes nothing on chain.
    frame = encode_signed_frame(
        device_keys[0], "dev-1", 1, [("temp", 9999, -2, "Cel")], timestamp=now
    )
    await asyncio.to_thread(device.publish, "gw0/dev-1/up", frame)
    await async_wait_until(
        lambda: agents[0].agent.metrics.get("frames_rejected", reason="replay", source="mqtt") >= 1,
        10,
        "the replay refused",
    )
    assert (chain.latest() or ())[0] == 2150
    # No submission of any agent failed (each one's gas limit covers completing the quorum).
    assert all(a.agent.metrics.get("oracle_submit_failed") == 0 for a in agents)
