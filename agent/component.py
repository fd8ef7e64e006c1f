"""The one interface everything the agent runs implements: a Component, and a Source that can
also pause its intake.

A component has a name, runs until it is stopped, says when it is ready (subscribed, listening,
connected the first time), stops within a grace period, and reports its own health. The runtime
(agent/runtime.py) supervises a list of them and knows nothing else about any one of them; the
health document and /metrics are built from each component's `health()`, so a new component
appears in `status` without touching telemetry.

Contract:
- `run()` returns when `stop()` was called (or raises on a failure the supervisor should retry
  with backoff). It may be called again after it raised.
- `ready` is set once the component serves for the first time; it is never cleared.
- `stop(grace)` asks the component to finish within `grace` seconds: stop taking work, finish or
  hand back what is under way, release its sockets and files. It is called once, in reverse order
  of the component list, and never before `run()` was started.
- `health()` is cheap (called at every scrape) and never raises.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

# "starting": not yet ready; "up": serving; "degraded": serving in part (e.g. one of three serial
# ports closed); "down": not serving (peer unreachable, retrying); "stopped": stop() was called.
State = Literal["starting", "up", "degraded", "down", "stopped"]
Detail = str | int | float | bool | None


@dataclass(frozen=True, slots=True)
class Health:
    """A component's own report: its state and a few facts an operator reads in `status`.

    `detail` values are scalars (they become health-document fields and, when numeric,
    `edgence_component_detail{component=..,key=..}` gauges); `parts` describes sub-units a
    component owns (a serial port, a BLE device, an observed CoAP resource), each by name.
    """

    state: State
    detail: dict[str, Detail] = field(default_factory=dict)
    parts: dict[str, Health] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"state": self.state, **self.detail}
        if self.parts:
            out["parts"] = {k: v.as_dict() for k, v in self.parts.items()}
        return out


@runtime_checkable
class Component(Protocol):
    """Something the runtime supervises."""

    name: str
    ready: asyncio.Event

    async def run(self) -> None:
        """Serve until stop() is called; raise to be restarted with backoff."""
        ...

    async def stop(self, grace: float) -> None:
        """Finish within `grace` seconds and release what the component holds."""
        ...

    def health(self) -> Health:
        """The component's state and facts, cheaply, never raising."""
        ...


@runtime_checkable
class Source(Component, Protocol):
    """A component that turns a transport's bytes into readings for the pipeline.

    `pause_intake` stops taking new frames from devices (the broker, the device or the kernel
    keeps them); at shutdown it is called on every source before the pipeline drains, and
    `stop` after. `resume_intake` undoes it (the pipeline has room again).
    """

    def pause_intake(self) -> None: ...

    def resume_intake(self) -> None: ...


__all__ = ["Component", "Detail", "Health", "Source", "State"]
