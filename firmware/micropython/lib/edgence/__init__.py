"""Edgence sensor firmware library (MicroPython; the device-independent parts also run on
CPython and under the MicroPython WebAssembly port in the project's tests)."""

VERSION = "0.1.0"
