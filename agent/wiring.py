"""Which parts a configuration asks for, built once, and the order the runtime runs them in.

`build(cfg, key)` returns `Parts`: every part by name (None where the config does not ask for
it) and `components`, the list the runtime supervises. The list's order is the start order;
the runtime stops in reverse, after pausing every source:

    registry gate, journal upkeep, bridge, sources..., pipeline, telemetry, chain parts...

so at shutdown the chain parts go first, then telemetry, then the pipeline drains into the
journal (sources already paused), then the sources acknowledge what was accepted and
disconnect, then the bridge waits for in-flight PUBACKs, then the registry flushes activations.
Modules for parts that are not configured are not imported.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agent.attest.dropped import sign_dropped
from agent.attest.feeds import FeedMap
from agent.attest.keys import GatewayKey, load_key_file
from agent.attest.observation import ObservationSigner
from agent.bridge import Bridge
from agent.component import Component
from agent.config import AgentConfig
from agent.devices.gate import EnrollmentGate
from agent.devices.registry import DeviceRegistry
from agent.journal import Journal
from agent.metrics import Metrics
from agent.model import Eip712Domain, Transport
from agent.pipeline import DeviceGate, Pipeline, TransportGate
from agent.secrets import check_secret_mode
from agent.upkeep import JournalUpkeep

if TYPE_CHECKING:
    from agent.chainclient.approvals import DappApprovals
    from agent.chainclient.forwardservers import CoapForwarder, MqttForwarder
    from agent.chainclient.rpc import RpcClient
    from agent.chainclient.sender import TxSender
    from agent.chainclient.subscribe import ChainWatcher
    from agent.devices.ble import BleBackend, BleSource
    from agent.devices.bledevices import BleDeviceDirectory
    from agent.devices.coap import CoapSource
    from agent.devices.modbus import ModbusSource
    from agent.devices.mqtt import MqttSource
    from agent.devices.serial import SerialSource
    from agent.downlink.coapcommands import CoapCommands
    from agent.downlink.events import ContractCommands
    from agent.downlink.service import Downlink
    from agent.election.aggregator import CommitteeAggregator
    from agent.election.publish import ConnectionPublisher
    from agent.election.rounds import ElectionRounds
    from agent.hadiscovery import HomeAssistantDiscovery
    from agent.masternode import HeartbeatTask
    from agent.oracle.servers import CoapOracle, MqttOracle
    from agent.oracle.service import OracleService
    from agent.oraclesubmit import OracleSubmitter
    from agent.rewards import RewardCheckIn
    from agent.serviceduty import ServiceDuty
    from agent.telemetry import Telemetry


def tx_sender(
    cfg: AgentConfig, rpc: RpcClient, key: GatewayKey, metrics: Metrics | None = None
) -> TxSender:
    """The agent's own transactions as [chain] configures them (the running agent and the
    commands that send one transaction share this)."""
    from agent.chainclient.sender import TxSender

    c = cfg.chain
    return TxSender(
        rpc,
        key,
        cfg.gateway.chain_id,
        c.store or cfg.gateway.data_dir / "chain.sqlite",
        metrics=metrics,
        confirmations=c.confirmations,
        poll_interval_s=c.poll_interval_s,
        stuck_after_s=c.stuck_after_s,
        fee_bump_percent=c.fee_bump_percent,
    )


def load_gateway_key(cfg: AgentConfig) -> GatewayKey:
    """The gateway key, refusing loose permissions; the passphrase comes from
    gateway.passphrase_file (also 0600) or the EDGENCE_KEY_PASSPHRASE environment variable."""
    passphrase = os.environ.get("EDGENCE_KEY_PASSPHRASE")
    pf = cfg.gateway.passphrase_file
    if pf is not None:
        check_secret_mode(pf)
        passphrase = pf.read_text(encoding="utf-8").rstrip("\r\n")
    return load_key_file(cfg.gateway.key_file, passphrase)


def domain_of(cfg: AgentConfig) -> Eip712Domain:
    g = cfg.gateway
    return Eip712Domain(g.domain_name, g.domain_version, g.chain_id, g.verifying_contract)


def client_id(key: GatewayKey, role: str) -> str:
    """The MQTT client id of one of the agent's connections (unique per gateway and role)."""
    return f"edgence-{key.address[2:14]}-{role}"


