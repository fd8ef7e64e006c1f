"""Stands in for MicroPython's `network` on the host: the host's own network is the Wi-Fi,
always joined. Link loss is produced for real by stopping the broker, not here."""

from __future__ import annotations

from typing import Any

STA_IF, AP_IF = 0, 1


class WLAN:
    def __init__(self, interface: int = STA_IF) -> None:
        self._active = False

    def active(self, on: bool | None = None) -> bool:
        if on is not None:
            self._active = on
        return self._active

    def connect(self, ssid: str, password: str = "") -> None:
        pass

    def isconnected(self) -> bool:
        return True

    def status(self, param: str | None = None) -> Any:
        if param == "rssi":  # no radio: there is no signal strength to report
            raise ValueError("no rssi on the host")
        return None

    def ifconfig(self) -> tuple[str, str, str, str]:
        return ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1")
