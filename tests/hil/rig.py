"""Hardware-in-the-loop rig files (hardware/rigs/*.toml): which boards a rig has, their
serial ports, transports, attached sensors and fixtures. Every error names the file and key."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import ConfigError

BOARD_KINDS = ("emulated", "esp32", "pico_w")
TRANSPORTS = ("mqtt", "coap", "serial", "ble")
SENSORS = ("simulated", "bme280", "dht22", "adc")
# What a field test may need besides a transport: see hardware/README.md for each.
FIXTURES = ("deploy", "power_cycle", "link_loss", "uart_loopback", "ble", "wifi", "deep_sleep")


@dataclass(frozen=True)
class BoardSpec:
    name: str
    kind: str
    port: str | None  # the board's REPL serial port (None: emulated board over a pty)
    transports: tuple[str, ...]
    sensors: tuple[str, ...]
    fixtures: tuple[str, ...]
    uart_port: str | None = None  # the host's end of the board's UART (uart_loopback)
    power_relay_gpio: int | None = None  # host GPIO switching the board's power (power_cycle)
    wifi_ssid: str | None = None
    wifi_password_file: str | None = None

    def has(self, need: str) -> bool:
        return need in self.fixtures or need in self.transports or need in self.sensors


@dataclass(frozen=True)
class Rig:
    path: Path
    name: str
    description: str
    gateway_host: str  # the address boards use to reach the gateway's broker
    gateway_mqtt_port: int | None  # a fixed LAN port for real boards (None: any free port)
    boards: tuple[BoardSpec, ...]


def _get(d: dict[str, Any], key: str, kind: type, where: str, default: Any = ...) -> Any:
    if key not in d:
        if default is ...:
            raise ConfigError(f"{where}.{key} is missing")
        return default
    v = d[key]
    if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
        raise ConfigError(f"{where}.{key} must be {kind.__name__}, not {v!r}")
    return v


def _names(d: dict[str, Any], key: str, allowed: tuple[str, ...], where: str) -> tuple[str, ...]:
    items = _get(d, key, list, where, [])
    for x in items:
        if x not in allowed:
            raise ConfigError(f"{where}.{key}: {x!r} is not one of {', '.join(allowed)}")
    return tuple(items)


def _unknown(d: dict[str, Any], known: set[str], where: str) -> None:
    extra = sorted(set(d) - known)
    if extra:
        raise ConfigError(f"{where}: unknown key {extra[0]!r} (allowed: {', '.join(sorted(known))})")


def load_rig(path: Path) -> Rig:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    _unknown(data, {"rig", "gateway", "board"}, str(path))
    rig = _get(data, "rig", dict, str(path))
    _unknown(rig, {"name", "description"}, f"{path}: rig")
    gw = _get(data, "gateway", dict, str(path), {})
    _unknown(gw, {"host", "mqtt_port"}, f"{path}: gateway")
    boards = []
    board_keys = {
        "name", "kind", "port", "transports", "sensors", "fixtures", "uart_port",
        "power_relay_gpio", "wifi_ssid", "wifi_password_file",
    }  # fmt: skip
    for i, b in enumerate(_get(data, "board", list, str(path))):
        where = f"{path}: board[{i}]"
        _unknown(b, board_keys, where)
        kind = _get(b, "kind", str, where)
        if kind not in BOARD_KINDS:
            raise ConfigError(f"{where}.kind: {kind!r} is not one of {', '.join(BOARD_KINDS)}")
        port = _get(b, "port", str, where, None)
        if kind != "emulated" and port is None:
            raise ConfigError(f"{where}.port: a {kind} board needs its serial port")
        boards.append(
            BoardSpec(
                name=_get(b, "name", str, where),
                kind=kind,
                port=port,
                transports=_names(b, "transports", TRANSPORTS, where),
                sensors=_names(b, "sensors", SENSORS, where),
                fixtures=_names(b, "fixtures", FIXTURES, where),
                uart_port=_get(b, "uart_port", str, where, None),
                power_relay_gpio=_get(b, "power_relay_gpio", int, where, None),
                wifi_ssid=_get(b, "wifi_ssid", str, where, None),
                wifi_password_file=_get(b, "wifi_password_file", str, where, None),
            )
        )
    if not boards:
        raise ConfigError(f"{path}: a rig needs at least one [[board]]")
    return Rig(
        path=path,
        name=_get(rig, "name", str, f"{path}: rig"),
        description=_get(rig, "description", str, f"{path}: rig", ""),
        gateway_host=_get(gw, "host", str, f"{path}: gateway", "127.0.0.1"),
        gateway_mqtt_port=_get(gw, "mqtt_port", int, f"{path}: gateway", None),
        boards=tuple(boards),
    )
