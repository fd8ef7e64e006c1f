"""Starts and stops the agent's components, restarts a failed one with backoff, handles signals.

Shutdown order keeps the no-loss promise: sources stop reading, the pipeline drains into the
journal, sources acknowledge and disconnect, the bridge gets a moment for in-flight PUBACKs and
persists its cursor, the journal closes. Everything not acknowledged upstream stays journaled.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from agent.attest.keys import GatewayKey, load_key_file
from agent.attest.observation import ObservationSigner
from agent.bridge import Bridge
from agent.chainclient.forward import CoapForwarder, Forwarder, ForwardPolicy, MqttForwarder
from agent.chainclient.rpc import RpcClient
from agent.chainclient.sender import TxSender
from agent.chainclient.subscribe import ChainWatcher
from agent.config import AgentConfig
from agent.devices.ble import (
    BleBackend,
    BleDeviceDirectory,
    BleGate,
    BleSource,
    ConfiguredBleDevices,
    EnrolledBleDevices,
)
from agent.devices.coap import CoapSource
from agent.devices.gate import EnrollmentGate
from agent.devices.modbus import ModbusGate, ModbusSource
from agent.devices.mqtt import MqttSource
from agent.devices.registry import DeviceRegistry
from agent.devices.serial import SerialSource
from agent.election.rounds import ConnectionPublisher, ElectionRounds
from agent.errors import AgentError, JournalError
from agent.journal import Journal, JournalStats
from agent.logs import event
from agent.masternode import HeartbeatTask, OracleSubmitter, RegistryClient
from agent.metrics import Metrics
from agent.model import Eip712Domain, Transport
from agent.mqtt import MqttConnection
from agent.oracle import CoapOracle, MqttOracle, OracleService
from agent.pipeline import DeviceGate, Pipeline, TransportGate
from agent.sdnotify import Watchdog, notify, watchdog_interval
from agent.secrets import check_secret_mode

if TYPE_CHECKING:
    from agent.telemetry import Telemetry

log = logging.getLogger("agent.runtime")
T = TypeVar("T")


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


async def supervise(
    name: str, factory: Callable[[], Awaitable[None]], stopping: asyncio.Event, metrics: Metrics
) -> None:
    """Run a component; if it fails, log one line and restart it with backoff."""
    delay = 0.5
    while not stopping.is_set():
        started = time.monotonic()
        try:
            await factory()
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if stopping.is_set():
                return
            metrics.inc("component_restarts", component=name)
            if time.monotonic() - started > 60:
                delay = 0.5
            log.error(
                "event=component_failed component=%s error=%r restart_in=%.1fs",
                name,
                str(exc)[:200],
                delay,
                exc_info=exc,
            )
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, 30.0)


class Agent:
    """The whole agent, built from an AgentConfig. `await agent.run(stop_event)`."""

    def __init__(
        self,
        cfg: AgentConfig,
        key: GatewayKey | None = None,
        *,
        ble_backend: BleBackend | None = None,
        ble_devices: BleDeviceDirectory | None = None,
    ) -> None:
        self.cfg = cfg
        self.key = key if key is not None else load_gateway_key(cfg)
        self.metrics = Metrics()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="journal")
        self.journal = Journal(
            cfg.journal.path,
            sinks=["bridge"],
            synchronous=cfg.journal.synchronous,
            max_bytes=cfg.journal.max_bytes,
            max_age_s=cfg.journal.max_age_s,
            overflow=cfg.journal.overflow,
            logger=logging.getLogger("agent.journal"),
        )
        self.signer = ObservationSigner(self.key, domain_of(cfg))
        enr = cfg.enrollment
        self.registry = (
            DeviceRegistry(enr.registry_dir) if enr is not None and enr.enabled else None
        )
        self.gate = EnrollmentGate(
            self.registry,
            allowlist=cfg.mqtt.allowed_devices,
            rate=enr.rate if enr is not None else 10.0,
            burst=enr.burst if enr is not None else 20.0,
            metrics=self.metrics,
        )
        gate: DeviceGate = self.gate
        if cfg.ble.enabled:
            if ble_devices is None:
                configured = ConfiguredBleDevices(cfg.ble.devices)
                ble_devices = (
                    EnrolledBleDevices(configured, self.gate)
                    if self.registry is not None
                    else configured
                )
            gate = TransportGate({Transport.BLE: BleGate(ble_devices, self.gate)}, gate)
        if cfg.modbus.devices:  # known to the Modbus source only, never to the shared allowlist
            gate = TransportGate({Transport.MODBUS: ModbusGate(cfg.modbus.device_ids)}, gate)
        self.pipeline = Pipeline(
            signer=self.signer,
            journal=self.journal,
            executor=self.executor,
            gate=gate,
            metrics=self.metrics,
            queue_size=cfg.pipeline.queue_size,
            batch_max=cfg.pipeline.batch_max,
            linger=cfg.pipeline.linger_s,
        )
        self.bridge: Bridge | None = None
        if cfg.bridge.enabled:
            self.bridge = Bridge(
                cfg.bridge,
                journal=self.journal,
                executor=self.executor,
                gateway=self.key.address,
                metrics=self.metrics,
            )
            self.pipeline.add_sink(self.bridge.offer)
        self.mqtt: MqttSource | None = None
        if cfg.mqtt.enabled:
            self.mqtt = MqttSource(
                cfg.mqtt,
                pipeline=self.pipeline,
                metrics=self.metrics,
                client_id=f"edgence-{self.key.address[2:14]}-devices",
            )
        self.ble: BleSource | None = None
        if cfg.ble.enabled:
            assert ble_devices is not None
            self.ble = BleSource(
                cfg.ble,
                pipeline=self.pipeline,
                metrics=self.metrics,
                directory=ble_devices,
                backend=ble_backend,
            )
        self.coap: CoapSource | None = None
        if cfg.coap.enabled:
            self.coap = CoapSource(
                cfg.coap, pipeline=self.pipeline, metrics=self.metrics, config_file=str(cfg.path)
            )
        self.serial: SerialSource | None = None
        if cfg.serial.ports:
            self.serial = SerialSource(cfg.serial, pipeline=self.pipeline, metrics=self.metrics)
        self._serial_task: asyncio.Task[None] | None = None
        self.modbus: ModbusSource | None = None
        if cfg.modbus.devices:
            self.modbus = ModbusSource(cfg.modbus, pipeline=self.pipeline, metrics=self.metrics)
        # Before enrollment, or for development: the CoAP and serial allowlists (with observed,
        # OSCORE and port devices) join MQTT's in the gate's shared list of unenrolled devices.
        self.gate.allowlist = (
            self.gate.allowlist
            | (self.coap.allowed_devices if self.coap else frozenset())
            | cfg.serial.allowed_devices
        )
        self._setup_chain()
        self._setup_oracle()
        self.ready = asyncio.Event()
        self.started_at = time.monotonic()
        self.watchdog = Watchdog(watchdog_interval())
        self.telemetry: Telemetry | None = None
        if cfg.metrics.enabled:
            from agent.telemetry import Telemetry  # prometheus-client only when used

            self.telemetry = Telemetry(self)

    def _setup_oracle(self) -> None:
        """[oracle] queries over MQTT 5 / CoAP, [oracle.submit] on-chain submission and the
        [masternode] heartbeat (each only when enabled)."""
        cfg = self.cfg
        self.oracle: OracleService | None = None
        self.oracle_mqtt: MqttOracle | None = None
        self.oracle_coap: CoapOracle | None = None
        self.heartbeat: HeartbeatTask | None = None
        self.submitter: OracleSubmitter | None = None
        o = cfg.oracle
        if o.enabled:
            gate = self.gate
            ble_ids = frozenset(d.device_id for d in cfg.ble.devices) | cfg.modbus.device_ids

            def known_device(device: str) -> bool:
                """Enrolled (the gate's registry view), allowlisted, or a configured BLE one."""
                return device in gate.records or device in gate.allowlist or device in ble_ids

            self.oracle = OracleService(
                self.journal,
                self.executor,
                contract=cfg.gateway.verifying_contract,
                known_device=known_device,
                metrics=self.metrics,
                max_inflight=o.max_inflight,
            )
            self.pipeline.add_sink(self.oracle.offer)
            if o.mqtt_enabled and o.mqtt is not None:
                names = {"prefix": o.topic_prefix, "gateway": self.key.address}
                self.oracle_mqtt = MqttOracle(
                    self.oracle,
                    o.mqtt,
                    request_topic=f"{o.topic_prefix}/{self.key.address}/oracle/req",
                    reply_filters=tuple(t.format(**names) for t in o.reply_topics),
                    client_id=o.mqtt.client_id or f"edgence-{self.key.address[2:14]}-oracle",
                )
            if o.coap_enabled:
                self.oracle_coap = CoapOracle(self.oracle, o.coap_host, o.coap_port)
        if self.tx_sender is None:
            return
        mn = cfg.masternode
        if mn.registry is not None and mn.heartbeat:
            assert self.rpc is not None
            self.heartbeat = HeartbeatTask(
                RegistryClient(self.rpc, self.tx_sender, mn.registry),
                every_blocks=mn.heartbeat_every_blocks,
                check_interval_s=mn.check_interval_s,
                metrics=self.metrics,
            )
        if o.submit_enabled:
            self.submitter = OracleSubmitter(
                self.journal,
                self.executor,
                self.tx_sender,
                contract=cfg.gateway.verifying_contract,
                sensors=o.submit_sensors,
                interval_s=o.submit_interval_s,
                max_batch=o.submit_max_batch,
                metrics=self.metrics,
            )

    def _setup_chain(self) -> None:
        """[chain] and [forward]: the full node's client, the agent's own transactions, new
        heads, and dApp request forwarding (each only when enabled)."""
        cfg = self.cfg
        self.rpc: RpcClient | None = None
        self.tx_sender: TxSender | None = None
        self.chain_watcher: ChainWatcher | None = None
        self.forward_mqtt: MqttForwarder | None = None
        self.forward_coap: CoapForwarder | None = None
        self.election: ElectionRounds | None = None
        self.election_publisher: ConnectionPublisher | None = None
        if not (cfg.chain.enabled or cfg.forward.enabled):
            return
        c = cfg.chain
        self.rpc = RpcClient(c.rpc_url, timeout=c.timeout_s)
        if c.enabled:
            self.tx_sender = TxSender(
                self.rpc,
                self.key,
                cfg.gateway.chain_id,
                c.store or cfg.gateway.data_dir / "chain.sqlite",
                metrics=self.metrics,
                confirmations=c.confirmations,
                poll_interval_s=c.poll_interval_s,
                stuck_after_s=c.stuck_after_s,
                fee_bump_percent=c.fee_bump_percent,
            )
            self.chain_watcher = ChainWatcher(
                self.rpc, c.ws_url, poll_interval_s=c.poll_interval_s, metrics=self.metrics
            )
        self._setup_election()
        f = cfg.forward
        if not f.enabled:
            return
        forwarder = Forwarder(
            self.rpc,
            ForwardPolicy(
                methods=frozenset(f.methods),
                max_request_bytes=f.max_request_bytes,
                max_response_bytes=f.max_response_bytes,
                max_batch=f.max_batch,
                max_log_range=f.max_log_range,
                rate=f.rate,
                burst=f.burst,
                timeout_s=f.timeout_s,
                max_inflight=f.max_inflight,
            ),
            self.metrics,
        )
        if f.mqtt_enabled and f.mqtt is not None:
            names = {"prefix": f.topic_prefix, "gateway": self.key.address}
            self.forward_mqtt = MqttForwarder(
                forwarder,
                f.mqtt,
                request_topic=f"{f.topic_prefix}/{self.key.address}/rpc/req",
                reply_filters=tuple(t.format(**names) for t in f.reply_topics),
                client_id=f.mqtt.client_id or f"edgence-{self.key.address[2:14]}-rpc",
            )
        if f.coap_enabled:
            self.forward_coap = CoapForwarder(forwarder, f.coap_host, f.coap_port)

    def _setup_election(self) -> None:
        """[election]: the round loop, publishing results on the bridge's upstream connection,
        or on its own connection when the bridge is disabled."""
        e = self.cfg.election
        if not e.enabled or self.rpc is None or self.tx_sender is None:
            return
        if self.bridge is not None:
            publisher = ConnectionPublisher(self.bridge.conn, own=False)
        else:
            assert e.mqtt is not None  # the config demands it without a bridge
            publisher = ConnectionPublisher(
                MqttConnection(
                    e.mqtt,
                    client_id=e.mqtt.client_id or f"edgence-{self.key.address[2:14]}-election",
                    clean_start=True,
                    name="election",
                ),
                own=True,
            )
        self.election_publisher = publisher
        self.election = ElectionRounds(
            e,
            rpc=self.rpc,
            sender=self.tx_sender,
            key=self.key,
            chain_id=self.cfg.gateway.chain_id,
            publisher=publisher,
            heads=self.chain_watcher.heads() if self.chain_watcher is not None else None,
            poll_interval_s=self.cfg.chain.poll_interval_s,
            metrics=self.metrics,
        )

    def _chain_tasks(self, stopping: asyncio.Event) -> list[asyncio.Task[None]]:
        m = self.metrics
        parts: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        if self.chain_watcher is not None:
            parts.append(("chain-watch", self.chain_watcher.run))
        if self.tx_sender is not None:
            parts.append(("tx-sender", self.tx_sender.run))
        if self.forward_mqtt is not None:
            parts.append(("forward-mqtt", self.forward_mqtt.run))
        if self.forward_coap is not None:
            parts.append(("forward-coap", self.forward_coap.run))
        if self.election is not None:
            parts.append(("election", self.election.run))
        if self.election_publisher is not None and self.election_publisher.own:
            parts.append(("election-mqtt", self.election_publisher.run))
        for part in (self.oracle_mqtt, self.oracle_coap, self.heartbeat, self.submitter):
            if part is not None:
                parts.append((part.name, part.run))
        return [asyncio.create_task(supervise(n, fn, stopping, m)) for n, fn in parts]

    async def _stop_chain(self) -> None:
        if self.election_publisher is not None:
            await self.election_publisher.stop()
        if self.forward_mqtt is not None:
            await self.forward_mqtt.stop()
        if self.forward_coap is not None:
            await self.forward_coap.stop()
        if self.oracle_mqtt is not None:
            await self.oracle_mqtt.stop()
        if self.oracle_coap is not None:
            await self.oracle_coap.stop()

    async def _close_chain(self) -> None:
        if self.tx_sender is not None:
            self.tx_sender.close()
        if self.rpc is not None:
            await self.rpc.close()

    async def _in_journal_thread(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn)

    async def in_journal_thread(self, fn: Callable[[], T]) -> T:
        """Run `fn` in the journal's thread (the only thread that touches sqlite)."""
        return await self._in_journal_thread(fn)

    async def _maintain_journal(self, every: float = 10.0, stats_every: int = 6) -> None:
        """Enforce the journal's bounds every `every` seconds and log one stats line every
        `stats_every` rounds (the operator's heartbeat in journald)."""
        rounds = 0
        while True:
            await asyncio.sleep(every)
            rounds += 1
            try:
                await self._in_journal_thread(self.journal.enforce_bounds)
                if rounds % stats_every == 0:
                    st = await self._in_journal_thread(self.journal.stats)
                    self._log_stats(st)
            except JournalError as exc:  # e.g. a full disk: retried next round
                event(log, "journal_maintenance_failed", logging.ERROR, error=str(exc))

    def _log_stats(self, st: JournalStats) -> None:
        m = self.metrics
        event(
            log,
            "stats",
            signed=m.get("observations_signed"),
            delivered=m.get("observations_delivered"),
            rejected=m.get("frames_rejected"),
            journal_entries=st.entries,
            journal_bytes=st.bytes,
            backlog=st.backlog.get("bridge", 0),
            upstream="up" if self.bridge and self.bridge.conn.connected.is_set() else "down",
        )

    async def _announce_ready(self, started: float) -> None:
        sources = [
            s for s in (self.mqtt, self.ble, self.coap, self.serial, self.modbus) if s is not None
        ]
        for src in sources:
            await src.ready.wait()
        if self.forward_mqtt is not None:
            await self.forward_mqtt.ready.wait()
        if self.forward_coap is not None:
            await self.forward_coap.ready.wait()
        if self.oracle_mqtt is not None:
            await self.oracle_mqtt.ready.wait()
        if self.oracle_coap is not None:
            await self.oracle_coap.ready.wait()
        self.ready.set()
        notify("STATUS=ready: sources subscribed")
        event(
            log,
            "ready",
            gateway=self.key.address,
            ready_ms=int((time.monotonic() - started) * 1000),
            sources=",".join(s.name for s in sources) or "none",
            upstream=self.cfg.bridge.broker.url if self.bridge else "disabled",
            chain=self.cfg.chain.rpc_url if self.rpc else "disabled",
            forward=",".join(
                n for n, c in (("mqtt", self.forward_mqtt), ("coap", self.forward_coap)) if c
            )
            or "disabled",
            oracle=",".join(
                n for n, c in (("mqtt", self.oracle_mqtt), ("coap", self.oracle_coap)) if c
            )
            or "disabled",
        )

    async def run(self, stop: asyncio.Event) -> None:
        started = self.started_at = time.monotonic()
        data_dir = self.cfg.gateway.data_dir
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        Path(self.cfg.journal.path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            await self._in_journal_thread(self.journal.open)
        except Exception:
            self.executor.shutdown(wait=False)
            raise
        await self.pipeline.load_state()
        await asyncio.get_running_loop().run_in_executor(None, self.gate.load)
        event(
            log,
            "starting",
            gateway=self.key.address,
            chain_id=self.cfg.gateway.chain_id,
            journal=str(self.cfg.journal.path),
            journal_max_bytes=self.cfg.journal.max_bytes,
            journal_max_age_s=int(self.cfg.journal.max_age_s),
            journal_overflow=self.cfg.journal.overflow,
            journal_synchronous=self.cfg.journal.synchronous,
        )
        stopping = asyncio.Event()
        m = self.metrics
        tasks = [
            asyncio.create_task(supervise("pipeline", self.pipeline.run, stopping, m)),
            asyncio.create_task(self._maintain_journal()),
            asyncio.create_task(supervise("registry", self.gate.run, stopping, m)),
        ]
        if self.bridge is not None:
            tasks.append(asyncio.create_task(supervise("bridge", self.bridge.run, stopping, m)))
        if self.mqtt is not None:
            tasks.append(asyncio.create_task(supervise("mqtt", self.mqtt.run, stopping, m)))
        if self.coap is not None:
            tasks.append(asyncio.create_task(supervise("coap", self.coap.run, stopping, m)))
        if self.serial is not None:
            self._serial_task = asyncio.create_task(
                supervise("serial", self.serial.run, stopping, m)
            )
            tasks.append(self._serial_task)
        if self.ble is not None:
            tasks.append(asyncio.create_task(supervise("ble", self.ble.run, stopping, m)))
        if self.modbus is not None:
            tasks.append(asyncio.create_task(supervise("modbus", self.modbus.run, stopping, m)))
        if self.telemetry is not None:
            tasks.append(
                asyncio.create_task(supervise("telemetry", self.telemetry.run, stopping, m))
            )
        tasks += self._chain_tasks(stopping)
        tasks.append(asyncio.create_task(self._announce_ready(started)))
        # READY=1 once the journal is open and every component is supervised, not when the
        # local broker answers: a broker that is down is retried by the agent itself, and
        # systemd would otherwise kill and restart a healthy agent at TimeoutStartSec.
        notify("READY=1", "STATUS=started: waiting for the sources to subscribe")
        self.watchdog.start()
        try:
            await stop.wait()
        finally:
            stopping.set()
            notify("STOPPING=1", "STATUS=stopping: draining into the journal")
            await self._shutdown(tasks)

    async def _shutdown(self, tasks: list[asyncio.Task[None]]) -> None:
        t0 = time.monotonic()
        if self.mqtt is not None:
            self.mqtt.conn.pause_reading()
        if self.coap is not None:
            self.coap.pause()
        if self._serial_task is not None:
            self._serial_task.cancel()  # stop reading; what was read is in the pipeline's queue
        if self.ble is not None:
            await self.ble.stop()
        if self.modbus is not None:
            self.modbus.pause_intake()  # no new polls; what was read is in the pipeline's queue
        drained = await self.pipeline.drain(grace=0.8)
        if self.mqtt is not None:
            await self.mqtt.stop()
        if self.modbus is not None:
            await self.modbus.stop(grace=0.5)
        if self.bridge is not None:
            await self.bridge.stop(grace=0.6)
        try:
            await self.gate.flush_activations()
        except AgentError as exc:
            event(log, "registry_error", logging.ERROR, error=str(exc))
        await self._stop_chain()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._close_chain()
        await self._in_journal_thread(self.journal.close)
        self.executor.shutdown(wait=True)
        if self.serial is not None:
            self.serial.close()
        self.watchdog.stop()
        event(
            log,
            "stopped",
            drained=drained,
            shutdown_ms=int((time.monotonic() - t0) * 1000),
            signed=self.metrics.get("observations_signed"),
            delivered=self.metrics.get("observations_delivered"),
        )


async def run_until_signalled(agent: Agent) -> None:
    """Run the agent until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await agent.run(stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


__all__ = ["Agent", "AgentError", "load_gateway_key", "run_until_signalled"]
