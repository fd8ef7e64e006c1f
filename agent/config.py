"""The agent's TOML configuration, read into frozen dataclasses.

Every error is a ConfigError naming the file, the key and what is allowed. Relative paths are
resolved against the directory of the config file.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar, cast
from urllib.parse import unquote, urlsplit

from agent.chainclient.methods import DEFAULT_METHODS, forbidden
from agent.errors import ConfigError
from agent.modbus_config import ModbusSourceConfig, read_modbus_source
from agent.model import NAME_RE

T = TypeVar("T")

_SIZE_RE = re.compile(r"^\s*([0-9]+)\s*(B|KiB|MiB|GiB|KB|MB|GB)?\s*\Z")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
}
_DURATION_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)?\s*\Z")
_DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


@dataclass(frozen=True)
class BrokerEndpoint:
    """Where an MQTT broker is and how to log in. `url` is mqtt://host:port or mqtts://..."""

    host: str
    port: int
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password_file: Path | None = None
    client_id: str | None = None
    keepalive: int = 30
    protocol: Literal[4, 5] = 4  # MQTT 3.1.1 or 5

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


@dataclass(frozen=True)
class GatewayConfig:
    key_file: Path
    data_dir: Path
    chain_id: int
    verifying_contract: str
    passphrase_file: Path | None = None
    domain_name: str = "Edgence"
    domain_version: str = "1"


@dataclass(frozen=True)
class MqttSourceConfig:
    enabled: bool
    broker: BrokerEndpoint
    topics: tuple[str, ...] = ("devices/+/up",)
    qos: int = 1
    max_payload: int = 4096
    max_values_per_frame: int = 16
    allowed_devices: tuple[str, ...] = ()


@dataclass(frozen=True)
class CoapObserveConfig:
    """A CoAP resource on a device that the agent OBSERVEs (client mode)."""

    device: str
    uri: str
    timeout_s: float = 10.0  # for the registration's first response
    # Re-register when no notification came for this long; None: the last Max-Age + 25 %.
    reregister_s: float | None = None


@dataclass(frozen=True)
class CoapSourceConfig:
    enabled: bool = False
    bind: str = "0.0.0.0"
    port: int = 5683
    max_payload: int = 4096
    max_values_per_frame: int = 16
    allowed_devices: tuple[str, ...] = ()
    busy_max_age: int = 2  # Max-Age (s) on 5.03 / 4.29: when a device may try again
    oscore_dir: Path | None = None  # one FilesystemSecurityContext directory per device id
    observe: tuple[CoapObserveConfig, ...] = ()
    backoff_max_s: float = 30.0


@dataclass(frozen=True)
class SerialPortConfig:
    path: Path
    baud: int = 115200
    bytesize: int = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: int = 1
    device: str | None = None  # device id of frames on this port that carry no "id"
    gps_device: str | None = None  # NMEA sentences on this port become this device's readings
    allowed_devices: tuple[str, ...] = ()  # further ids that frames on this port may carry
    max_line: int = 4112

    @property
    def devices(self) -> frozenset[str]:
        return frozenset(d for d in (self.device, *self.allowed_devices) if d is not None)


@dataclass(frozen=True)
class SerialSourceConfig:
    ports: tuple[SerialPortConfig, ...] = ()
    max_values_per_frame: int = 16
    reopen_max_s: float = 10.0

    @property
    def allowed_devices(self) -> frozenset[str]:
        out: set[str] = set()
        for p in self.ports:
            out |= p.devices
            if p.gps_device is not None:
                out.add(p.gps_device)
        return frozenset(out)


@dataclass(frozen=True)
class BleDeviceConfig:
    """One BLE device: a BTHome advertiser (`bthome`) or a GATT peripheral notifying device
    frames (`gatt`). `bindkey_file` (0600, 32 hex digits) makes a BTHome device encrypted-only."""

    device_id: str
    mac: str  # upper-case AA:BB:CC:DD:EE:FF
    mode: Literal["bthome", "gatt"]
    bindkey_file: Path | None = None
    characteristic: str | None = None  # gatt: the notify characteristic's UUID


@dataclass(frozen=True)
class BleSourceConfig:
    enabled: bool = False
    adapter: str | None = None  # e.g. "hci0"; None: the system's default adapter
    scanning_mode: Literal["auto", "passive", "active"] = "auto"
    watchdog_s: float = 90.0  # restart the scanner after this long without any advert
    plain_repeat_s: float = (
        60.0  # plaintext adverts without packet id: same payload re-accepted after
    )
    max_connections: int = 3
    connect_attempts: int = 4
    connect_timeout_s: float = 10.0
    reconnect_max_s: float = 60.0
    max_payload: int = 4096
    max_values_per_frame: int = 16
    devices: tuple[BleDeviceConfig, ...] = ()


@dataclass(frozen=True)
class BridgeConfig:
    enabled: bool
    broker: BrokerEndpoint
    topic_prefix: str = "edgence"
    inflight: int = 256
    batch: int = 512


@dataclass(frozen=True)
class JournalConfig:
    path: Path
    max_bytes: int = 256 * 2**20
    max_age_s: float = 7 * 86400.0
    synchronous: Literal["normal", "full"] = "normal"
    overflow: Literal["drop-oldest", "reject-new"] = "drop-oldest"


@dataclass(frozen=True)
class PipelineConfig:
    queue_size: int = 20_000
    batch_max: int = 256
    linger_s: float = 0.002