@dataclass
class Parts:
    """Everything one configuration runs. Optional parts are None when not configured."""

    cfg: AgentConfig
    key: GatewayKey
    metrics: Metrics
    journal: Journal
    signer: ObservationSigner
    registry: DeviceRegistry | None
    gate: EnrollmentGate
    pipeline: Pipeline
    upkeep: JournalUpkeep
    bridge: Bridge | None = None
    mqtt: MqttSource | None = None
    ble: BleSource | None = None
    coap: CoapSource | None = None
    serial: SerialSource | None = None
    modbus: ModbusSource | None = None
    rpc: RpcClient | None = None
    tx_sender: TxSender | None = None
    chain_watcher: ChainWatcher | None = None
    dapp_approvals: DappApprovals | None = None
    forward_mqtt: MqttForwarder | None = None
    forward_coap: CoapForwarder | None = None
    election: ElectionRounds | None = None
    election_publisher: ConnectionPublisher | None = None
    aggregator: CommitteeAggregator | None = None
    oracle: OracleService | None = None
    oracle_mqtt: MqttOracle | None = None
    oracle_coap: CoapOracle | None = None
    heartbeat: HeartbeatTask | None = None
    rewards: RewardCheckIn | None = None
    service_duty: ServiceDuty | None = None
    submitter: OracleSubmitter | None = None
    telemetry: Telemetry | None = None
    homeassistant: HomeAssistantDiscovery | None = None
    downlink: Downlink | None = None
    downlink_events: ContractCommands | None = None
    downlink_coap: CoapCommands | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    started_at: float = field(default_factory=time.monotonic)

    @property
    def components(self) -> list[Component]:
        """What the runtime supervises, in start order (it stops them in reverse)."""
        head: list[Component | None] = [self.gate, self.upkeep, self.bridge]
        tail: list[Component | None] = [
            self.pipeline,
            self.telemetry,
            self.homeassistant,
            self.chain_watcher,
            self.dapp_approvals,
            self.tx_sender,
            self.forward_mqtt,
            self.forward_coap,
            self.election_publisher
            if self.election_publisher is not None and self.election_publisher.own
            else None,
            self.election,
            self.aggregator,
            self.oracle_mqtt,
            self.oracle_coap,
            self.heartbeat,
            self.rewards,
            self.service_duty,
            self.submitter,
            self.downlink,
            self.downlink_events,
            self.downlink_coap,
        ]
        return [c for c in (*head, *self.sources, *tail) if c is not None]

    @property
    def sources(self) -> list[Component]:
        sources = (self.mqtt, self.ble, self.coap, self.serial, self.modbus)
        return [s for s in sources if s is not None]


