"""Simulated sensors for the demo and benchmarks: plausible random walks published as device
frames over MQTT. They stand in for real sensors only; everything they talk to is real."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

from agent.devices.auth import encode_signed_frame
from agent.devices.codecs.frame import encode_frame


@dataclass
class SimulatedDevice:
    """A device with a few sensors whose values wander; `next_frame()` gives the next frame."""

    device_id: str
    sensors: list[tuple[str, int, int, str]]  # (name, start value, exponent, unit)
    counter: int = 0
    rng: random.Random = field(default_factory=random.Random)
    key: bytes | None = None  # an enrolled device's key: frames carry their HMAC

    def next_frame(self) -> bytes:
        self.counter += 1
        values = []
        for i, (name, value, exp, unit) in enumerate(self.sensors):
            value += self.rng.randint(-5, 5)
            self.sensors[i] = (name, value, exp, unit)
            values.append((name, value, exp, unit))
        if self.key is not None:
            return encode_signed_frame(
                self.key, self.device_id, self.counter, values, timestamp=int(time.time())
            )
        return encode_frame(self.counter, values, timestamp=int(time.time()))


def demo_devices(seed: int = 7) -> list[SimulatedDevice]:
    rng = random.Random(seed)
    return [
        SimulatedDevice(
            "sim-1", [("temperature", 2137, -2, "Cel"), ("humidity", 455, -1, "%")], rng=rng
        ),
        SimulatedDevice("sim-2", [("pressure", 101325, -1, "hPa")], rng=rng),
    ]
