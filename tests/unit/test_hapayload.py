"""Home Assistant discovery payloads (agent/hapayload.py) against Home Assistant's documented
schema: every key of every payload is a documented one, required keys are there, units fit the
device class; object ids are topic-safe and one to one; the state coalescer's rate bound."""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import pytest

from agent.hapayload import (
    UNITS,
    DeviceAction,
    StateCoalescer,
    Topics,
    action_config,
    button_config,
    gateway_config,
    ha_unit,
    join_ids,
    object_id,
    sensor_config,
    state_document,
    switch_config,
)
from agent.model import NAME_RE

# Transcribed from home-assistant.io source/_integrations/sensor.mqtt.markdown (commit 9e4a69ab,
# "Configuration variables"), button.mqtt.markdown, switch.mqtt.markdown, and mqtt.markdown
# ("Discovery payload":
# `origin`; "Discovery topic": the id character class). Required keys are marked.
SENSOR_KEYS = {
    "availability", "availability_mode", "availability_template", "availability_topic",
    "device", "device_class", "enabled_by_default", "encoding", "entity_category",
    "entity_picture", "expire_after", "force_update", "icon", "json_attributes_template",
    "json_attributes_topic", "last_reset_value_template", "name", "object_id", "options",
    "payload_available", "payload_not_available", "suggested_display_precision", "qos",
    "state_class", "state_topic", "unique_id", "unit_of_measurement", "value_template",
}  # fmt: skip
SENSOR_REQUIRED = {"state_topic"}
BUTTON_KEYS = {
    "availability", "availability_mode", "availability_template", "availability_topic",
    "command_topic", "device", "device_class", "enabled_by_default", "entity_category", "icon",
    "json_attributes_template", "json_attributes_topic", "name", "object_id",
    "payload_available", "payload_not_available", "payload_press", "qos", "retain", "unique_id",
}  # fmt: skip
BUTTON_REQUIRED = {"command_topic"}
SWITCH_KEYS = {
    "availability", "availability_mode", "availability_template", "availability_topic",
    "command_template", "command_topic", "device", "device_class", "enabled_by_default",
    "encoding", "entity_category", "entity_picture", "icon", "json_attributes_template",
    "json_attributes_topic", "name", "object_id", "optimistic", "payload_available",
    "payload_not_available", "payload_off", "payload_on", "qos", "retain", "state_off",
    "state_on", "state_topic", "unique_id", "value_template",
}  # fmt: skip
SWITCH_REQUIRED = {"command_topic"}
DISCOVERY_KEYS = {"origin"}  # accepted in every discovery payload
AVAILABILITY_KEYS = {"payload_available", "payload_not_available", "topic", "value_template"}
DEVICE_KEYS = {
    "configuration_url", "connections", "hw_version", "identifiers", "manufacturer", "model",
    "model_id", "name", "serial_number", "suggested_area", "sw_version", "via_device",
}  # fmt: skip
ORIGIN_KEYS = {"name", "sw_version", "support_url"}
ID_CLASS = re.compile(r"^[a-zA-Z0-9_-]+\Z")
# Home Assistant core sensor/const.py: DEVICE_CLASS_UNITS and DEVICE_CLASS_STATE_CLASSES for
# the device classes this agent sets (units: the members we can produce, a subset of HA's).
CLASS_UNITS = {
    "temperature": {"°C", "°F", "K"},
    "humidity": {"%"},
    "battery": {"%"},
    "pressure": {"Pa", "hPa", "kPa", "bar", "mbar", "cbar", "mmHg", "inHg", "psi"},
    "voltage": {"V", "mV"},
    "current": {"A", "mA"},
    "power": {"W", "kW"},
    "energy": {"Wh", "kWh"},
    "illuminance": {"lx"},
    "carbon_dioxide": {"ppm"},
    "pm25": {"µg/m³"},
    "pm10": {"µg/m³"},
    "sound_pressure": {"dB", "dBA"},
    "signal_strength": {"dB", "dBm"},
    "frequency": {"Hz", "kHz", "MHz", "GHz"},
    "wind_speed": {"m/s", "km/h", "ft/s", "kn", "mph"},
    "distance": {"km", "m", "cm", "mm", "mi", "yd", "in", "ft"},
    "duration": {"d", "h", "min", "s", "ms"},
    "weight": {"kg", "g", "mg", "µg", "oz", "lb", "st"},
    "volume_storage": {"L", "mL", "gal", "m³", "ft³"},
}
MEASUREMENT_ONLY = set(CLASS_UNITS) - {"energy", "distance", "duration", "weight"}
STATE_CLASSES = {"measurement", "total", "total_increasing"}

