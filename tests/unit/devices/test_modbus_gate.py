"""A Modbus device id is accepted from the Modbus source only, and Modbus arrivals only for
the configured Modbus devices: the agent's own gate, as the runtime wires it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.attest.keys import GatewayKey
from agent.component import Source
from agent.config import config_from_dict
from agent.errors import RejectedReading
from agent.frame import DeviceFrame, SensorValue
from agent.model import AuthMethod, Transport
from agent.pipeline import Arrival
from agent.runtime import Agent


def arrival(device: str, transport: Transport) -> Arrival:
    frame = DeviceFrame(None, 1, None, (SensorValue("v", 1, 0, "V"),), None, b"")
    return Arrival(frame, device, transport, str(transport))


@pytest.fixture
def agent(tmp_path: Path) -> Agent:
    raw = {
        "gateway": {"key_file": "gateway.key"},
        "sources": {
            "mqtt": {"allowed_devices": ["mqtt-1"]},
            "modbus": {
                "devices": [
                    {
                        "id": "meter-1",
                        "host": "127.0.0.1",
                        "registers": [{"sensor": "v", "address": 0, "type": "uint16", "unit": "V"}],
                    }
                ]
            },
        },
        "metrics": {"enabled": False},
    }
    cfg = config_from_dict(raw, str(tmp_path / "agent.toml"), tmp_path)
    return Agent(cfg, GatewayKey.generate())


def test_a_modbus_device_is_accepted_over_modbus_with_the_lowest_assurance(agent: Agent) -> None:
    assert agent.pipeline.gate.check(arrival("meter-1", Transport.MODBUS)) is AuthMethod.ALLOWLIST


def test_a_modbus_device_id_claimed_over_mqtt_is_refused(agent: Agent) -> None:
    with pytest.raises(RejectedReading) as exc:
        agent.pipeline.gate.check(arrival("meter-1", Transport.MQTT))
    assert exc.value.reason == "unknown_device"


def test_an_mqtt_allowlisted_id_is_refused_over_modbus(agent: Agent) -> None:
    assert agent.pipeline.gate.check(arrival("mqtt-1", Transport.MQTT)) is AuthMethod.ALLOWLIST
    with pytest.raises(RejectedReading):
        agent.pipeline.gate.check(arrival("mqtt-1", Transport.MODBUS))


def test_the_modbus_source_is_a_source_with_a_health_part_per_device(agent: Agent) -> None:
    assert agent.modbus is not None and isinstance(agent.modbus, Source)
    health = agent.modbus.health()
    assert health.state == "starting"
    assert set(health.parts) == {"meter-1"}
    assert health.parts["meter-1"].detail["line"] == "tcp:127.0.0.1:502"
    assert "meter-1" not in agent.gate.allowlist  # not in the shared (MQTT/CoAP/serial) list


def test_without_modbus_devices_neither_the_source_nor_pymodbus_is_imported(
    tmp_path: Path,
) -> None:
    """In a fresh interpreter (this one may have imported them for other tests). The config
    reader and the pure codec it checks register maps with are always imported."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from agent.attest.keys import GatewayKey\n"
        "from agent.config import config_from_dict\n"
        "from agent.runtime import Agent\n"
        "d = Path(sys.argv[1])\n"
        "raw = {'gateway': {'key_file': 'k'}, 'metrics': {'enabled': False}}\n"
        "agent = Agent(config_from_dict(raw, str(d / 'agent.toml'), d), GatewayKey.generate())\n"
        "assert agent.modbus is None\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pymodbus'\n"
        "             or m == 'agent.devices.modbus'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout
