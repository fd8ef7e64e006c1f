"""Checks that span sections, in one place: each section's reader checks only its own keys."""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.errors import ConfigError

if TYPE_CHECKING:
    from agent.config.load import AgentConfig

_ANY_HOST = {"0.0.0.0", "::"}


def check_config(cfg: AgentConfig) -> None:
    """Refuse combinations of sections that cannot work; the error names the key to change."""
    file = str(cfg.path)
    _coap_ports(cfg, file)
    _modbus_ids(cfg, file)
    e = cfg.election
    if e.enabled and not cfg.chain.enabled:
        raise ConfigError(
            file, "election.enabled", "needs the full node: set [chain] enabled = true"
        )
    if e.enabled and not cfg.bridge.enabled and e.mqtt is None:
        raise ConfigError(
            file,
            "election.mqtt",
            "is needed when the bridge is disabled: results are published on an MQTT broker "
            '(add [election.mqtt] url = "mqtt://HOST:PORT")',
        )
    if cfg.downlink.enabled and (cfg.enrollment is None or not cfg.enrollment.enabled):
        raise ConfigError(
            file,
            "downlink.enabled",
            "needs [enrollment] enabled = true (commands are framed with each device's key)",
        )
    if cfg.downlink.enabled and cfg.downlink.events and not cfg.chain.enabled:
        raise ConfigError(
            file,
            "downlink.events",
            "needs [chain] enabled = true (contract events are read from the full node)",
        )
    ha = cfg.homeassistant
    if ha.enabled and ha.commands:
        from agent.config.homeassistant import HA_REQUESTER

        d = cfg.downlink
        if not d.enabled or d.rule_for(HA_REQUESTER) is None:
            raise ConfigError(
                file,
                "homeassistant.commands",
                "needs [downlink] enabled = true and a [[downlink.policy]] with requester = "
                f'"{HA_REQUESTER}" naming the devices and actions Home Assistant may command',
            )
    probe = cfg.masternode.probe
    if probe.enabled and not cfg.chain.enabled:
        raise ConfigError(
            file,
            "masternode.probe.enabled",
            "needs [chain] enabled = true (the committee and the verdicts are on chain)",
        )
    if probe.enabled and not cfg.bridge.enabled and probe.mqtt is None:
        raise ConfigError(
            file,
            "masternode.probe.mqtt",
            "is needed when the bridge is disabled: probes go over the upstream broker "
            '(add [masternode.probe.mqtt] url = "mqtt://HOST:PORT")',
        )
    if cfg.oracle.submit_enabled and not cfg.chain.enabled:
        raise ConfigError(
            file,
            "oracle.submit.enabled",
            "needs [chain] enabled = true (submissions are transactions)",
        )
    if cfg.oracle.submit_enabled and int(cfg.gateway.verifying_contract, 16) == 0:
        raise ConfigError(
            file,
            "oracle.submit.enabled",
            "needs gateway.verifying_contract set to the ObservationOracle's address "
            "(observations are signed for it); it is the zero address",
        )


def listening_sockets(cfg: AgentConfig) -> list[tuple[str, str, str, int]]:
    """Every socket the agent listens on with this config: (config key, "tcp"/"udp", host,
    port). Nothing else listens: the CoAP servers are UDP only, and the rest connect out."""
    src, fwd, orc, met = cfg.sources.coap, cfg.forward, cfg.oracle, cfg.metrics
    out: list[tuple[str, str, str, int]] = []
    if met.enabled:
        out.append(("metrics.listen", "tcp", met.host, met.port))
    if src.enabled:
        out.append(("sources.coap.port", "udp", src.bind, src.port))
    if fwd.enabled and fwd.coap_enabled:
        out.append(("forward.coap.bind", "udp", fwd.coap_host, fwd.coap_port))
    if orc.enabled and orc.coap_enabled:
        out.append(("oracle.coap.bind", "udp", orc.coap_host, orc.coap_port))
    dl = cfg.downlink
    if dl.enabled and dl.coap_enabled:
        out.append(("downlink.coap.bind", "udp", dl.coap_host, dl.coap_port))
    return out


def _coap_ports(cfg: AgentConfig, file: str) -> None:
    """Four CoAP servers may run (device source, dApp forwarding, oracle queries, dApp
    commands): each needs its own UDP port on overlapping addresses."""
    servers = [
        (key, f"[{key.rpartition('.')[0]}]", host, port)
        for key, proto, host, port in listening_sockets(cfg)
        if proto == "udp"
    ]
    for i, (key, name, host, port) in enumerate(servers):
        for _, other, other_host, other_port in servers[:i]:
            if port == other_port and (host == other_host or {host, other_host} & _ANY_HOST):
                raise ConfigError(
                    file,
                    key,
                    f"{name} and {other} both use UDP port {port} on {host} / {other_host}; "
                    f"each CoAP server needs its own port: give {name} another one",
                )


def _modbus_ids(cfg: AgentConfig, file: str) -> None:
    """A Modbus device is known to the Modbus source only (its gate admits its readings from
    that transport alone): its id may not also be listed by another source."""
    src = cfg.sources
    elsewhere = {d: "sources.mqtt.allowed_devices" for d in src.mqtt.allowed_devices}
    elsewhere |= {d: "sources.coap.allowed_devices" for d in src.coap.allowed_devices}
    elsewhere |= {o.device: "sources.coap.observe" for o in src.coap.observe}
    elsewhere |= {d: "sources.serial.ports" for d in src.serial.allowed_devices}
    elsewhere |= {d.device_id: f"sources.ble.devices.{d.device_id}" for d in src.ble.devices}
    for i, dev in enumerate(src.modbus.devices):
        if dev.device_id in elsewhere:
            raise ConfigError(
                file,
                f"sources.modbus.devices[{i}].id",
                f"{dev.device_id!r} is also listed in {elsewhere[dev.device_id]}; a device is "
                "known to one transport only: give the Modbus device its own id",
            )
