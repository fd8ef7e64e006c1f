"""Home Assistant MQTT discovery payloads for the gateway's devices and sensors, as pure values:
topic-safe object ids, HA units and device classes from the frame's UCUM-ish units, the JSON
config of each entity, the state document, and the per-device coalescing of state updates.

The keys used are the documented ones of Home Assistant's MQTT sensor and button platforms and
of the discovery `device`/`origin` mappings (home-assistant.io, integrations/sensor.mqtt,
button.mqtt and mqtt "Discovery payload"); tests/unit/test_hapayload.py holds that list.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

MANUFACTURER = "edgence"
ORIGIN_NAME = "edgence-agent"
SUPPORT_URL = "https://github.com/edgence/edgence-agent"
AVAILABLE, NOT_AVAILABLE = "online", "offline"

_SAFE = re.compile(r"[A-Za-z0-9\-]")


def object_id(label: str) -> str:
    """`label` (a device id or sensor name: A-Z a-z 0-9 _ . : -) in HA's `[a-zA-Z0-9_-]`, one
    to one: every other character, and "_" itself, becomes "_" and two hex digits, so that
    "a.b" (a_2eb) and "a_b" (a_5fb) stay apart, and "__" never occurs inside one label."""
    return "".join(c if _SAFE.match(c) else f"_{ord(c):02x}" for c in label)


def join_ids(*labels: str) -> str:
    """Escaped labels joined by "__", which no escaped label contains: still one to one."""
    return "__".join(object_id(x) for x in labels)


# UCUM-ish unit of a frame -> (HA unit_of_measurement or None for a count, device_class or
# None, state_class). Sensor-name hints refine "%" and "ppm" below.
UNITS: dict[str, tuple[str | None, str | None, str]] = {
    "Cel": ("°C", "temperature", "measurement"),
    "[degF]": ("°F", "temperature", "measurement"),
    "K": ("K", "temperature", "measurement"),
    "%": ("%", None, "measurement"),
    "Pa": ("Pa", "pressure", "measurement"),
    "hPa": ("hPa", "pressure", "measurement"),
    "kPa": ("kPa", "pressure", "measurement"),
    "bar": ("bar", "pressure", "measurement"),
    "mbar": ("mbar", "pressure", "measurement"),
    "V": ("V", "voltage", "measurement"),
    "mV": ("mV", "voltage", "measurement"),
    "A": ("A", "current", "measurement"),
    "mA": ("mA", "current", "measurement"),
    "W": ("W", "power", "measurement"),
    "kW": ("kW", "power", "measurement"),
    "Wh": ("Wh", "energy", "total_increasing"),
    "kWh": ("kWh", "energy", "total_increasing"),
    "lx": ("lx", "illuminance", "measurement"),
    "[ppm]": ("ppm", None, "measurement"),
    "ppm": ("ppm", None, "measurement"),
    "[ppb]": ("ppb", None, "measurement"),
    "ug/m3": ("µg/m³", None, "measurement"),
    "dB": ("dB", "sound_pressure", "measurement"),
    "dBm": ("dBm", "signal_strength", "measurement"),
    "Hz": ("Hz", "frequency", "measurement"),
    "m/s": ("m/s", "wind_speed", "measurement"),
    "km/h": ("km/h", "wind_speed", "measurement"),
    "m": ("m", "distance", "measurement"),
    "cm": ("cm", "distance", "measurement"),
    "mm": ("mm", "distance", "measurement"),
    "km": ("km", "distance", "measurement"),
    "s": ("s", "duration", "measurement"),
    "min": ("min", "duration", "measurement"),
    "h": ("h", "duration", "measurement"),
    "d": ("d", "duration", "measurement"),
    "kg": ("kg", "weight", "measurement"),
    "g": ("g", "weight", "measurement"),
    "L": ("L", "volume_storage", "measurement"),
    "m3": ("m³", "volume_storage", "measurement"),
    "1": (None, None, "measurement"),  # UCUM's dimensionless unit: a count, no unit in HA
}


def ha_unit(unit: str, sensor: str = "") -> tuple[str | None, str | None, str]:
    """(unit_of_measurement, device_class, state_class) for a frame's unit; an unknown unit is
    passed through as it is, without a device class."""
    mapped = UNITS.get(unit)
    if mapped is None:
        return unit, None, "measurement"
    ha, device_class, state_class = mapped
    name = sensor.lower()
    if ha == "%" and name.startswith(("hum", "rh")):
        device_class = "humidity"
    elif ha == "%" and name.startswith("bat"):
        device_class = "battery"
    elif ha == "ppm" and "co2" in name:
        device_class = "carbon_dioxide"
    elif ha == "µg/m³" and name in ("pm25", "pm2.5", "pm2_5"):
        device_class = "pm25"
    elif ha == "µg/m³" and name == "pm10":
        device_class = "pm10"
    return ha, device_class, state_class


@dataclass(frozen=True, slots=True)
class DeviceAction:
    """A command a device accepts, shown in Home Assistant as a button (pressing it publishes
    `payload` on `command_topic`) or a switch (publishing ON or OFF there, its state read from
    `state_topic`). `attributes_topic` carries the outcome of the last command and its signed
    receipt (agent/hacommands.py)."""

    name: str  # A-Z a-z 0-9 _ . : - (the entity's name)
    command_topic: str
    payload: str = "PRESS"
    kind: str = "button"  # or "switch"
    state_topic: str | None = None  # switch: "ON" / "OFF" once the device answered ok
    attributes_topic: str | None = None


@dataclass(frozen=True, slots=True)
class Topics:
    """Where one gateway's discovery lives: Home Assistant's `discovery_prefix`, and the
    agent's own state and availability topics under `<topic_prefix>/<gateway>/ha/`."""

    discovery_prefix: str
    topic_prefix: str
    gateway: str  # 0x-prefixed address

    @property
    def node_id(self) -> str:
        """The discovery topic's node level: one per gateway (two gateways on one HA differ)."""
        return f"edgence_{self.gateway[2:14].lower()}"

    @property
    def base(self) -> str:
        return f"{self.topic_prefix}/{self.gateway}/ha"

    @property
    def availability(self) -> str:
        return f"{self.base}/availability"

    def state(self, device: str) -> str:
        return f"{self.base}/{object_id(device)}/state"

    @property
    def gateway_state(self) -> str:
        return f"{self.base}/gateway/state"

    def command(self, device: str, entity: str) -> str:
        """Where Home Assistant publishes a press (or ON/OFF) of one command entity."""
        return f"{self.base}/{object_id(device)}/cmd/{object_id(entity)}"

    @property
    def commands(self) -> str:
        """The filter of every command topic."""
        return f"{self.base}/+/cmd/+"

    def config(self, component: str, device: str, entity: str) -> str:
        return (
            f"{self.discovery_prefix}/{component}/{self.node_id}/{join_ids(device, entity)}/config"
        )

    @property
    def gateway_config(self) -> str:
        return f"{self.discovery_prefix}/sensor/{self.node_id}/gateway__devices/config"

    def unique_id(self, device: str, entity: str) -> str:
        return f"{self.node_id}__{join_ids(device, entity)}"

    def device_identifier(self, device: str) -> str:
        return f"{self.node_id}__{object_id(device)}"

    @property
    def gateway_identifier(self) -> str:
        return f"{self.node_id}__gateway"


