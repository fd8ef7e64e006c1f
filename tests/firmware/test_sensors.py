"""Sensor drivers: BME280's integer compensation against the datasheet's worked example and
its floating-point formulas, DHT22 decoding, ADC scaling, the simulated sensor."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from edgence import sensors

# BMP280/BME280 datasheet worked example (Bosch BST-BMP280-DS001, 3.12): calibration words
T = (27504, 26435, -1000)
P = (36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000)
H = (75, 362, 0, 313, 50, 30)  # a BME280's humidity calibration (H1..H6)
ADC_T, ADC_P, ADC_H = 519888, 415148, 30000


class RegisterI2C:
    """Stands in for a BME280 on an I2C bus (no chip attached here): a register file that
    readfrom_mem/writeto_mem read and write, as machine.I2C does on a board."""

    def __init__(self, chip_id: int = 0x60) -> None:
        self.regs = bytearray(256)
        self.regs[0xD0] = chip_id
        self.regs[0x88:0xA0] = struct.pack("<Hhh", *T) + struct.pack("<Hhhhhhhhh", *P)
        self.regs[0xA1] = H[0]
        h4, h5 = H[3], H[4]
        self.regs[0xE1:0xE8] = struct.pack("<hB", H[1], H[2]) + bytes(
            (h4 >> 4, (h4 & 0x0F) | ((h5 & 0x0F) << 4), h5 >> 4, H[5] & 0xFF)
        )
        p, t = ADC_P << 4, ADC_T << 4
        self.regs[0xF7:0xFF] = bytes(
            (p >> 16, (p >> 8) & 0xFF, p & 0xFF, t >> 16, (t >> 8) & 0xFF, t & 0xFF)
        ) + struct.pack(">H", ADC_H)
        self.writes: list[tuple[int, bytes]] = []

    def readfrom_mem(self, addr: int, reg: int, n: int) -> bytes:
        if addr != 0x76:
            raise OSError(19, "ENODEV")
        return bytes(self.regs[reg : reg + n])

    def writeto_mem(self, addr: int, reg: int, data: bytes) -> None:
        self.writes.append((reg, bytes(data)))


def float_humidity(t_fine: float, adc_h: int) -> float:
    """The datasheet's double-precision humidity formula (BST-BME280-DS002, 8.1)."""
    h1, h2, h3, h4, h5, h6 = H
    v = t_fine - 76800.0
    v = (adc_h - (h4 * 64.0 + h5 / 16384.0 * v)) * (
        h2 / 65536.0 * (1.0 + h6 / 67108864.0 * v * (1.0 + h3 / 67108864.0 * v))
    )
    v = v * (1.0 - h1 * v / 524288.0)
    return min(max(v, 0.0), 100.0)


def test_bme280_integer_compensation_reproduces_the_datasheet_example() -> None:
    bme = sensors.BME280(RegisterI2C())
    temp, pres, hum = bme.compensate(ADC_T, ADC_P, ADC_H)
    assert temp == 2508  # 25.08 C
    # Q24.8 Pa: 100653.25 Pa, what the datasheet's 64-bit C routine gives for this example
    # (checked by compiling it with gcc); its float routine says 100653.27 Pa.
    assert pres == 25767233
    t_fine = 128422  # the example's t_fine
    assert abs(hum / 1024 - float_humidity(t_fine, ADC_H)) < 0.01


def test_bme280_reading_is_exact_integers_in_cel_percent_hpa() -> None:
    i2c = RegisterI2C()
    got = sensors.BME280(i2c).read()
    assert got[0] == ("temperature", 2508, -2, "Cel")
    assert got[2] == ("pressure", 25767233 * 100 // 256, -4, "hPa")  # 1006.5325 hPa
    assert got[1][2:] == (-3, "%") and 0 < got[1][1] < 100000
    assert (0xF4, b"\x25") in i2c.writes  # forced mode, oversampling x1


def test_bme280_absent_or_another_chip_is_a_clear_sensor_error() -> None:
    with pytest.raises(sensors.SensorError, match="no BME280 answers at I2C address 0x77"):
        sensors.BME280(RegisterI2C(), address=0x77)
    with pytest.raises(sensors.SensorError, match="id 0x58, not a BME280"):
        sensors.BME280(RegisterI2C(chip_id=0x58))  # a BMP280


def test_dht22_decoding_with_negative_temperature_and_checksum() -> None:
    data = bytes((0x02, 0x8C, 0x80, 0x65))  # 65.2 %, -10.1 C (datasheet sign bit)
    assert sensors.DHT22.decode(data + bytes((sum(data) & 0xFF,))) == (-101, 652)
    with pytest.raises(sensors.SensorError, match="checksum"):
        sensors.DHT22.decode(data + b"\x00")


def test_adc_reading_in_millivolts() -> None:
    class Adc:
        """Stands in for machine.ADC: a fixed raw 16-bit sample."""

        def read_u16(self) -> int:
            return 32768

    assert sensors.ADCSensor(Adc()).read() == [("voltage", 1650, -3, "V")]


def test_the_simulated_sensor_is_repeatable_and_stays_near_its_base() -> None:
    a, b = sensors.SimulatedSensor(seed=5), sensors.SimulatedSensor(seed=5)
    ra = [a.read()[0] for _ in range(20)]
    assert ra == [b.read()[0] for _ in range(20)]
    assert all(1900 <= v <= 2100 and e == -2 for _, v, e, _ in ra)
    assert len({v for _, v, _, _ in ra}) > 1


def test_unknown_sensor_kind_in_config_is_refused() -> None:
    machine: Any = None
    with pytest.raises(ValueError, match="unknown sensor kind 'sht31'"):
        sensors.build([["sht31", {}]], machine=machine)


def test_a_sensor_missing_at_boot_is_picked_up_once_it_answers() -> None:
    bus = RegisterI2C()
    plugged = {"in": False}

    class Machine:
        """Stands in for `machine`: an I2C bus where the BME280 is plugged in later."""

        @staticmethod
        def Pin(n: int) -> int:
            return n

        @staticmethod
        def I2C(bus_id: int, sda: int, scl: int) -> RegisterI2C:
            if not plugged["in"]:
                raise OSError(19, "ENODEV")
            return bus

    (s,) = sensors.build([["bme280", {"sda": 21, "scl": 22}]], machine=Machine)
    with pytest.raises(OSError):
        s.read()
    plugged["in"] = True
    assert s.read()[0] == ("temperature", 2508, -2, "Cel")
    assert s.kind == "bme280"