def build(
    cfg: AgentConfig,
    key: GatewayKey,
    *,
    ble_backend: BleBackend | None = None,
    ble_devices: BleDeviceDirectory | None = None,
) -> Parts:
    """Build every part the configuration asks for, once."""
    metrics = Metrics()
    journal = Journal(
        cfg.journal.path,
        sinks=["bridge"],
        synchronous=cfg.journal.synchronous,
        max_bytes=cfg.journal.max_bytes,
        max_age_s=cfg.journal.max_age_s,
        overflow=cfg.journal.overflow,
        replay_window=cfg.journal.replay_window,
        logger=logging.getLogger("agent.journal"),
    )
    signer = ObservationSigner(key, domain_of(cfg), FeedMap(dict(cfg.gateway.feeds)))
    enr = cfg.enrollment
    registry = DeviceRegistry(enr.registry_dir) if enr is not None and enr.enabled else None
    gate = EnrollmentGate(
        registry,
        allowlists={Transport.MQTT: cfg.sources.mqtt.allowed_devices},
        rate=enr.rate if enr is not None else 10.0,
        burst=enr.burst if enr is not None else 20.0,
        metrics=metrics,
        skew=cfg.pipeline.clock_skew,
        data_dir=cfg.gateway.data_dir,
    )
    device_gate: DeviceGate = gate
    if cfg.sources.ble.enabled:
        from agent.devices.bledevices import BleGate, ConfiguredBleDevices, EnrolledBleDevices

        if ble_devices is None:
            configured = ConfiguredBleDevices(cfg.sources.ble.devices)
            ble_devices = EnrolledBleDevices(configured, gate) if registry else configured
        device_gate = TransportGate({Transport.BLE: BleGate(ble_devices, gate)}, gate)
    if cfg.sources.modbus.devices:  # known to the Modbus source only, not the shared allowlist
        from agent.devices.modbus import ModbusGate

        device_gate = TransportGate(
            {Transport.MODBUS: ModbusGate(cfg.sources.modbus.device_ids)}, device_gate
        )
    pipeline = Pipeline(
        signer=signer,
        journal=journal,
        gate=device_gate,
        metrics=metrics,
        queue_size=cfg.pipeline.queue_size,
        batch_max=cfg.pipeline.batch_max,
        linger=cfg.pipeline.linger_s,
    )
    gate.reset_counters = pipeline.reset_counters
    p = Parts(
        cfg=cfg,
        key=key,
        metrics=metrics,
        journal=journal,
        signer=signer,
        registry=registry,
        gate=gate,
        pipeline=pipeline,
        upkeep=JournalUpkeep(journal, metrics, bridge_up=lambda: False),
    )
    if cfg.bridge.enabled:
        domain = signer.domain
        p.bridge = Bridge(
            cfg.bridge,
            journal=journal,
            gateway=key.address,
            metrics=metrics,
            sign_dropped=lambda first, last, at: sign_dropped(key, domain, first, last, at),
        )
        pipeline.add_sink(p.bridge.offer)
        p.bridge.intake_idle = pipeline.idle
        bridge = p.bridge
        p.upkeep.bridge_up = bridge.conn.connected.is_set
    _sources(p, ble_backend, ble_devices)
    if cfg.chain.enabled or cfg.forward.enabled or cfg.oracle.enabled:
        from agent.chainparts import chain_parts, oracle_parts

        chain_parts(p)
        oracle_parts(p)
    if cfg.homeassistant.enabled:
        _homeassistant(p)
    _downlink(p)
    if cfg.metrics.enabled:
        from agent.telemetry import Telemetry  # prometheus-client only when used

        p.telemetry = Telemetry(p)
    return p


def _homeassistant(p: Parts) -> None:
    """[homeassistant]: discovery of enrolled and accepted devices, a sink of the pipeline."""
    from agent.hadiscovery import HomeAssistantDiscovery

    ha, gate = p.cfg.homeassistant, p.gate
    own_id = ha.mqtt.client_id if ha.mqtt is not None else None
    p.homeassistant = HomeAssistantDiscovery(
        ha,
        gateway=p.key.address,
        enrolled=lambda: gate.records,
        agent_ready=p.ready,
        client_id=own_id or client_id(p.key, "homeassistant"),
    )
    p.pipeline.add_sink(p.homeassistant.offer)


