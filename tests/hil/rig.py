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
    # Many opto-isolated relay modules switch on when their input is LOW: then set this.
    power_relay_active_low: bool = False
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
    gateway_coap_port: int | None = None  # the agent's CoAP port on that address (None: free)


class _Table:
    """One TOML table of a rig file: typed lookups whose errors name the file and dotted key."""

    def __init__(self, file: str, where: str, data: Any) -> None:
        if not isinstance(data, dict):
            raise ConfigError(file, where, "must be a table")
        self.file, self.where, self.data = file, where, data

    def key(self, k: str) -> str:
        return f"{self.where}.{k}" if self.where else k

    def get(self, k: str, kind: type, default: Any = ...) -> Any:
        if k not in self.data:
            if default is ...:
                raise ConfigError(self.file, self.key(k), "is missing")
            return default
        v = self.data[k]
        if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
            raise ConfigError(self.file, self.key(k), f"must be {kind.__name__}, not {v!r}")
        return v

    def names(self, k: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
        items = self.get(k, list, [])
        for x in items:
            if x not in allowed:
                raise ConfigError(
                    self.file, self.key(k), f"{x!r} is not one of {', '.join(allowed)}"
                )
        return tuple(items)

    def only(self, known: set[str]) -> None:
        extra = sorted(set(self.data) - known)
        if extra:
            raise ConfigError(
                self.file, self.key(extra[0]), f"unknown key (allowed: {', '.join(sorted(known))})"
            )


def load_rig(path: Path) -> Rig:
    file = str(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(file, None, f"not a readable TOML rig file: {exc}") from None
    top = _Table(file, "", data)
    top.only({"rig", "gateway", "board"})
    rig = _Table(file, "rig", top.get("rig", dict))
    rig.only({"name", "description"})
    gw = _Table(file, "gateway", top.get("gateway", dict, {}))
    gw.only({"host", "mqtt_port", "coap_port"})
    board_keys = {
        "name", "kind", "port", "transports", "sensors", "fixtures", "uart_port",
        "power_relay_gpio", "power_relay_active_low", "wifi_ssid", "wifi_password_file",
    }  # fmt: skip
    boards = []
    for i, raw in enumerate(top.get("board", list)):
        b = _Table(file, f"board[{i}]", raw)
        b.only(board_keys)
        kind = b.get("kind", str)
        if kind not in BOARD_KINDS:
            raise ConfigError(
                file, b.key("kind"), f"{kind!r} is not one of {', '.join(BOARD_KINDS)}"
            )
        port = b.get("port", str, None)
        if kind != "emulated" and port is None:
            raise ConfigError(file, b.key("port"), f"a {kind} board needs its serial port")
        boards.append(
            BoardSpec(
                name=b.get("name", str),
                kind=kind,
                port=port,
                transports=b.names("transports", TRANSPORTS),
                sensors=b.names("sensors", SENSORS),
                fixtures=b.names("fixtures", FIXTURES),
                uart_port=b.get("uart_port", str, None),
                power_relay_gpio=b.get("power_relay_gpio", int, None),
                power_relay_active_low=b.get("power_relay_active_low", bool, False),
                wifi_ssid=b.get("wifi_ssid", str, None),
                wifi_password_file=b.get("wifi_password_file", str, None),
            )
        )
    if not boards:
        raise ConfigError(file, "board", "a rig needs at least one [[board]]")
    return Rig(
        path=path,
        name=rig.get("name", str),
        description=rig.get("description", str, ""),
        gateway_host=gw.get("host", str, "127.0.0.1"),
        gateway_mqtt_port=gw.get("mqtt_port", int, None),
        boards=tuple(boards),
        gateway_coap_port=gw.get("coap_port", int, None),
    )
