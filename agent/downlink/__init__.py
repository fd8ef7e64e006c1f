"""Downlink: authenticated commands from operators and dApps to devices, and the gateway's
signed receipt of each device's answer (docs/downlink.md)."""
