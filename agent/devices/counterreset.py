"""`devices reset-counter`: an operator's request that the running agent forget a device's last
counter, handed over as a file in `<data_dir>/requests/` and answered with a `.done` file.

The agent's registry component (devices/gate.py) picks requests up within a poll (0.5 s), also
at start for requests made while it was stopped; the pipeline forgets the counter between two
batches and the journal in the same step, so the reset survives a restart. No locks: each
request and each answer is one file, written whole and renamed into place.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.atomicfile import atomic_write, owner_to_keep
from agent.model import NAME_RE, Transport

REQUESTS_DIR = "requests"
_PREFIX = "reset-counter-"


@dataclass(frozen=True)
class CounterReset:
    """Forget `device`'s last counter on `transport` (None: on every transport)."""

    device: str
    transport: Transport | None
    requested_at: float
    path: Path

    @property
    def done_path(self) -> Path:
        return self.path.with_suffix(".done")


def requests_dir(data_dir: Path) -> Path:
    return data_dir / REQUESTS_DIR


def request_reset(data_dir: Path, device: str, transport: Transport | None) -> CounterReset:
    """Write a request (the CLI's side); the agent answers in `done_path`."""
    d = requests_dir(data_dir)
    if not d.exists():
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        owner = owner_to_keep(data_dir)  # as root: the agent's user must remove requests
        if owner is not None:
            os.chown(d, *owner)
    now = time.time()
    path = d / f"{_PREFIX}{int(now * 1000)}-{secrets.token_hex(4)}.json"
    doc = {"device": device, "transport": None if transport is None else str(transport)}
    atomic_write(path, json.dumps(doc | {"requested_at": now}).encode())
    return CounterReset(device, transport, now, path)


def pending_resets(data_dir: Path) -> list[CounterReset]:
    """Requests not answered yet, oldest first (the agent's side; blocking: in a thread).
    A malformed request file is answered at once as refused, so it is never retried."""
    d = requests_dir(data_dir)
    try:
        names = sorted(n for n in os.listdir(d) if n.startswith(_PREFIX) and n.endswith(".json"))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        path = d / name
        try:
            doc = json.loads(path.read_bytes())
            device = str(doc["device"])
            t = doc.get("transport")
            transport = None if t is None else Transport(t)
            if not NAME_RE.match(device):
                raise ValueError(f"device id {device!r}")
            out.append(CounterReset(device, transport, float(doc["requested_at"]), path))
        except FileNotFoundError:
            continue
        except (ValueError, KeyError, TypeError) as exc:
            answer(CounterReset("?", None, 0.0, path), {"refused": f"malformed request: {exc}"})
    return out


def answer(req: CounterReset, result: dict[str, Any]) -> None:
    """The agent's answer: written whole, then the request is removed."""
    atomic_write(req.done_path, json.dumps(result, sort_keys=True).encode())
    req.path.unlink(missing_ok=True)


def read_answer(req: CounterReset) -> dict[str, Any] | None:
    """The agent's answer, if there is one (the CLI removes it after reading)."""
    try:
        doc = json.loads(req.done_path.read_bytes())
    except FileNotFoundError:
        return None
    req.done_path.unlink(missing_ok=True)
    return doc if isinstance(doc, dict) else {"refused": "unreadable answer"}
