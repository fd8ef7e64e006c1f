"""The chain-facing parts of `wiring.build`: the full node's client and the agent's own
transactions, new heads, election rounds and the committee's aggregation, dApp request
forwarding (with the approval gate), the oracle's query servers and on-chain submission, the
masternode's heartbeat, reward check-in and proof-of-service duty. Imported only when the
configuration enables [chain], [forward] or [oracle].
"""

from __future__ import annotations

from dataclasses import replace

from agent.wiring import Parts, client_id, tx_sender


def chain_parts(p: Parts) -> None:
    """[chain], [election] and [forward]: the full node's client, the agent's own
    transactions, new heads, election rounds and dApp request forwarding."""
    cfg = p.cfg
    if not (cfg.chain.enabled or cfg.forward.enabled):
        return
    from agent.chainclient.rpc import RpcClient

    c = cfg.chain
    p.rpc = RpcClient(c.rpc_url, timeout=c.timeout_s)
    if c.enabled:
        from agent.chainclient.subscribe import ChainWatcher

        p.tx_sender = tx_sender(cfg, p.rpc, p.key, p.metrics)
        p.chain_watcher = ChainWatcher(
            p.rpc, c.ws_url, poll_interval_s=c.poll_interval_s, metrics=p.metrics
        )
    _election(p)
    f = cfg.forward
    if not f.enabled:
        return
    from agent.chainclient.forward import Forwarder, ForwardPolicy
    from agent.chainclient.forwardservers import CoapForwarder, MqttForwarder

    if cfg.masternode.dapps is not None:
        # Transactions only to the contracts of dApps the masternodes approved, followed from
        # the chain (a watcher of its own when [chain] is not enabled).
        from agent.chainclient.approvals import DappApprovals
        from agent.chainclient.subscribe import ChainWatcher

        if p.chain_watcher is None:
            p.chain_watcher = ChainWatcher(
                p.rpc, c.ws_url, poll_interval_s=c.poll_interval_s, metrics=p.metrics
            )
        p.dapp_approvals = DappApprovals(
            p.rpc, cfg.masternode.dapps, p.chain_watcher, metrics=p.metrics
        )
    forwarder = Forwarder(
        p.rpc,
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
        p.metrics,
        raw_tx_check=None if p.dapp_approvals is None else p.dapp_approvals.check_raw_transaction,
    )
    if f.mqtt_enabled and f.mqtt is not None:
        p.forward_mqtt = MqttForwarder.from_config(
            forwarder,
            f,
            gateway=p.key.address,
            client_id=f.mqtt.client_id or client_id(p.key, MqttForwarder.link),
        )
    if f.coap_enabled:
        p.forward_coap = CoapForwarder(forwarder, f.coap_host, f.coap_port)


def _election(p: Parts) -> None:
    """[election]: the round loop, publishing results on the bridge's upstream connection,
    or on its own connection when the bridge is disabled."""
    e = p.cfg.election
    if not e.enabled or p.rpc is None or p.tx_sender is None:
        return
    from agent.election.publish import ConnectionPublisher
    from agent.election.rounds import ElectionRounds
    from agent.mqtt import MqttConnection

    if p.bridge is not None:
        publisher = ConnectionPublisher(p.bridge.conn, own=False)
    else:
        assert e.mqtt is not None  # the config demands it without a bridge
        conn = MqttConnection(
            e.mqtt,
            client_id=e.mqtt.client_id or client_id(p.key, "election"),
            clean_start=True,
            name="election",
        )
        publisher = ConnectionPublisher(conn, own=True)
    p.election_publisher = publisher
    p.election = ElectionRounds(
        e,
        rpc=p.rpc,
        sender=p.tx_sender,
        key=p.key,
        chain_id=p.cfg.gateway.chain_id,
        publisher=publisher,
        heads=p.chain_watcher.heads() if p.chain_watcher is not None else None,
        poll_interval_s=p.cfg.chain.poll_interval_s,
        metrics=p.metrics,
    )
    if e.aggregate:
        from agent.election.aggregator import CommitteeAggregator

        endpoint = p.cfg.bridge.broker if p.bridge is not None else e.mqtt
        assert endpoint is not None
        p.aggregator = CommitteeAggregator(
            p.election,
            endpoint,
            sender=p.tx_sender,
            oracle=p.cfg.gateway.verifying_contract,
            topic_prefix=p.cfg.bridge.topic_prefix,
            client_id=client_id(p.key, "aggregate"),
            check_interval_s=min(1.0, p.cfg.chain.poll_interval_s),
            metrics=p.metrics,
        )