def _sources(p: Parts, ble_backend: BleBackend | None, ble: BleDeviceDirectory | None) -> None:
    cfg, pipeline, metrics = p.cfg, p.pipeline, p.metrics
    if cfg.sources.mqtt.enabled:
        from agent.devices.mqtt import MqttSource

        p.mqtt = MqttSource(
            cfg.sources.mqtt,
            pipeline=pipeline,
            metrics=metrics,
            client_id=client_id(p.key, "devices"),
        )
    if cfg.sources.ble.enabled:
        from agent.devices.ble import BleSource

        assert ble is not None
        p.ble = BleSource(
            cfg.sources.ble, pipeline=pipeline, metrics=metrics, directory=ble, backend=ble_backend
        )
    if cfg.sources.coap.enabled:
        from agent.devices.coap import CoapSource

        p.coap = CoapSource(
            cfg.sources.coap, pipeline=pipeline, metrics=metrics, config_file=str(cfg.path)
        )
    if cfg.sources.serial.ports:
        from agent.devices.serial import SerialSource

        p.serial = SerialSource(cfg.sources.serial, pipeline=pipeline, metrics=metrics)
    if cfg.sources.modbus.devices:
        from agent.devices.modbus import ModbusSource

        p.modbus = ModbusSource(cfg.sources.modbus, pipeline=pipeline, metrics=metrics)
    # Before enrollment, or for development: devices accepted without a key of their own, each
    # on its own transport only (CoAP: listed, observed and OSCORE devices; serial: the devices
    # bound to a port, which the serial source checks per port; Modbus: its own gate).
    p.gate.allowlists[Transport.COAP] = p.coap.allowed_devices if p.coap else frozenset()
    p.gate.allowlists[Transport.SERIAL] = cfg.sources.serial.allowed_devices


def _downlink(p: Parts) -> None:
    """[downlink]: commands to devices, answered with signed receipts."""
    d = p.cfg.downlink
    if not d.enabled or d.mqtt is None:
        return
    from agent.downlink.service import Downlink
    from agent.downlink.store import CommandStore

    p.downlink = Downlink(
        d,
        store=CommandStore(d.store or p.cfg.gateway.data_dir / "downlink.sqlite"),
        devices=p.gate,
        key=p.key,
        domain=domain_of(p.cfg),
        metrics=p.metrics,
        client_id=d.mqtt.client_id or client_id(p.key, "downlink"),
        config_file=str(p.cfg.path),
    )
    if p.coap is not None:  # CoAP devices get their command with the answer to a POST
        p.coap.commands = p.downlink
        p.downlink.transports.add(Transport.COAP)
    if p.ble is not None:  # BLE devices get theirs by GATT write
        _ble_commands(p, p.downlink)
    if d.coap_enabled:
        from agent.downlink.coapcommands import CoapCommands

        p.downlink_coap = CoapCommands(
            p.downlink, d.coap_host, d.coap_port, rate=d.rate, burst=d.burst
        )
    ha = p.cfg.homeassistant
    if p.homeassistant is not None and ha.commands:
        from agent.hacommands import HaCommands

        p.homeassistant.use_commands(HaCommands(ha.commands, p.homeassistant.topics, p.downlink))
    if d.events and p.chain_watcher is not None and p.rpc is not None:
        from agent.downlink.events import ContractCommands

        p.downlink_events = ContractCommands(
            p.downlink, d.events, rpc=p.rpc, watcher=p.chain_watcher, metrics=p.metrics
        )


def _ble_commands(p: Parts, downlink: Downlink) -> None:
    """Commands to devices enrolled over BLE, written to their command characteristic."""
    from agent.devices.blecommands import GattCommands

    assert p.ble is not None
    ble, gate = p.cfg.sources.ble, p.gate

    def address_of(device: str) -> str | None:
        rec = gate.records.get(device)
        return rec.address.upper() if rec is not None and rec.transport is Transport.BLE else None

    gc = GattCommands(
        p.ble.gatt_link,
        command_characteristic=ble.command_characteristic,
        answer_characteristic=ble.answer_characteristic,
        address_of=address_of,
        resend_s=p.cfg.downlink.resend_s,
    )
    gc.answers = downlink
    downlink.pushers[Transport.BLE] = gc
    downlink.transports.add(Transport.BLE)


__all__ = ["Parts", "build", "client_id", "domain_of", "load_gateway_key"]
