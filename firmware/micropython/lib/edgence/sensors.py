"""Sensor drivers. Each `read()` returns [(sensor, value, exponent, unit)] with exact integers:
no float ever reaches a frame.

BME280 uses the datasheet's integer compensation (Bosch BST-BME280-DS002, section 4.2.3: the
32-bit temperature/humidity and 64-bit pressure formulas), so results are exact and identical
on every port. DHT22 and ADC use MicroPython's `dht` and `machine.ADC`.
"""

import struct


class SensorError(OSError):
    """The sensor did not answer or answered nonsense: the reading is skipped, not faked."""


def _cdiv(a, b):
    """C's integer division (truncates toward zero), which the datasheet formulas assume."""
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


def _s16(lo, hi):
    v = lo | (hi << 8)
    return v - 65536 if v & 0x8000 else v


class BME280:
    ADDRESSES = (0x76, 0x77)
    CHIP_ID = 0x60

    def __init__(self, i2c, address=0x76, names=("temperature", "humidity", "pressure")):
        self.i2c, self.address, self.names = i2c, address, names
        try:
            chip = i2c.readfrom_mem(address, 0xD0, 1)[0]
        except OSError:
            raise SensorError("no BME280 answers at I2C address 0x%02x" % address) from None
        if chip != self.CHIP_ID:
            raise SensorError("chip at 0x%02x has id 0x%02x, not a BME280" % (address, chip))
        c = i2c.readfrom_mem(address, 0x88, 26)
        self.T1 = c[0] | c[1] << 8
        self.T2, self.T3 = _s16(c[2], c[3]), _s16(c[4], c[5])
        self.P1 = c[6] | c[7] << 8
        self.P = [_s16(c[i], c[i + 1]) for i in range(8, 24, 2)]  # P2..P9
        self.H1 = c[25]
        h = i2c.readfrom_mem(address, 0xE1, 7)
        self.H2 = _s16(h[0], h[1])
        self.H3 = h[2]
        e4, e5, e6 = h[3], h[4], h[5]
        self.H4 = (e4 << 4 | (e5 & 0x0F)) - (4096 if e4 & 0x80 else 0)
        self.H5 = (e6 << 4 | e5 >> 4) - (4096 if e6 & 0x80 else 0)
        self.H6 = struct.unpack("b", h[6:7])[0]

    def raw(self):
        """Force one measurement (oversampling x1) and read the raw ADC values."""
        i2c, a = self.i2c, self.address
        i2c.writeto_mem(a, 0xF2, b"\x01")  # humidity x1 (takes effect with the next 0xF4 write)
        i2c.writeto_mem(a, 0xF4, b"\x25")  # temp x1, pressure x1, forced mode
        for _ in range(50):
            if not i2c.readfrom_mem(a, 0xF3, 1)[0] & 0x08:
                break
        d = i2c.readfrom_mem(a, 0xF7, 8)
        adc_p = d[0] << 12 | d[1] << 4 | d[2] >> 4
        adc_t = d[3] << 12 | d[4] << 4 | d[5] >> 4
        adc_h = d[6] << 8 | d[7]
        return adc_t, adc_p, adc_h

    def compensate(self, adc_t, adc_p, adc_h):
        """(temperature in 0.01 Cel, pressure in 1/256 Pa, humidity in 1/1024 %)."""
        v1 = (((adc_t >> 3) - (self.T1 << 1)) * self.T2) >> 11
        v2 = (((((adc_t >> 4) - self.T1) * ((adc_t >> 4) - self.T1)) >> 12) * self.T3) >> 14
        t_fine = v1 + v2
        temp = (t_fine * 5 + 128) >> 8
        P2, P3, P4, P5, P6, P7, P8, P9 = self.P
        p1 = t_fine - 128000
        p2 = p1 * p1 * P6
        p2 = p2 + ((p1 * P5) << 17)
        p2 = p2 + (P4 << 35)
        p1 = ((p1 * p1 * P3) >> 8) + ((p1 * P2) << 12)
        p1 = (((1 << 47) + p1) * self.P1) >> 33
        if p1 == 0:
            pres = 0
        else:
            p = 1048576 - adc_p
            p = _cdiv(((p << 31) - p2) * 3125, p1)
            q1 = (P9 * (p >> 13) * (p >> 13)) >> 25
            q2 = (P8 * p) >> 19
            pres = ((p + q1 + q2) >> 8) + (P7 << 4)
        h = t_fine - 76800
        h = ((((adc_h << 14) - (self.H4 << 20) - (self.H5 * h)) + 16384) >> 15) * (
            (
                (((((h * self.H6) >> 10) * (((h * self.H3) >> 11) + 32768)) >> 10) + 2097152)
                * self.H2
                + 8192
            )
            >> 14
        )
        h = h - (((((h >> 15) * (h >> 15)) >> 7) * self.H1) >> 4)
        h = 0 if h < 0 else h
        h = 419430400 if h > 419430400 else h
        return temp, pres, h >> 12

    def read(self):
        t, p, h = self.compensate(*self.raw())
        nt, nh, np_ = self.names
        # p is Pa*256 -> hPa with exponent: p/256 Pa = p*100/256/100 hPa; keep 0.01 Pa steps.
        return [
            (nt, t, -2, "Cel"),
            (nh, h * 1000 // 1024, -3, "%"),
            (np_, p * 100 // 256, -4, "hPa"),
        ]


class DHT22:
    def __init__(self, pin, names=("temperature", "humidity"), dht_module=None):
        if dht_module is None:
            import dht as dht_module
        self.sensor = dht_module.DHT22(pin)
        self.names = names

    @staticmethod
    def decode(data):
        """The DHT22's 5 bytes -> (temperature in 0.1 Cel, humidity in 0.1 %)."""
        if len(data) != 5 or (sum(data[:4]) & 0xFF) != data[4]:
            raise SensorError("DHT22 checksum mismatch")
        hum = data[0] << 8 | data[1]
        temp = (data[2] & 0x7F) << 8 | data[3]
        return (-temp if data[2] & 0x80 else temp), hum

    def read(self):
        try:
            self.sensor.measure()
            buf = getattr(self.sensor, "buf", None)
        except OSError:
            raise SensorError("DHT22 did not answer") from None
        if buf is not None:
            t, h = self.decode(bytes(buf))
        else:  # ports whose driver hides its buffer: its floats have one decimal
            t = int(round(self.sensor.temperature() * 10))
            h = int(round(self.sensor.humidity() * 10))
        return [(self.names[0], t, -1, "Cel"), (self.names[1], h, -1, "%")]


class ADCSensor:
    """An analog input as millivolts: raw 16-bit reading * full-scale mV / 65535."""

    def __init__(self, adc, name="voltage", full_scale_mv=3300):
        self.adc, self.name, self.full_scale_mv = adc, name, full_scale_mv

    def read(self):
        raw = self.adc.read_u16()
        return [(self.name, raw * self.full_scale_mv // 65535, -3, "V")]


class SimulatedSensor:
    """A deterministic sensor for tests and demos: a temperature that walks in 0.01 Cel steps,
    derived from a seed and the reading number (no randomness, so runs are repeatable)."""

    def __init__(self, name="temperature", base=2000, seed=1):
        self.name, self.base, self.state, self.count = name, base, seed, 0

    def read(self):
        self.state = (self.state * 1103515245 + 12345) & 0x7FFFFFFF
        self.count += 1
        return [(self.name, self.base + (self.state % 201) - 100, -2, "Cel")]


class Retrying:
    """A sensor whose driver is created on first use and again after a failed creation, so a
    sensor that is missing or slow to power up at boot is picked up later instead of the
    board failing to start. Read failures surface as SensorError/OSError, counted by the loop."""

    def __init__(self, kind, make):
        self.kind, self.make, self.sensor = kind, make, None

    def read(self):
        if self.sensor is None:
            self.sensor = self.make()
        return self.sensor.read()


KINDS = ("simulated", "bme280", "dht22", "adc")


def build(spec, machine=None):
    """Sensors from the config's firmware.sensors: [["bme280", {"sda": 21, "scl": 22}], ...]."""
    out = []
    for kind, opts in spec:
        if kind not in KINDS:
            raise ValueError("firmware.sensors: unknown sensor kind %r" % kind)
        if kind == "simulated":
            out.append(
                SimulatedSensor(
                    opts.get("name", "temperature"), opts.get("base", 2000), opts.get("seed", 1)
                )
            )
            continue
        if machine is None:
            import machine
        out.append(Retrying(kind, _maker(kind, opts, machine)))
    return out


def _maker(kind, opts, machine):
    if kind == "bme280":

        def make():
            i2c = machine.I2C(
                opts.get("bus", 0),
                sda=machine.Pin(opts.get("sda", 21)),
                scl=machine.Pin(opts.get("scl", 22)),
            )
            return BME280(i2c, opts.get("address", 0x76))

    elif kind == "dht22":

        def make():
            return DHT22(machine.Pin(opts.get("pin", 4)))

    else:

        def make():
            return ADCSensor(
                machine.ADC(machine.Pin(opts.get("pin", 34))),
                opts.get("name", "voltage"),
                opts.get("full_scale_mv", 3300),
            )

    return make