def oracle_parts(p: Parts) -> None:
    """[oracle] queries over MQTT 5 / CoAP, [oracle.submit] on-chain submission and the
    [masternode] heartbeat and reward check-in (each only when enabled)."""
    cfg = p.cfg
    o = cfg.oracle
    if o.enabled:
        from agent.oracle.servers import CoapOracle, MqttOracle
        from agent.oracle.service import OracleService

        gate = p.gate
        configured = frozenset(d.device_id for d in cfg.sources.ble.devices)
        configured |= cfg.sources.modbus.device_ids

        def known_device(device: str) -> bool:
            """Enrolled (the gate's registry view), allowlisted, or a configured BLE or Modbus
            one."""
            return device in gate.records or device in gate.allowlist or device in configured

        p.oracle = OracleService(
            p.journal,
            contract=cfg.gateway.verifying_contract,
            known_device=known_device,
            metrics=p.metrics,
            max_inflight=o.max_inflight,
            rate=o.rate,
            burst=o.burst,
        )
        p.pipeline.add_sink(p.oracle.offer)
        if o.mqtt_enabled and o.mqtt is not None:
            p.oracle_mqtt = MqttOracle.from_config(
                p.oracle,
                o,
                gateway=p.key.address,
                client_id=o.mqtt.client_id or client_id(p.key, MqttOracle.link),
            )
        if o.coap_enabled:
            p.oracle_coap = CoapOracle(p.oracle, o.coap_host, o.coap_port)
    if p.tx_sender is None:
        return
    from agent.masternode import HeartbeatTask, RegistryClient
    from agent.oraclesubmit import OracleSubmitter

    mn = cfg.masternode
    if mn.registry is not None and mn.heartbeat:
        assert p.rpc is not None
        p.heartbeat = HeartbeatTask(
            RegistryClient(p.rpc, p.tx_sender, mn.registry),
            every_blocks=mn.heartbeat_every_blocks,
            check_interval_s=mn.check_interval_s,
            metrics=p.metrics,
        )
    if mn.registry is not None and mn.rewards is not None:
        from agent.rewards import RewardCheckIn, RewardsClient

        assert p.rpc is not None
        p.rewards = RewardCheckIn(
            RewardsClient(p.rpc, p.tx_sender, mn.rewards),
            RegistryClient(p.rpc, p.tx_sender, mn.registry),
            check_interval_s=mn.check_interval_s,
            metrics=p.metrics,
        )
    if mn.registry is not None and mn.probe.enabled:
        _service_duty(p, mn.registry)
    if o.submit_enabled:
        p.submitter = OracleSubmitter(
            p.journal,
            p.tx_sender,
            contract=cfg.gateway.verifying_contract,
            sensors=o.submit_sensors,
            interval_s=o.submit_interval_s,
            max_batch=o.submit_max_batch,
            metrics=p.metrics,
        )


def _service_duty(p: Parts, registry: str) -> None:
    """[masternode.probe]: proof-of-service probes when this node is on the epoch's committee,
    over [masternode.probe.mqtt] or else the bridge's upstream broker (MQTT 5 either way)."""
    from agent.serviceduty import ServiceDuty
    from agent.serviceprobe import ServiceProber

    cfg = p.cfg.masternode.probe
    endpoint = replace(cfg.mqtt or p.cfg.bridge.broker, protocol=5)
    assert p.rpc is not None and p.tx_sender is not None
    rpc = p.rpc

    def prober() -> ServiceProber:
        return ServiceProber(
            endpoint,
            rpc,
            device=cfg.device,
            sensor=cfg.sensor,
            prefix=p.cfg.bridge.topic_prefix,
            timeout_s=cfg.timeout_s,
            max_age_s=cfg.max_age_s,
            max_lag=cfg.max_lag,
        )

    p.service_duty = ServiceDuty(
        rpc,
        p.tx_sender,
        registry,
        prober,
        check_interval_s=p.cfg.masternode.check_interval_s,
        concurrency=cfg.concurrency,
        metrics=p.metrics,
    )


__all__ = ["chain_parts", "oracle_parts"]