@dataclass(frozen=True)
class BrokerAuthConfig:
    """Per-device broker credentials that `pair` manages (Mosquitto password file + ACL)."""

    password_file: Path | None = None
    acl_file: Path | None = None
    pid_file: Path | None = None  # the broker is sent SIGHUP to reload them
    agent_username: str | None = None  # gets read access to every device topic
    device_topic: str = "devices/{id}/up"


@dataclass(frozen=True)
class EnrollmentConfig:
    enabled: bool
    registry_dir: Path
    rate: float = 10.0
    burst: float = 20.0
    join_window_s: float = 120.0
    advertise_host: str | None = None
    broker_auth: BrokerAuthConfig = field(default_factory=BrokerAuthConfig)


@dataclass(frozen=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"


@dataclass(frozen=True)
class ChainConfig:
    """[chain]: the colocated full node and the agent's own transactions."""

    enabled: bool = False
    rpc_url: str = "http://127.0.0.1:8545"
    ws_url: str | None = None  # none: heads and logs are polled over HTTP
    timeout_s: float = 5.0
    poll_interval_s: float = 1.0
    confirmations: int = 1
    stuck_after_s: float = 60.0
    fee_bump_percent: int = 13
    store: Path | None = None  # the agent's own transactions (<data_dir>/chain.sqlite)


@dataclass(frozen=True)
class ForwardConfig:
    """[forward]: dApp JSON-RPC requests passed to the full node over MQTT 5 and CoAP."""

    enabled: bool = False
    methods: tuple[str, ...] = ()
    max_request_bytes: int = 64 * 1024
    max_response_bytes: int = 1024 * 1024
    max_batch: int = 20
    max_log_range: int = 1000
    rate: float = 20.0
    burst: int = 40
    timeout_s: float = 5.0
    max_inflight: int = 64
    mqtt_enabled: bool = True
    mqtt: BrokerEndpoint | None = None
    topic_prefix: str = "edgence"
    reply_topics: tuple[str, ...] = ("{prefix}/{gateway}/rpc/res/#",)
    coap_enabled: bool = False
    coap_host: str = "127.0.0.1"
    coap_port: int = 5683


@dataclass(frozen=True)
class MasternodeConfig:
    """[masternode]: this gateway as a masternode in the MasternodeRegistry."""

    registry: str | None = None  # the registry contract's address
    vrf_public_key: bytes | None = None  # 33-byte compressed point given at registration
    heartbeat: bool = True  # send heartbeats automatically (needs [chain] and registry)
    heartbeat_every_blocks: int = 0  # 0: half the registry's heartbeat window
    check_interval_s: float = 15.0


@dataclass(frozen=True)
class OracleConfig:
    """[oracle]: dApps query signed observations (MQTT 5, CoAP); optional on-chain submission."""

    enabled: bool = False
    max_inflight: int = 64
    mqtt_enabled: bool = True
    mqtt: BrokerEndpoint | None = None
    topic_prefix: str = "edgence"
    reply_topics: tuple[str, ...] = ("{prefix}/{gateway}/oracle/res/#",)
    coap_enabled: bool = False
    coap_host: str = "127.0.0.1"
    coap_port: int = 5683
    submit_enabled: bool = False
    submit_sensors: tuple[tuple[str, str], ...] = ()
    submit_interval_s: float = 60.0
    submit_max_batch: int = 20


@dataclass(frozen=True)
class MetricsConfig:
    """The loopback HTTP endpoint (/metrics for Prometheus, /health as JSON) and the retained
    health message published upstream every `health_interval_s`."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9464
    health_interval_s: float = 30.0

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


@dataclass(frozen=True)
class ElectionConfig:
    """[election]: validator-election signature rounds on the election board contract."""

    enabled: bool = False
    mode: Literal["paper", "vrf"] = "paper"
    board: str = "0x" + "00" * 20  # the ElectionBoard contract's address
    k: int = 21
    round_length: int = 20  # blocks between round boundaries (must equal the board's)
    cutoff: int = 10  # blocks after the boundary that take submissions (the board's window)
    confirmations: int = 3
    workers: int = 1  # processes verifying VRF proofs (0: one per core)
    catch_up_rounds: int = 16
    topic_prefix: str = "edgence"
    store: Path | None = None  # <data_dir>/election.sqlite
    mqtt: BrokerEndpoint | None = None  # own connection, when the bridge is disabled


@dataclass(frozen=True)
class AgentConfig:
    path: Path
    gateway: GatewayConfig
    mqtt: MqttSourceConfig
    bridge: BridgeConfig
    journal: JournalConfig
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    log: LogConfig = field(default_factory=LogConfig)
    coap: CoapSourceConfig = field(default_factory=CoapSourceConfig)
    serial: SerialSourceConfig = field(default_factory=SerialSourceConfig)
    chain: ChainConfig = field(default_factory=ChainConfig)
    forward: ForwardConfig = field(default_factory=ForwardConfig)
    enrollment: EnrollmentConfig | None = None
    ble: BleSourceConfig = field(default_factory=BleSourceConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    election: ElectionConfig = field(default_factory=ElectionConfig)
    oracle: OracleConfig = field(default_factory=OracleConfig)
    masternode: MasternodeConfig = field(default_factory=MasternodeConfig)
    modbus: ModbusSourceConfig = field(default_factory=ModbusSourceConfig)


class _Section:
    """Typed access to one TOML table; remembers which keys were read to reject unknown ones."""

    def __init__(self, file: str, name: str, data: Any, base: Path) -> None:
        if not isinstance(data, dict):
            raise ConfigError(file, name, "must be a table")
        self.file, self.name, self.data, self.base = file, name, data, base
        self.read: set[str] = set()

    def key(self, k: str) -> str:
        return f"{self.name}.{k}" if self.name else k

    def err(self, k: str, problem: str) -> ConfigError:
        return ConfigError(self.file, self.key(k), problem)

    def get(self, k: str, kind: type[T], default: T | None = None, *, required: bool = False) -> T:
        self.read.add(k)
        if k not in self.data:
            if required:
                raise self.err(k, f"is required ({_kind_name(kind)})")
            return cast(T, default)
        v = self.data[k]
        ok = isinstance(v, kind) and not (kind is int and isinstance(v, bool))
        if kind is float and isinstance(v, int) and not isinstance(v, bool):
            v, ok = float(v), True
        if not ok:
            raise self.err(k, f"must be {_kind_name(kind)}, got {type(v).__name__} {v!r}")
        return cast(T, v)

    def int_range(self, k: str, default: int, lo: int, hi: int) -> int:
        v = self.get(k, int, default)
        if not lo <= v <= hi:
            raise self.err(k, f"must be between {lo} and {hi}, got {v}")
        return v

    def choice(self, k: str, default: str, allowed: tuple[str, ...]) -> str:
        v = self.get(k, str, default)
        if v not in allowed:
            raise self.err(k, f"must be one of {', '.join(allowed)}; got {v!r}")
        return v

    def path(self, k: str, default: str | None = None, *, required: bool = False) -> Path | None:
        v = self.get(k, str, default, required=required)
        if v is None:
            return None
        p = Path(v).expanduser()
        return p if p.is_absolute() else (self.base / p)

    def size(self, k: str, default: int) -> int:
        self.read.add(k)
        v = self.data.get(k, default)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
        m = _SIZE_RE.match(v) if isinstance(v, str) else None
        if not m or int(m.group(1)) <= 0:
            raise self.err(k, f'must be a positive size such as 268435456 or "256 MiB"; got {v!r}')
        return int(m.group(1)) * _SIZE_UNITS[m.group(2)]

    def duration(self, k: str, default: float) -> float:
        self.read.add(k)
        v = self.data.get(k, default)
        if isinstance(v, int | float) and not isinstance(v, bool) and v > 0:
            return float(v)
        m = _DURATION_RE.match(v) if isinstance(v, str) else None
        if not m or float(m.group(1)) <= 0:
            raise self.err(k, f'must be a positive duration such as 3600 or "7d", "12h"; got {v!r}')
        return float(m.group(1)) * _DURATION_UNITS[m.group(2)]

    def str_list(self, k: str, default: tuple[str, ...]) -> tuple[str, ...]:
        v = self.get(k, list, list(default))
        if not all(isinstance(x, str) for x in v):
            raise self.err(k, "must be a list of strings")
        return tuple(v)

    def sub(self, k: str) -> _Section:
        self.read.add(k)
        return _Section(self.file, self.key(k), self.data.get(k, {}), self.base)

    def sub_list(self, k: str) -> list[_Section]:
        """An array of tables ([[a.k]]): one section per entry, keys named a.k[i].x."""
        self.read.add(k)
        v = self.data.get(k, [])
        if not isinstance(v, list):
            raise self.err(k, f"must be an array of tables ([[{self.key(k)}]])")
        return [_Section(self.file, f"{self.key(k)}[{i}]", d, self.base) for i, d in enumerate(v)]

    def device_id(
        self, k: str, default: str | None = None, *, required: bool = False
    ) -> str | None:
        v = self.get(k, str, default, required=required)
        if v is not None and not NAME_RE.match(v):
            raise self.err(k, f"device id {v!r} must be 1-32 of A-Z a-z 0-9 _ . : -")
        return v

    def device_ids(self, k: str) -> tuple[str, ...]:
        ids = self.str_list(k, ())
        for d in ids:
            if not NAME_RE.match(d):
                raise self.err(k, f"device id {d!r} must be 1-32 of A-Z a-z 0-9 _ . : -")
        return ids

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.read)
        if unknown:
            allowed = ", ".join(sorted(self.read))
            raise self.err(unknown[0], f"is not a known key; allowed here: {allowed}")


def _kind_name(kind: type) -> str:
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        list: "a list",
        dict: "a table",
    }.get(kind, kind.__name__)


def parse_broker_url(sec: _Section, k: str, default: str | None) -> tuple[str, int, bool]:
    url = sec.get(k, str, default, required=default is None)
    parts = urlsplit(url)
    if "@" in parts.netloc:
        # Checked first, and the URL is not echoed: it may hold a password.
        raise sec.err(k, "must not carry credentials; use username and password_file")
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not parts.hostname:
        raise sec.err(k, f"must be mqtt://HOST[:PORT] or mqtts://HOST[:PORT]; got {url!r}")
    tls = parts.scheme in ("mqtts", "ssl")
    try:
        port = parts.port if parts.port is not None else (8883 if tls else 1883)
    except ValueError:
        raise sec.err(k, f"has an invalid port in {url!r}") from None
    if not 1 <= port <= 65535:
        raise sec.err(k, f"port must be 1-65535; got {port}")
    return unquote(parts.hostname), port, tls


def _broker(sec: _Section, default_url: str | None) -> BrokerEndpoint:
    host, port, tls = parse_broker_url(sec, "url", default_url)
    proto = sec.choice("protocol", "3.1.1", ("3.1.1", "5"))
    tls = sec.get("tls", bool, tls)
    tls_files = {k: sec.path(k) for k in ("ca_file", "cert_file", "key_file")}
    for k, v in tls_files.items():
        if v is not None and not tls:
            raise sec.err(k, "is only used with TLS: make the url mqtts://HOST[:PORT]")
    if (tls_files["cert_file"] is None) != (tls_files["key_file"] is None):
        raise sec.err("cert_file", "and key_file go together (a client certificate and its key)")
    username = sec.get("username", str)
    password_file = sec.path("password_file")
    if password_file is not None and username is None:
        raise sec.err("password_file", "needs a username (MQTT sends no password without one)")
    return BrokerEndpoint(
        host=host,
        port=port,
        tls=tls,
        ca_file=tls_files["ca_file"],
        cert_file=tls_files["cert_file"],
        key_file=tls_files["key_file"],
        username=username,
        password_file=password_file,
        client_id=sec.get("client_id", str),
        keepalive=sec.int_range("keepalive", 30, 5, 3600),
        protocol=5 if proto == "5" else 4,
    )


def _topic_prefix(sec: _Section, default: str = "edgence") -> str:
    return _checked(
        sec,
        "topic_prefix",
        lambda v: (
            bool(v) and not set(v) & set("+#") and not v.startswith("/") and not v.endswith("/")
        ),
        "a topic prefix without + # or leading/trailing /",
        sec.get("topic_prefix", str, default),
    )


def _request_response_mqtt(
    m: _Section, local_broker_url: str, service: str
) -> tuple[bool, BrokerEndpoint, str, tuple[str, ...]]:
    """[<service>.mqtt] of an MQTT 5 request/response service (forwarding, oracle): enabled,
    broker, topic prefix, and the Response Topics it may answer on."""
    enabled = m.get("enabled", bool, True)
    proto = m.data.get("protocol", "5")
    if proto != "5":
        raise m.err("protocol", f'must be "5" (replies use MQTT 5 response topics); got {proto!r}')
    broker = replace(_broker(m, local_broker_url), protocol=5)
    prefix = _topic_prefix(m)
    example = f"{{prefix}}/{{gateway}}/{service}/res/#"
    reply_topics = m.str_list("reply_topics", (example,))
    for t in reply_topics:
        if not t or t.startswith(("#", "+")):
            raise m.err("reply_topics", f"{t!r} is too wide; e.g. {example}")
    m.done()
    return enabled, broker, prefix, reply_topics


def _checked(sec: _Section, k: str, pred: Callable[[str], bool], what: str, v: str) -> str:
    if not pred(v):
        raise sec.err(k, f"must be {what}; got {v!r}")
    return v


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
    root = _Section(file, "", raw, base)

    def section(name: str) -> _Section:
        root.read.add(name)
        return _Section(file, name, raw.get(name, {}), base)

    g = section("gateway")
    data_dir = cast(Path, g.path("data_dir", "data"))
    gateway = GatewayConfig(
        key_file=cast(Path, g.path("key_file", required=True)),
        passphrase_file=g.path("passphrase_file"),
        data_dir=data_dir,
        chain_id=g.int_range("chain_id", 31337, 1, 2**64 - 1),
        verifying_contract=_checked(
            g,
            "verifying_contract",
            lambda v: re.fullmatch(r"0x[0-9a-fA-F]{40}", v) is not None,
            "0x followed by 40 hex digits",
            g.get("verifying_contract", str, "0x" + "00" * 20),
        ),
        domain_name=g.get("domain_name", str, "Edgence"),
        domain_version=g.get("domain_version", str, "1"),
    )
    g.done()

    s = section("sources")
    m = s.sub("mqtt")
    mqtt = MqttSourceConfig(
        enabled=m.get("enabled", bool, True),
        broker=_broker(m, "mqtt://127.0.0.1:1883"),
        topics=m.str_list("topics", ("devices/+/up",)),
        qos=m.int_range("qos", 1, 0, 1),
        max_payload=m.int_range("max_payload", 4096, 64, 256 * 1024),
        max_values_per_frame=m.int_range("max_values_per_frame", 16, 1, 256),
        allowed_devices=m.str_list("allowed_devices", ()),
    )
    if not mqtt.topics:
        raise m.err("topics", "must list at least one topic filter, e.g. devices/+/up")
    for t in mqtt.topics:
        if "+" not in t.split("/") or t.count("+") != 1 or "#" in t:
            raise m.err(
                "topics",
                f"each topic needs exactly one '+' level for the device id; "
                f"got {t!r} (e.g. devices/+/up)",
            )
    for d in mqtt.allowed_devices:
        if not NAME_RE.match(d):
            raise m.err("allowed_devices", f"device id {d!r} must be 1-32 of A-Z a-z 0-9 _ . : -")
    m.done()
    coap = _coap_source(s.sub("coap"))
    serial = _serial_source(s.sub("serial"))
    ble = _ble_source(s.sub("ble"))
    elsewhere = {d: "sources.mqtt.allowed_devices" for d in mqtt.allowed_devices}
    elsewhere |= {d: "sources.coap" for d in coap.allowed_devices}
    elsewhere |= {d: "sources.serial.ports" for d in serial.allowed_devices}
    elsewhere |= {d.device_id: "sources.ble.devices" for d in ble.devices}
    modbus = read_modbus_source(s.sub("modbus"), elsewhere)
    s.done()

    b = section("bridge")
    bridge = BridgeConfig(
        enabled=b.get("enabled", bool, True),
        broker=_broker(b, "mqtt://127.0.0.1:1884"),
        topic_prefix=_topic_prefix(b),
        inflight=b.int_range("inflight", 256, 1, 65_000),
        batch=b.int_range("batch", 512, 1, 10_000),
    )
    b.done()

    j = section("journal")
    journal = JournalConfig(
        path=cast(Path, j.path("path", str(data_dir / "journal.sqlite"))),
        max_bytes=j.size("max_bytes", 256 * 2**20),
        max_age_s=j.duration("max_age", 7 * 86400.0),
        synchronous=cast(
            Literal["normal", "full"], j.choice("synchronous", "normal", ("normal", "full"))
        ),
        overflow=cast(
            Literal["drop-oldest", "reject-new"],
            j.choice("overflow", "drop-oldest", ("drop-oldest", "reject-new")),
        ),
    )
    j.done()

    p = section("pipeline")
    pipeline = PipelineConfig(
        queue_size=p.int_range("queue_size", 20_000, 16, 1_000_000),
        batch_max=p.int_range("batch_max", 256, 1, 4096),
        linger_s=p.int_range("linger_ms", 2, 0, 100) / 1000,
    )
    p.done()

    e = section("enrollment")
    ma = e.sub("mosquitto")
    broker_auth = BrokerAuthConfig(
        password_file=ma.path("password_file"),
        acl_file=ma.path("acl_file"),
        pid_file=ma.path("pid_file"),
        agent_username=ma.get("agent_username", str),
        device_topic=_checked(
            ma,
            "device_topic",
            lambda v: v.count("{id}") == 1 and not set(v) & set("+#"),
            "a topic with one {id} and no wildcards, e.g. devices/{id}/up",
            ma.get("device_topic", str, "devices/{id}/up"),
        ),
    )
    if (broker_auth.password_file is None) != (broker_auth.acl_file is None):
        raise ma.err("acl_file", "password_file and acl_file go together: set both or neither")
    ma.done()
    window = e.duration("join_window", 120.0)
    if not 1 <= window <= 254:
        raise e.err("join_window", f"must be 1s to 254s (a short window); got {window:g}s")
    rate = e.get("rate", float, 10.0)
    if not 0 < rate <= 100_000:
        raise e.err("rate", f"frames per second per device, above 0 and at most 100000; got {rate}")
    enrollment = EnrollmentConfig(
        enabled=e.get("enabled", bool, True),
        registry_dir=cast(Path, e.path("registry_dir", str(data_dir / "devices"))),
        rate=rate,
        burst=float(e.int_range("burst", 20, 1, 1_000_000)),
        join_window_s=window,
        advertise_host=e.get("advertise_host", str),
        broker_auth=broker_auth,
    )
    e.done()

    lg = section("log")
    log = LogConfig(
        level=cast(
            Literal["debug", "info", "warning", "error"],
            lg.choice("level", "info", ("debug", "info", "warning", "error")),
        )
    )
    lg.done()

    mt = section("metrics")
    metrics = _metrics(mt)
    mt.done()
    chain = _chain_section(section("chain"), data_dir)
    forward = _forward_section(section("forward"), mqtt.broker.url)
    election = _election_section(section("election"), data_dir, chain, bridge)
    oracle = _oracle_section(section("oracle"), mqtt.broker.url, chain, forward)
    # Three CoAP servers may run (device source, dApp forwarding, oracle queries): each needs
    # its own UDP port on overlapping addresses.
    servers = []
    if coap.enabled:
        servers.append(("sources.coap.port", "[sources.coap]", coap.bind, coap.port))
    if forward.enabled and forward.coap_enabled:
        servers.append(
            ("forward.coap.bind", "[forward.coap]", forward.coap_host, forward.coap_port)
        )
    if oracle.enabled and oracle.coap_enabled:
        servers.append(("oracle.coap.bind", "[oracle.coap]", oracle.coap_host, oracle.coap_port))
    for i, (key, name, host, port) in enumerate(servers):
        for _, other, other_host, other_port in servers[:i]:
            if port == other_port and (
                host == other_host or {host, other_host} & {"0.0.0.0", "::"}
            ):
                raise ConfigError(
                    file,
                    key,
                    f"{name} and {other} both use UDP port {port} on {host} / {other_host}; "
                    "each CoAP server needs its own port",
                )
    if oracle.submit_enabled and int(gateway.verifying_contract, 16) == 0:
        raise ConfigError(
            file,
            "oracle.submit.enabled",
            "needs gateway.verifying_contract set to the ObservationOracle's address "
            "(observations are signed for it); it is the zero address",
        )
    masternode = _masternode_section(section("masternode"))
    root.done()
    return AgentConfig(
        path=Path(file),
        gateway=gateway,
        mqtt=mqtt,
        bridge=bridge,
        journal=journal,
        pipeline=pipeline,
        log=log,
        enrollment=enrollment,
        ble=ble,
        coap=coap,
        serial=serial,
        metrics=metrics,
        chain=chain,
        forward=forward,
        election=election,
        oracle=oracle,
        masternode=masternode,
        modbus=modbus,
    )


_MAC_RE = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}\Z")
_UUID_RE = re.compile(
    r"^([0-9A-Fa-f]{4}|[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12})\Z"
)


def _ble_source(sec: _Section) -> BleSourceConfig:
    adapter = sec.get("adapter", str)
    if adapter is not None and not re.fullmatch(r"[A-Za-z0-9_.:-]{1,32}", adapter):
        raise sec.err("adapter", f"must be an adapter name such as hci0; got {adapter!r}")
    devices: list[BleDeviceConfig] = []
    table = sec.sub("devices")
    macs: dict[str, str] = {}
    for device_id in list(table.data):
        if not NAME_RE.match(device_id):
            raise table.err(device_id, "a device id must be 1-32 of A-Z a-z 0-9 _ . : -")
        d = table.sub(device_id)
        mac = d.get("mac", str, required=True)
        if not _MAC_RE.match(mac):
            raise d.err("mac", f"must be a Bluetooth address AA:BB:CC:DD:EE:FF; got {mac!r}")
        mac = mac.upper()
        if mac in macs:
            raise d.err("mac", f"{mac} is already the address of device {macs[mac]!r}")
        macs[mac] = device_id
        mode = d.choice("mode", "bthome", ("bthome", "gatt"))
        bindkey_file = d.path("bindkey_file")
        characteristic = d.get("characteristic", str)
        if mode == "gatt":
            if characteristic is None or not _UUID_RE.match(characteristic):
                raise d.err(
                    "characteristic",
                    "is required for mode gatt: the UUID of the notify characteristic "
                    f"(16-bit like 2a6e or 128-bit); got {characteristic!r}",
                )
            if bindkey_file is not None:
                raise d.err("bindkey_file", "is for BTHome devices (mode bthome) only")
        elif characteristic is not None:
            raise d.err("characteristic", "is for GATT devices (mode gatt) only")
        d.done()
        devices.append(
            BleDeviceConfig(
                device_id=device_id,
                mac=mac,
                mode=cast(Literal["bthome", "gatt"], mode),
                bindkey_file=bindkey_file,
                characteristic=characteristic.lower() if characteristic else None,
            )
        )
    cfg = BleSourceConfig(
        enabled=sec.get("enabled", bool, False),
        adapter=adapter,
        scanning_mode=cast(
            Literal["auto", "passive", "active"],
            sec.choice("scanning_mode", "auto", ("auto", "passive", "active")),
        ),
        watchdog_s=sec.duration("watchdog", 90.0),
        plain_repeat_s=sec.duration("plain_repeat", 60.0),
        max_connections=sec.int_range("max_connections", 3, 1, 32),
        connect_attempts=sec.int_range("connect_attempts", 4, 1, 100),
        connect_timeout_s=sec.duration("connect_timeout", 10.0),
        reconnect_max_s=sec.duration("reconnect_max", 60.0),
        max_payload=sec.int_range("max_payload", 4096, 64, 256 * 1024),
        max_values_per_frame=sec.int_range("max_values_per_frame", 16, 1, 256),
        devices=tuple(devices),
    )
    sec.done()
    return cfg


def _coap_source(c: _Section) -> CoapSourceConfig:
    observe = []
    for o in c.sub_list("observe"):
        uri = o.get("uri", str, required=True)
        parts = urlsplit(uri)
        if parts.scheme != "coap" or not parts.hostname:
            raise o.err("uri", f"must be coap://HOST[:PORT]/PATH; got {uri!r}")
        reregister = o.duration("reregister_after", 1.0) if "reregister_after" in o.data else None
        observe.append(
            CoapObserveConfig(
                device=cast(str, o.device_id("device", required=True)),
                uri=uri,
                timeout_s=o.duration("timeout", 10.0),
                reregister_s=reregister,
            )
        )
        o.read.add("reregister_after")
        o.done()
    devices = [o.device for o in observe]
    if len(set(devices)) != len(devices):
        raise c.err("observe", "each device may be observed once (one [[...observe]] per device)")
    cfg = CoapSourceConfig(
        enabled=c.get("enabled", bool, False),
        bind=c.get("bind", str, "0.0.0.0"),
        port=c.int_range("port", 5683, 1, 65535),
        max_payload=c.int_range("max_payload", 4096, 64, 64 * 1024),
        max_values_per_frame=c.int_range("max_values_per_frame", 16, 1, 256),
        allowed_devices=c.device_ids("allowed_devices"),
        busy_max_age=c.int_range("busy_max_age", 2, 1, 3600),
        oscore_dir=c.path("oscore_dir"),
        observe=tuple(observe),
        backoff_max_s=c.duration("backoff_max", 30.0),
    )
    c.done()
    return cfg


def _serial_source(sr: _Section) -> SerialSourceConfig:
    ports = []
    for p in sr.sub_list("ports"):
        framing = p.get("framing", str, "8N1")
        if not re.fullmatch(r"[5-8][NEO][12]", framing):
            raise p.err(
                "framing", f"must be data bits, parity, stop bits such as 8N1; got {framing!r}"
            )
        port = SerialPortConfig(
            path=cast(Path, p.path("path", required=True)),
            baud=p.int_range("baud", 115200, 50, 4_000_000),
            bytesize=int(framing[0]),
            parity=cast(Literal["N", "E", "O"], framing[1]),
            stopbits=int(framing[2]),
            device=p.device_id("device"),
            gps_device=p.device_id("gps_device"),
            allowed_devices=p.device_ids("allowed_devices"),
            max_line=p.int_range("max_line", 4112, 128, 1024 * 1024),
        )
        p.done()
        ports.append(port)
    paths = [p.path for p in ports]
    if len(set(paths)) != len(paths):
        raise sr.err("ports", "lists one path twice; each port may be read by one reader only")
    cfg = SerialSourceConfig(
        ports=tuple(ports),
        max_values_per_frame=sr.int_range("max_values_per_frame", 16, 1, 256),
        reopen_max_s=sr.duration("reopen_max", 10.0),
    )
    sr.done()
    return cfg


_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _metrics(sec: _Section) -> MetricsConfig:
    listen = sec.get("listen", str, "127.0.0.1:9464")
    host, sep, port = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise sec.err("listen", f'must be HOST:PORT such as "127.0.0.1:9464"; got {listen!r}')
    if host not in _LOOPBACK and not host.startswith("127."):
        # The endpoint has no authentication: it stays on loopback (scrape it through an SSH
        # tunnel or a local Prometheus agent / reverse proxy).
        raise sec.err("listen", f"must be a loopback address (127.0.0.1, ::1); got {host!r}")
    return MetricsConfig(
        enabled=sec.get("enabled", bool, True),
        host=host,
        port=int(port),
        health_interval_s=sec.duration("health_interval", 30.0),
    )


def _node_url(sec: _Section, k: str, default: str | None, schemes: tuple[str, ...]) -> str | None:
    v = sec.get(k, str, default)
    if v is None or (default is None and v == ""):
        return None
    parts = urlsplit(v)
    if "@" in parts.netloc:
        raise sec.err(k, "must not carry credentials")
    if parts.scheme not in schemes or not parts.hostname:
        want = " or ".join(f"{x}://HOST[:PORT][/PATH]" for x in schemes)
        raise sec.err(k, f"must be {want}; got {v!r}")
    try:
        _ = parts.port
    except ValueError:
        raise sec.err(k, f"has an invalid port in {v!r}") from None
    return v


def _chain_section(c: _Section, data_dir: Path) -> ChainConfig:
    chain = ChainConfig(
        enabled=c.get("enabled", bool, False),
        rpc_url=cast(str, _node_url(c, "rpc_url", "http://127.0.0.1:8545", ("http", "https"))),
        ws_url=_node_url(c, "ws_url", None, ("ws", "wss")),
        timeout_s=c.duration("timeout", 5.0),
        poll_interval_s=c.duration("poll_interval", 1.0),
        confirmations=c.int_range("confirmations", 1, 1, 1000),
        stuck_after_s=c.duration("stuck_after", 60.0),
        fee_bump_percent=c.int_range("fee_bump_percent", 13, 10, 200),
        store=c.path("store", str(data_dir / "chain.sqlite")),
    )
    c.done()
    return chain


def _forward_section(f: _Section, local_broker_url: str) -> ForwardConfig:
    methods = f.str_list("methods", DEFAULT_METHODS)
    for mth in methods:
        if forbidden(mth):
            raise f.err(
                "methods",
                f"{mth!r} can never be forwarded (node administration, debugging, keys held by "
                "the node, mining or development-node control)",
            )
    mqtt_enabled, broker, prefix, reply_topics = _request_response_mqtt(
        f.sub("mqtt"), local_broker_url, "rpc"
    )
    co = f.sub("coap")
    coap_enabled = co.get("enabled", bool, False)
    host, coap_port = _coap_bind(co, "127.0.0.1:5683")
    co.done()
    fwd = ForwardConfig(
        enabled=f.get("enabled", bool, False),
        methods=methods,
        max_request_bytes=f.size("max_request_bytes", 64 * 1024),
        max_response_bytes=f.size("max_response_bytes", 1024 * 1024),
        max_batch=f.int_range("max_batch", 20, 1, 1000),
        max_log_range=f.int_range("max_log_range", 1000, 1, 1_000_000),
        rate=f.get("rate", float, 20.0),
        burst=f.int_range("burst", 40, 1, 100_000),
        timeout_s=f.duration("timeout", 5.0),
        max_inflight=f.int_range("max_inflight", 64, 1, 10_000),
        mqtt_enabled=mqtt_enabled,
        mqtt=broker,
        topic_prefix=prefix,
        reply_topics=reply_topics,
        coap_enabled=coap_enabled,
        coap_host=host,
        coap_port=coap_port,
    )
    if fwd.rate <= 0:
        raise f.err("rate", f"must be a positive number of requests per second; got {fwd.rate}")
    f.done()
    return fwd


def _election_section(
    e: _Section, data_dir: Path, chain: ChainConfig, bridge: BridgeConfig
) -> ElectionConfig:
    enabled = e.get("enabled", bool, False)
    m = e.sub("mqtt")
    broker = _broker(m, None) if m.data else None
    m.done()
    cfg = ElectionConfig(
        enabled=enabled,
        mode=cast(Literal["paper", "vrf"], e.choice("mode", "paper", ("paper", "vrf"))),
        board=_checked(
            e,
            "board",
            lambda v: re.fullmatch(r"0x[0-9a-fA-F]{40}", v) is not None,
            "the election board's address: 0x followed by 40 hex digits",
            e.get("board", str, "0x" + "00" * 20, required=enabled),
        ).lower(),
        k=e.int_range("k", 21, 1, 100_000),
        round_length=e.int_range("round_length", 20, 2, 1_000_000),
        cutoff=e.int_range("cutoff", 10, 2, 255),
        confirmations=e.int_range("confirmations", 3, 1, 254),
        workers=e.int_range("workers", 1, 0, 64),
        catch_up_rounds=e.int_range("catch_up_rounds", 16, 1, 10_000),
        topic_prefix=_topic_prefix(e),
        store=e.path("store", str(data_dir / "election.sqlite")),
        mqtt=broker,
    )
    if cfg.cutoff > cfg.round_length:
        raise e.err(
            "cutoff", f"must not exceed round_length ({cfg.round_length}); got {cfg.cutoff}"
        )
    if cfg.confirmations >= cfg.cutoff:
        raise e.err(
            "confirmations",
            f"must be below cutoff ({cfg.cutoff} blocks): agents submit only after the boundary "
            f"block has that many confirmations; got {cfg.confirmations}",
        )
    if enabled and not chain.enabled:
        raise e.err("enabled", "needs the full node: set [chain] enabled = true")
    if enabled and not bridge.enabled and broker is None:
        raise e.err(
            "mqtt",
            "is needed when the bridge is disabled: results are published on an MQTT broker "
            '(add [election.mqtt] url = "mqtt://HOST:PORT")',
        )
    e.done()
    return cfg


_ADDRESS_RE = re.compile(r"^0x[0-9a-fA-F]{40}\Z")


def _coap_bind(sec: _Section, default: str) -> tuple[str, int]:
    bind = sec.get("bind", str, default)
    host, _, port_s = bind.rpartition(":")
    if not host or not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
        raise sec.err("bind", f'must be "HOST:PORT", e.g. "0.0.0.0:5683"; got {bind!r}')
    return host.strip("[]"), int(port_s)


def _oracle_section(
    o: _Section, local_broker_url: str, chain: ChainConfig, forward: ForwardConfig
) -> OracleConfig:
    enabled = o.get("enabled", bool, False)
    max_inflight = o.int_range("max_inflight", 64, 1, 10_000)
    mqtt_enabled, broker, prefix, reply_topics = _request_response_mqtt(
        o.sub("mqtt"), local_broker_url, "oracle"
    )
    co = o.sub("coap")
    coap_enabled = co.get("enabled", bool, False)
    host, port = _coap_bind(co, "127.0.0.1:5683")
    if (
        coap_enabled
        and forward.enabled
        and forward.coap_enabled
        and (host, port) == (forward.coap_host, forward.coap_port)
    ):
        raise co.err(
            "bind",
            f"{host}:{port} is also forward.coap.bind; the oracle's CoAP server needs a port "
            "of its own (e.g. 5684)",
        )
    co.done()
    sb = o.sub("submit")
    submit_enabled = sb.get("enabled", bool, False)
    sensors: list[tuple[str, str]] = []
    for item in sb.str_list("sensors", ()):
        device, slash, sensor = item.partition("/")
        if not slash or not NAME_RE.match(device) or not NAME_RE.match(sensor):
            raise sb.err(
                "sensors", f'each item is "DEVICE/SENSOR", e.g. "dev-1/temp"; got {item!r}'
            )
        sensors.append((device, sensor))
    if submit_enabled and not sensors:
        raise sb.err("sensors", 'must list what to submit, e.g. ["dev-1/temp"]')
    if submit_enabled and not chain.enabled:
        raise sb.err("enabled", "needs [chain] enabled = true (submissions are transactions)")
    interval = sb.duration("interval", 60.0)
    max_batch = sb.int_range("max_batch", 20, 1, 500)
    sb.done()
    o.done()
    return OracleConfig(
        enabled=enabled,
        max_inflight=max_inflight,
        mqtt_enabled=mqtt_enabled,
        mqtt=broker,
        topic_prefix=prefix,
        reply_topics=reply_topics,
        coap_enabled=coap_enabled,
        coap_host=host,
        coap_port=port,
        submit_enabled=submit_enabled,
        submit_sensors=tuple(sensors),
        submit_interval_s=interval,
        submit_max_batch=max_batch,
    )


def _masternode_section(mn: _Section) -> MasternodeConfig:
    registry = mn.get("registry", str)
    if registry is not None and not _ADDRESS_RE.match(registry):
        raise mn.err("registry", f"must be 0x followed by 40 hex digits; got {registry!r}")
    vrf_hex = mn.get("vrf_public_key", str)
    vrf: bytes | None = None
    if vrf_hex is not None:
        try:
            vrf = bytes.fromhex(vrf_hex.removeprefix("0x"))
        except ValueError:
            vrf = b""
        if len(vrf) != 33 or vrf[0] not in (2, 3):
            raise mn.err(
                "vrf_public_key",
                "must be a 33-byte compressed secp256k1 point in hex (0x02... or 0x03...)",
            )
    cfg = MasternodeConfig(
        registry=registry,
        vrf_public_key=vrf,
        heartbeat=mn.get("heartbeat", bool, True),
        heartbeat_every_blocks=mn.int_range("heartbeat_every_blocks", 0, 0, 10_000_000),
        check_interval_s=mn.duration("check_interval", 15.0),
    )
    mn.done()
    return cfg