GW = "0x" + "ab" * 20
T = Topics("homeassistant", "edgence", GW)
HOSTILE_IDS = ["dev-1", "a.b", "a_b", "a:b", "a_2eb", "_", "__", ".:", "x" * 32, "A-Z.0:9_"]


def check_keys(doc: dict[str, Any], allowed: set[str], required: set[str]) -> None:
    assert set(doc) <= allowed | DISCOVERY_KEYS, set(doc) - allowed - DISCOVERY_KEYS
    assert required <= set(doc)
    assert set(doc["device"]) <= DEVICE_KEYS, set(doc["device"]) - DEVICE_KEYS
    assert doc["device"]["identifiers"]  # HA needs identifiers or connections
    assert set(doc["origin"]) <= ORIGIN_KEYS and "name" in doc["origin"]
    for item in doc.get("availability", []):
        assert set(item) <= AVAILABILITY_KEYS and "topic" in item
    assert doc.get("availability_mode", "latest") in ("all", "any", "latest")
    assert doc.get("qos", 0) in (0, 1, 2)
    json.dumps(doc)  # serialisable as it is


@pytest.mark.parametrize("unit", [*sorted(UNITS), "furlong", "[iU]"])
@pytest.mark.parametrize("sensor", ["t", "hum", "battery", "co2", "pm25", "x.y:z-w_v"])
def test_every_sensor_config_uses_only_documented_keys_and_fitting_units(
    unit: str, sensor: str
) -> None:
    doc: dict[str, Any] = sensor_config(T, "dev-1", "Kitchen", sensor, unit, "0.1.0")
    check_keys(doc, SENSOR_KEYS, SENSOR_REQUIRED)
    assert doc["state_class"] in STATE_CLASSES
    cls = doc.get("device_class")
    if cls is not None:
        assert doc["unit_of_measurement"] in CLASS_UNITS[cls], (unit, cls)
        if cls in MEASUREMENT_ONLY:
            assert doc["state_class"] == "measurement"
        if cls == "energy":
            assert doc["state_class"] in ("total", "total_increasing")
    assert doc["device"]["via_device"] == T.gateway_identifier
    assert doc["device"]["manufacturer"] == "edgence"


def test_button_and_gateway_configs_use_only_documented_keys() -> None:
    action = DeviceAction("reboot", command_topic="edgence/gw/cmd/dev-1/reboot")
    check_keys(button_config(T, "dev-1", "Kitchen", action, "0.1.0"), BUTTON_KEYS, BUTTON_REQUIRED)
    gw: dict[str, Any] = gateway_config(T, "0.1.0")
    check_keys(gw, SENSOR_KEYS, SENSOR_REQUIRED)
    assert gw["entity_category"] == "diagnostic"  # the only category HA allows on sensors
    assert gw["device"]["identifiers"] == [T.gateway_identifier]


def test_command_buttons_and_switches_use_only_documented_keys_and_are_not_optimistic() -> None:
    base = "edgence/gw/ha/gate-1/cmd/"
    button = DeviceAction(
        "reboot", base + "reboot", attributes_topic=base + "reboot/receipt", kind="button"
    )
    topic, doc = action_config(T, "gate-1", "Gate", button, "0.1.0")
    check_keys(doc, BUTTON_KEYS, BUTTON_REQUIRED)
    assert topic == f"homeassistant/button/{T.node_id}/gate-1__action_2ereboot/config"
    assert doc["json_attributes_topic"] == base + "reboot/receipt"
    switch = DeviceAction(
        "gate",
        base + "gate",
        kind="switch",
        state_topic=base + "gate/state",
        attributes_topic=base + "gate/receipt",
    )
    topic, doc = action_config(T, "gate-1", "Gate", switch, "0.1.0")
    check_keys(doc, SWITCH_KEYS, SWITCH_REQUIRED)
    assert topic == f"homeassistant/switch/{T.node_id}/gate-1__action_2egate/config"
    assert (doc["payload_on"], doc["payload_off"]) == ("ON", "OFF")
    assert (doc["state_on"], doc["state_off"]) == ("ON", "OFF")
    assert doc["optimistic"] is False and doc["state_topic"] == base + "gate/state"
    assert doc["retain"] is False  # a press is never replayed by the broker
    assert switch_config(T, "gate-1", "Gate", switch, "0.1.0") == doc