def _origin(version: str) -> dict[str, str]:
    return {"name": ORIGIN_NAME, "sw_version": version, "support_url": SUPPORT_URL}


def _availability(t: Topics) -> list[dict[str, str]]:
    return [
        {
            "topic": t.availability,
            "payload_available": AVAILABLE,
            "payload_not_available": NOT_AVAILABLE,
        }
    ]


def device_block(t: Topics, device: str, name: str) -> dict[str, object]:
    return {
        "identifiers": [t.device_identifier(device)],
        "name": name or device,
        "manufacturer": MANUFACTURER,
        "model": "edgence device",
        "serial_number": device,
        "via_device": t.gateway_identifier,
    }


def sensor_config(
    t: Topics, device: str, name: str, sensor: str, unit: str, version: str
) -> dict[str, object]:
    """The discovery config of one sensor of one device (`<prefix>/sensor/...config`)."""
    ha, device_class, state_class = ha_unit(unit, sensor)
    # Bracket access: a sensor name may hold "." ":" "-", which value_json.NAME would misread.
    # NAME_RE excludes quotes, so the name cannot break out of the string.
    cfg: dict[str, object] = {
        "name": sensor,
        "unique_id": t.unique_id(device, sensor),
        "state_topic": t.state(device),
        "value_template": f"{{{{ value_json['{sensor}'] }}}}",
        "availability": _availability(t),
        "availability_mode": "latest",
        "device": device_block(t, device, name),
        "origin": _origin(version),
        "state_class": state_class,
        "qos": 1,
    }
    if ha is not None:
        cfg["unit_of_measurement"] = ha
    if device_class is not None:
        cfg["device_class"] = device_class
    return cfg


