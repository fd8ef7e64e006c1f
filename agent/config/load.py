"""The whole config file: `AgentConfig` (one field per TOML table) and `load_config`, which reads
each table with its section's reader and then runs the cross-section checks."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config.bridge import BridgeConfig, read_bridge
from agent.config.chain import ChainConfig, read_chain
from agent.config.checks import check_config
from agent.config.election import ElectionConfig, read_election
from agent.config.enrollment import EnrollmentConfig, read_enrollment
from agent.config.forward import ForwardConfig, read_forward
from agent.config.gateway import GatewayConfig, read_gateway
from agent.config.homeassistant import HomeAssistantConfig, read_homeassistant
from agent.config.journal import JournalConfig, read_journal
from agent.config.log import LogConfig, read_log
from agent.config.masternode import MasternodeConfig, read_masternode
from agent.config.metrics import MetricsConfig, read_metrics
from agent.config.oracle import OracleConfig, read_oracle
from agent.config.pipeline import PipelineConfig, read_pipeline
from agent.config.reader import Section
from agent.config.sources import SourcesConfig, read_sources
from agent.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class AgentConfig:
    """The config file: each field is the TOML table of the same name (`sources.mqtt` is
    [sources.mqtt]); `path` is the file it was read from."""

    path: Path
    gateway: GatewayConfig
    sources: SourcesConfig = field(default_factory=SourcesConfig)
    bridge: BridgeConfig = field(default_factory=BridgeConfig)
    journal: JournalConfig
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    enrollment: EnrollmentConfig
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    chain: ChainConfig = field(default_factory=ChainConfig)
    forward: ForwardConfig = field(default_factory=ForwardConfig)
    election: ElectionConfig = field(default_factory=ElectionConfig)
    oracle: OracleConfig = field(default_factory=OracleConfig)
    masternode: MasternodeConfig = field(default_factory=MasternodeConfig)
    homeassistant: HomeAssistantConfig = field(default_factory=HomeAssistantConfig)


def load_config(path: Path | str) -> AgentConfig:
    path = Path(path)
    file = str(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            file, None, "file not found; create one with `edgence-agent init`"
        ) from None
    except OSError as exc:
        raise ConfigError(file, None, f"cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, None, f"is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(file, None, "is not UTF-8 text") from None
    return config_from_dict(raw, file, path.resolve().parent)


def config_from_dict(raw: dict[str, Any], file: str, base: Path) -> AgentConfig:
    """`raw` (parsed TOML) as an AgentConfig; relative paths are resolved against `base`."""
    root = Section(file, "", raw, base)
    gateway = read_gateway(root.sub("gateway"))
    data_dir = gateway.data_dir
    sources = read_sources(root.sub("sources"))
    local_broker = sources.mqtt.broker.url  # forwarding and oracle answer there by default
    cfg = AgentConfig(
        path=Path(file),
        gateway=gateway,
        sources=sources,
        bridge=read_bridge(root.sub("bridge")),
        journal=read_journal(root.sub("journal"), data_dir),
        pipeline=read_pipeline(root.sub("pipeline")),
        enrollment=read_enrollment(root.sub("enrollment"), data_dir),
        log=read_log(root.sub("log")),
        metrics=read_metrics(root.sub("metrics")),
        chain=read_chain(root.sub("chain"), data_dir),
        forward=read_forward(root.sub("forward"), local_broker),
        election=read_election(root.sub("election"), data_dir),
        oracle=read_oracle(root.sub("oracle"), local_broker),
        masternode=read_masternode(root.sub("masternode")),
        homeassistant=read_homeassistant(root.sub("homeassistant"), local_broker),
    )
    root.done()
    check_config(cfg)
    return cfg
