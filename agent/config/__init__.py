"""The agent's TOML configuration, read into frozen dataclasses: one module per TOML table.

`AgentConfig` mirrors the file (`cfg.sources.mqtt` is [sources.mqtt]); every error is a
ConfigError naming the file, the dotted key and what is allowed; relative paths are resolved
against the directory of the config file.

Layout: `reader.Section` is the typed access every reader uses; each table's module holds its
dataclass, whose field defaults are THE defaults (the reader takes them from the class), and its
`read_<table>(sec)`; `checks.py` holds every check spanning two tables; `load.py` reads the file.

Adding a source, as [sources.modbus] was: write `sources/modbus.py` with a frozen
`ModbusSourceConfig` (defaults on the fields) and `read_modbus_source(sec: Section)`, which
reads every key with the field's default and ends with `sec.done()`; then, in
`sources/__init__.py`, add the field `modbus: ModbusSourceConfig` (default_factory) to
`SourcesConfig` and the entry `"modbus": read_modbus_source` to `_READERS`. A check against
another table (a port clash, say) goes into `checks.py`; tests into tests/unit/config/sources/.
"""

from __future__ import annotations

from agent.config.bridge import BridgeConfig
from agent.config.broker import BrokerEndpoint, parse_broker_url
from agent.config.chain import ChainConfig
from agent.config.election import ElectionConfig
from agent.config.enrollment import BrokerAuthConfig, EnrollmentConfig
from agent.config.forward import DEFAULT_METHODS, ForwardConfig, forbidden
from agent.config.gateway import GatewayConfig
from agent.config.homeassistant import HomeAssistantConfig
from agent.config.journal import JournalConfig
from agent.config.load import AgentConfig, config_from_dict, load_config
from agent.config.log import LogConfig
from agent.config.masternode import MasternodeConfig
from agent.config.metrics import MetricsConfig
from agent.config.oracle import OracleConfig
from agent.config.pipeline import PipelineConfig
from agent.config.service import RequestResponseConfig
from agent.config.sources import (
    BleDeviceConfig,
    BleSourceConfig,
    CoapObserveConfig,
    CoapSourceConfig,
    ModbusBusConfig,
    ModbusDeviceConfig,
    ModbusRegisterConfig,
    ModbusSourceConfig,
    MqttSourceConfig,
    SerialPortConfig,
    SerialSourceConfig,
    SourcesConfig,
)
from agent.errors import ConfigError

__all__ = [
    "DEFAULT_METHODS",
    "AgentConfig",
    "BleDeviceConfig",
    "BleSourceConfig",
    "BridgeConfig",
    "BrokerAuthConfig",
    "BrokerEndpoint",
    "ChainConfig",
    "CoapObserveConfig",
    "CoapSourceConfig",
    "ConfigError",
    "ElectionConfig",
    "EnrollmentConfig",
    "ForwardConfig",
    "GatewayConfig",
    "HomeAssistantConfig",
    "JournalConfig",
    "LogConfig",
    "MasternodeConfig",
    "MetricsConfig",
    "ModbusBusConfig",
    "ModbusDeviceConfig",
    "ModbusRegisterConfig",
    "ModbusSourceConfig",
    "MqttSourceConfig",
    "OracleConfig",
    "PipelineConfig",
    "RequestResponseConfig",
    "SerialPortConfig",
    "SerialSourceConfig",
    "SourcesConfig",
    "config_from_dict",
    "forbidden",
    "load_config",
    "parse_broker_url",
]
