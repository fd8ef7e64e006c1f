"""The firmware's config.json: the provisioning bundle written by `edgence-agent pair`
(docs/device-frame.md, "Provisioning bundle"), plus optional firmware settings.

Every error names the key that is wrong and what is allowed, so a bad bundle is found on the
serial console rather than by silence.
"""

import json

try:
    from binascii import unhexlify
except ImportError:  # pragma: no cover
    unhexlify = None

from edgence.frame import check_name, check_unit

TRANSPORTS = ("mqtt", "coap", "serial", "ble")

# Firmware settings a bundle may carry in "firmware" (the agent ignores them); the defaults
# suit a mains-powered board reading once a minute.
DEFAULTS = {
    "interval_s": 60,
    "deep_sleep": False,
    "counter_block": 64,
    "outbox": 256,
    "watchdog_s": 300,
    "sensors": [["simulated", {}]],
    "wifi": None,
    "safe_pin": None,
    "outputs": [],  # pins a set_output command may drive (edgence.downlink)
    "uart": {"id": 1, "baud": 115200},  # serial transport; "tx"/"rx" pins where the port needs
}


class ConfigError(Exception):
    pass


def _need(obj, key, where, kind):
    if key not in obj:
        raise ConfigError("config.json: %s%s missing" % (where, key))
    v = obj[key]
    if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
        raise ConfigError("config.json: %s%s has the wrong type: %r" % (where, key, v))
    return v


class Config:
    def __init__(self, bundle):
        if not isinstance(bundle, dict):
            raise ConfigError("config.json: not a JSON object")
        if bundle.get("edgence") != 1:
            raise ConfigError("config.json: edgence must be 1 (a bundle from edgence-agent pair)")
        self.device_id = check_name(_need(bundle, "device_id", "", str), "device_id")
        self.transport = _need(bundle, "transport", "", str)
        if self.transport not in TRANSPORTS:
            raise ConfigError(
                "config.json: transport %r is not one of %s"
                % (self.transport, ", ".join(TRANSPORTS))
            )
        self.key_kind = bundle.get("key_kind", "hmac")
        key_hex = _need(bundle, "key", "", str)
        want = 64 if self.key_kind == "hmac" else 32
        try:
            self.key = unhexlify(key_hex)
        except ValueError:
            self.key = b""
        if len(key_hex) != want or len(self.key) * 2 != want:
            raise ConfigError("config.json: key must be %d hex digits" % want)
        self.counter_start = _need(bundle, "counter_start", "", int)
        if self.counter_start < 0:
            raise ConfigError("config.json: counter_start must not be negative")
        self.sensors_declared = []
        for pair in bundle.get("sensors", []):
            self.sensors_declared.append((check_name(pair[0], "sensors"), check_unit(pair[1])))
        self.gateway = bundle.get("gateway")
        self.mqtt = self.coap = self.serial = self.ble = None
        section = bundle.get(self.transport)
        if not isinstance(section, dict):
            raise ConfigError(
                "config.json: transport is %s but section %s is missing"
                % (self.transport, self.transport)
            )
        if self.transport == "mqtt":
            _need(section, "host", "mqtt.", str)
            _need(section, "port", "mqtt.", int)
            _need(section, "topic", "mqtt.", str)
            self.mqtt = section
        elif self.transport == "coap":
            _need(section, "host", "coap.", str)
            self.coap = section
        elif self.transport == "serial":
            self.serial = section
        else:
            self.ble = section
        fw = bundle.get("firmware", {})
        if not isinstance(fw, dict):
            raise ConfigError("config.json: firmware must be an object")
        for k in fw:
            if k not in DEFAULTS:
                raise ConfigError(
                    "config.json: firmware.%s is not a setting (allowed: %s)"
                    % (k, ", ".join(sorted(DEFAULTS)))
                )
        self.firmware = dict(DEFAULTS)
        self.firmware.update(fw)
        for k in ("interval_s", "counter_block", "outbox", "watchdog_s"):
            v = self.firmware[k]
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
                raise ConfigError("config.json: firmware.%s must be a positive number" % k)


def parse(text):
    try:
        data = json.loads(text)
    except ValueError:
        raise ConfigError("config.json: not valid JSON") from None
    return Config(data)


def load(path="config.json"):
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        raise ConfigError(
            "%s not found: provision the board (edgence-agent pair --serial)" % path
        ) from None
    return parse(text)
