"""[sources]: one sub-table per transport ([sources.mqtt], [sources.coap], ...), one module each.

To add a source: a module here with its frozen dataclass (defaults on the fields) and its
`read_<x>_source(sec)`, then one field in `SourcesConfig` and one entry in `_READERS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.config.reader import Section
from agent.config.sources.ble import BleDeviceConfig, BleSourceConfig, read_ble_source
from agent.config.sources.coap import CoapObserveConfig, CoapSourceConfig, read_coap_source
from agent.config.sources.modbus import (
    ModbusBusConfig,
    ModbusDeviceConfig,
    ModbusRegisterConfig,
    ModbusSourceConfig,
    read_modbus_source,
)
from agent.config.sources.mqtt import MqttSourceConfig, read_mqtt_source
from agent.config.sources.serial import SerialPortConfig, SerialSourceConfig, read_serial_source

__all__ = [
    "BleDeviceConfig",
    "BleSourceConfig",
    "CoapObserveConfig",
    "CoapSourceConfig",
    "ModbusBusConfig",
    "ModbusDeviceConfig",
    "ModbusRegisterConfig",
    "ModbusSourceConfig",
    "MqttSourceConfig",
    "SerialPortConfig",
    "SerialSourceConfig",
    "SourcesConfig",
    "read_sources",
]


@dataclass(frozen=True, kw_only=True)
class SourcesConfig:
    """[sources]: each field is the sub-table of the same name."""

    mqtt: MqttSourceConfig = field(default_factory=MqttSourceConfig)
    coap: CoapSourceConfig = field(default_factory=CoapSourceConfig)
    serial: SerialSourceConfig = field(default_factory=SerialSourceConfig)
    ble: BleSourceConfig = field(default_factory=BleSourceConfig)
    modbus: ModbusSourceConfig = field(default_factory=ModbusSourceConfig)


# [sources.<name>] -> its reader; read in this order (the order of errors in a bad file).
_READERS: dict[str, Callable[[Section], Any]] = {
    "mqtt": read_mqtt_source,
    "coap": read_coap_source,
    "serial": read_serial_source,
    "ble": read_ble_source,
    "modbus": read_modbus_source,
}


def read_sources(s: Section) -> SourcesConfig:
    cfg = SourcesConfig(**{name: read(s.sub(name)) for name, read in _READERS.items()})
    s.done()
    return cfg
