"""The data flow's direction, read from the source (ARCHITECTURE.md): nothing below the sources
imports `agent.devices`, and the codecs (and the value types they build) do no I/O. Every import
counts, at module level or inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

AGENT = Path(__file__).resolve().parents[2] / "agent"

# The floor the sources stand on, and what consumes their readings: none of it knows a source.
BELOW_SOURCES = [
    "model.py",
    "frame.py",
    "replaywindow.py",
    "modbusmap.py",
    "errors.py",
    "metrics.py",
    "logs.py",
    "backoff.py",
    "ratelimit.py",
    "component.py",
    "pipeline.py",
    "journal",
    "sqlitestore.py",
    "threadowner.py",
    "bridge.py",
    "oracle",
    "attest",
    "config",
]
# Pure code: bytes and values in, values out.
PURE = [
    "model.py",
    "frame.py",
    "replaywindow.py",
    "modbusmap.py",
    "devices/codecs",
    "downlink/codec.py",
]
IO_MODULES = {
    "aiocoap",
    "aiohttp",
    "asyncio",
    "bleak",
    "concurrent",
    "paho",
    "selectors",
    "serial",
    "socket",
    "sqlite3",
    "ssl",
    "subprocess",
    "threading",
    "tinydb",
}
# What pure code may import from the agent: other pure code and the exception tree.
PURE_AGENT_MODULES = (
    "agent.errors",
    "agent.model",
    "agent.frame",
    "agent.replaywindow",
    "agent.modbusmap",
    "agent.devices.codecs",
)


def imported_modules(source: str) -> set[str]:
    """Every module an `import` or `from ... import` statement names (absolute form)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            assert node.level == 0, "the agent uses absolute imports only"
            found.add(node.module)
            # `from agent import devices` imports the package agent.devices.
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def files(entries: list[str]) -> list[Path]:
    out: list[Path] = []
    for entry in entries:
        path = AGENT / entry
        assert path.exists(), f"{path} is named in this test but does not exist"
        out.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    return out


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_import_reader_sees_every_form_of_import() -> None:
    source = (
        "import socket\n"
        "from agent import devices\n"
        "def f():\n"
        "    from agent.devices.codecs.frame import parse_frame\n"
        "    import paho.mqtt.client as paho\n"
    )
    found = imported_modules(source)
    assert {"socket", "agent.devices", "agent.devices.codecs.frame", "paho.mqtt.client"} <= found


@pytest.mark.parametrize("path", files(BELOW_SOURCES), ids=lambda p: str(p.relative_to(AGENT)))
def test_nothing_below_the_sources_imports_them(path: Path) -> None:
    wrong = sorted(m for m in imported_modules(path.read_text()) if within(m, "agent.devices"))
    assert not wrong, f"{path.relative_to(AGENT)} imports {wrong}: sources sit above it"


@pytest.mark.parametrize("path", files(PURE), ids=lambda p: str(p.relative_to(AGENT)))
def test_codecs_and_value_types_do_no_io(path: Path) -> None:
    modules = imported_modules(path.read_text())
    io = sorted(m for m in modules if m.split(".")[0] in IO_MODULES)
    assert not io, f"{path.relative_to(AGENT)} imports I/O modules {io}: codecs are pure"
    impure = sorted(
        m
        for m in modules
        if within(m, "agent") and m != "agent" and not any(within(m, p) for p in PURE_AGENT_MODULES)
    )
    assert not impure, f"{path.relative_to(AGENT)} imports {impure}, which is not pure code"
