"""Wiring the firmware to a board: Wi-Fi, the transport named in config.json, the sensors,
the counter in flash. The only module that imports `machine`, `network` and `bluetooth`.
"""

try:
    import utime as time
except ImportError:  # pragma: no cover
    import time

from edgence.app import Node, log
from edgence.counter import BlockCounter
from edgence.outbox import Outbox
from edgence.sensors import build as build_sensors

# Each transport's module is imported only when the bundle names it (make_link): a board
# keeps just one of them in its heap.


def wifi_up(wifi, timeout_s=20, idle=None):
    """Join the network named in firmware.wifi ({"ssid": ..., "password": ...}), if any.
    Association is polled every 100 ms, calling `idle` (the watchdog) each time."""
    if not wifi:
        return
    import network

    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    if wlan.isconnected():
        return
    wlan.connect(wifi["ssid"], wifi.get("password", ""))
    for _ in range(timeout_s * 10):
        if wlan.isconnected():
            log("wifi_up", rssi=_rssi(wlan))
            return
        time.sleep_ms(100)
        if idle is not None:
            idle()
    log("wifi_down", ssid=wifi["ssid"])  # readings go to the outbox until it comes back


def _rssi(wlan):
    try:
        return wlan.status("rssi")
    except (ValueError, OSError, TypeError):
        return "?"


class BleLink:
    """BTHome v2 advertisements (ESP32: `bluetooth`). With a bindkey (key_kind "bthome") the
    objects are AES-CCM encrypted; plain otherwise. Readings that do not fit one 31-byte
    advert are split over several (each with its own counter), and the device name is left
    out of a plain advert it does not fit. Advertising has no acknowledgement, so a frame
    counts as sent once the controller took it; adverts of one reading are each held for
    `HOLD_MS` so that scanners see all of them."""

    HOLD_MS = 1000

    def __init__(self, cfg, ble=None, aes_ecb=None):
        if ble is None:
            import bluetooth

            ble = bluetooth.BLE()
        from edgence import bthome

        self.bthome = bthome
        self.ble = ble
        self.ble.active(True)
        self.name = cfg.device_id
        self.bindkey = cfg.key if cfg.key_kind == "bthome" else None
        self.aes_ecb = aes_ecb
        if self.bindkey is not None and aes_ecb is None:
            self.aes_ecb = bthome.aes_ecb(self.bindkey)  # one cipher object for the key
        self.mac = bytes(self.ble.config("mac")[1])
        self.idle = None
        self._since = None  # when the previous advert of this reading went up

    def encode(self, counter, readings):
        """The adverts for one reading; `counter` gives each its number (counter.next())."""
        self._since = None
        if self.bindkey is None:
            return self.bthome.plain_adverts(readings, counter.next, name=self.name)
        return self.bthome.encrypted_adverts(self.aes_ecb, self.mac, readings, counter.next)

    def send(self, adv):
        if self._since is not None:
            left = self.HOLD_MS - time.ticks_diff(time.ticks_ms(), self._since)
            while left > 0:
                step = 500 if left > 500 else left
                time.sleep_ms(step)
                left -= step
                if self.idle is not None:
                    self.idle()
        self.ble.gap_advertise(100000, adv_data=adv)
        self._since = time.ticks_ms()
        return True


def make_link(cfg, machine, idle=None):
    fw = cfg.firmware
    if cfg.transport == "mqtt":
        from edgence.mqtt import MqttLink

        wifi_up(fw.get("wifi"), idle=idle)
        return MqttLink(cfg)
    if cfg.transport == "coap":
        from edgence.coap import CoapLink

        wifi_up(fw.get("wifi"), idle=idle)
        c = cfg.coap
        return CoapLink(c["host"], c.get("port", 5683), c.get("path", "/up/" + cfg.device_id))
    if cfg.transport == "serial":
        from edgence.serialline import UartLink

        u = fw["uart"]
        kw = {"baudrate": u.get("baud", 115200)}
        if "tx" in u:
            kw["tx"] = machine.Pin(u["tx"])
            kw["rx"] = machine.Pin(u["rx"])
        return UartLink(machine.UART(u.get("id", 1), **kw))
    return BleLink(cfg)


def rtc_memory(machine):
    """ESP32's RTC memory survives deep sleep (not power loss); other ports have none."""
    try:
        rtc = machine.RTC()
        rtc.memory()
        return rtc
    except (AttributeError, TypeError, OSError):
        return None


def build_node(cfg, machine, watchdog=None, flash="."):
    fw = cfg.firmware
    counter = BlockCounter(flash, cfg.counter_start, fw["counter_block"], rtc=rtc_memory(machine))
    idle = None if watchdog is None else watchdog.feed
    node = Node(
        cfg,
        make_link(cfg, machine, idle),
        build_sensors(fw["sensors"], machine),
        counter,
        Outbox(flash, fw["outbox"]),
        watchdog,
    )
    if hasattr(node.link, "downlink"):  # MQTT: commands on devices/<id>/down
        from edgence import VERSION
        from edgence.app import unix_time
        from edgence.downlink import Downlink, standard_handlers

        node.downlink = Downlink(cfg, {}, flash, clock=unix_time)
        node.downlink.handlers = standard_handlers(node, machine, VERSION)
        node.link.downlink = node.downlink
    import otaboot

    if otaboot.in_trial():  # an update's first delivered reading confirms it (docs/ota.md)
        node.confirm = otaboot.confirm
    if hasattr(node.link, "idle"):
        node.link.idle = node.idle  # the one idle hook, for every wait of every transport
    return node


def run(cfg, machine, watchdog=None, flash="."):
    node = build_node(cfg, machine, watchdog, flash)
    log(
        "start",
        device=cfg.device_id,
        transport=cfg.transport,
        next=node.counter.peek(),
        buffered=len(node.outbox),
    )
    deep = machine.deepsleep if cfg.firmware["deep_sleep"] else None
    node.run(deep_sleep=deep)