def test_command_topics_are_one_per_entity_and_match_the_filter() -> None:
    topics = {T.command(d, e) for d in HOSTILE_IDS for e in ("open", "a.b", "a_2eb")}
    assert len(topics) == len(HOSTILE_IDS) * 3
    prefix, _, _ = T.commands.partition("+")
    assert all(t.startswith(prefix) and t.count("/") == T.commands.count("/") for t in topics)


def test_common_units_map_to_home_assistant_units_and_classes() -> None:
    assert ha_unit("Cel", "t") == ("°C", "temperature", "measurement")
    assert ha_unit("%", "humidity") == ("%", "humidity", "measurement")
    assert ha_unit("%", "battery") == ("%", "battery", "measurement")
    assert ha_unit("%", "duty") == ("%", None, "measurement")
    assert ha_unit("hPa", "p") == ("hPa", "pressure", "measurement")
    assert ha_unit("[ppm]", "co2") == ("ppm", "carbon_dioxide", "measurement")
    assert ha_unit("kWh", "e") == ("kWh", "energy", "total_increasing")
    assert ha_unit("1", "count") == (None, None, "measurement")
    assert ha_unit("furlong", "x") == ("furlong", None, "measurement")  # passed through


@pytest.mark.parametrize("label", HOSTILE_IDS)
def test_object_ids_are_in_home_assistants_character_class(label: str) -> None:
    assert NAME_RE.match(label)  # what the registry and the frame allow
    assert ID_CLASS.match(object_id(label))
    topic = T.config("sensor", label, label)
    prefix, component, node, obj, last = topic.split("/")
    assert (prefix, component, last) == ("homeassistant", "sensor", "config")
    assert ID_CLASS.match(node) and ID_CLASS.match(obj)
    assert ID_CLASS.match(T.unique_id(label, label))
    assert ID_CLASS.match(T.device_identifier(label))
    assert not set(T.state(label)) & set("+#")


def test_object_ids_are_one_to_one_across_devices_and_sensors() -> None:
    pairs = list(itertools.product(HOSTILE_IDS, repeat=2))
    assert len({join_ids(d, s) for d, s in pairs}) == len(pairs)
    assert len({object_id(x) for x in HOSTILE_IDS}) == len(HOSTILE_IDS)


def test_value_template_reads_a_sensor_name_with_dots_and_colons() -> None:
    doc: dict[str, Any] = sensor_config(T, "d", "d", "pm2.5:a-b", "ug/m3", "0.1.0")
    assert doc["value_template"] == "{{ value_json['pm2.5:a-b'] }}"
    assert json.loads(state_document({"pm2.5:a-b": "7"})) == {"pm2.5:a-b": 7}


def test_state_document_keeps_exact_decimals() -> None:
    raw = state_document({"t": "21.50", "p": "-0.001", "big": "1" + "0" * 40})
    assert raw == b'{"big":10000000000000000000000000000000000000000,"p":-0.001,"t":21.50}'
    assert json.loads(raw)["t"] == 21.5


def test_coalescer_sends_at_most_once_per_interval_per_device_with_the_newest_values() -> None:
    c = StateCoalescer(interval=1.0)
    sent: list[tuple[float, str, bytes]] = []
    now = 0.0
    for i in range(1000):  # 1000 frames for each of two devices within 2.5 s
        now = i * 0.0025
        c.offer("a", [("t", str(i))])
        c.offer("b", [("h", str(i))])
        sent += [(now, d, doc) for d, doc in c.take(now)]
    sent += [(3.0, d, doc) for d, doc in c.take(3.0)]  # what waited is sent later
    for device in ("a", "b"):
        times = [t for t, d, _ in sent if d == device]
        assert len(times) == 4  # t=0, 1, 2 and the rest at 3
        assert all(b - a >= 1.0 for a, b in itertools.pairwise(times))
    assert json.loads(sent[-2][2]) == {"t": 999} and json.loads(sent[-1][2]) == {"h": 999}
    assert c.next_due() is None and c.take(10.0) == []


def test_coalescer_merges_sensors_and_forgets_a_device() -> None:
    c = StateCoalescer(interval=5.0)
    c.offer("a", [("t", "1")])
    c.offer("a", [("h", "2")])
    assert c.take(0.0) == [("a", b'{"h":2,"t":1}')]
    c.offer("a", [("t", "3")])
    assert c.take(1.0) == [] and c.next_due() == 5.0
    c.forget("a")
    assert c.next_due() is None and "a" not in c.latest