def button_config(
    t: Topics, device: str, name: str, action: DeviceAction, version: str
) -> dict[str, object]:
    """The discovery config of one command of one device, as a button."""
    cfg: dict[str, object] = {
        "name": action.name,
        "unique_id": t.unique_id(device, f"action.{action.name}"),
        "command_topic": action.command_topic,
        "payload_press": action.payload,
        "availability": _availability(t),
        "availability_mode": "latest",
        "device": device_block(t, device, name),
        "origin": _origin(version),
        "qos": 1,
        "retain": False,
    }
    if action.attributes_topic is not None:
        cfg["json_attributes_topic"] = action.attributes_topic
    return cfg


def switch_config(
    t: Topics, device: str, name: str, action: DeviceAction, version: str
) -> dict[str, object]:
    """The discovery config of one command of one device, as a switch: not optimistic, its
    state is what the device's authenticated answer said."""
    cfg = button_config(t, device, name, action, version)
    del cfg["payload_press"]
    cfg |= {"payload_on": "ON", "payload_off": "OFF", "optimistic": False}
    if action.state_topic is not None:
        cfg |= {"state_topic": action.state_topic, "state_on": "ON", "state_off": "OFF"}
    return cfg


def action_config(
    t: Topics, device: str, name: str, action: DeviceAction, version: str
) -> tuple[str, dict[str, object]]:
    """(discovery topic, config) of a command entity, button or switch."""
    build = switch_config if action.kind == "switch" else button_config
    return t.config(action.kind, device, f"action.{action.name}"), build(
        t, device, name, action, version
    )


def gateway_config(t: Topics, version: str) -> dict[str, object]:
    """The gateway itself, the `via_device` of every device: one sensor, the number of devices
    it announces."""
    return {
        "name": "devices",
        "unique_id": f"{t.node_id}__gateway__devices",
        "state_topic": t.gateway_state,
        "value_template": "{{ value_json['devices'] }}",
        "availability": _availability(t),
        "availability_mode": "latest",
        "device": {
            "identifiers": [t.gateway_identifier],
            "name": f"edgence gateway {t.gateway[:10]}",
            "manufacturer": MANUFACTURER,
            "model": "edgence-agent gateway",
            "serial_number": t.gateway,
            "sw_version": version,
        },
        "origin": _origin(version),
        "state_class": "measurement",
        "entity_category": "diagnostic",
        "qos": 1,
    }


def encode(doc: Mapping[str, object]) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


def state_document(values: Mapping[str, str]) -> bytes:
    """`{"sensor": value, ...}` with each value's exact decimal text as a JSON number (no
    float on the way: 21.50 stays 21.50)."""
    parts = (f"{json.dumps(k)}:{v}" for k, v in sorted(values.items()))
    return ("{" + ",".join(parts) + "}").encode()


@dataclass
class StateCoalescer:
    """The latest value of every sensor per device, sent at most once per `interval` per
    device: a flood of frames becomes one state message per device per interval carrying the
    newest values. Time is given by the caller (monotonic seconds)."""

    interval: float
    latest: dict[str, dict[str, str]] = field(default_factory=dict)
    _dirty: set[str] = field(default_factory=set)
    _last_sent: dict[str, float] = field(default_factory=dict)

    def offer(self, device: str, values: Iterable[tuple[str, str]]) -> None:
        self.latest.setdefault(device, {}).update(values)
        self._dirty.add(device)

    def due_at(self, device: str) -> float:
        """When `device` may be sent next (-inf: now)."""
        last = self._last_sent.get(device)
        return float("-inf") if last is None else last + self.interval

    def take(self, now: float) -> list[tuple[str, bytes]]:
        """The state documents of the changed devices that may be sent at `now`, marked sent."""
        out: list[tuple[str, bytes]] = []
        for device in sorted(self._dirty):
            if self.due_at(device) <= now:
                out.append((device, state_document(self.latest[device])))
                self._last_sent[device] = now
        for device, _ in out:
            self._dirty.discard(device)
        return out

    def next_due(self) -> float | None:
        """The earliest time a changed device may be sent, None when nothing waits."""
        return min((self.due_at(d) for d in self._dirty), default=None)

    def forget(self, device: str) -> None:
        self.latest.pop(device, None)
        self._dirty.discard(device)
        self._last_sent.pop(device, None)


__all__ = [
    "AVAILABLE",
    "NOT_AVAILABLE",
    "DeviceAction",
    "StateCoalescer",
    "Topics",
    "action_config",
    "button_config",
    "device_block",
    "encode",
    "gateway_config",
    "ha_unit",
    "join_ids",
    "object_id",
    "sensor_config",
    "state_document",
    "switch_config",
]
