"""The runtime's shutdown order with the real components of a running agent (real Mosquitto
on both sides): every source pauses its intake first, then the components stop in reverse
start order, so the pipeline drains into the journal before the sources disconnect."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from agent.component import Source
from agent.localbroker import LocalMosquitto

from .conftest import agent_config_dict


async def test_shutdown_pauses_every_source_then_stops_in_reverse_order(
    local_broker: LocalMosquitto, upstream_broker: LocalMosquitto, start_agent: Any
) -> None:
    running = await start_agent(agent_config_dict(local_broker, upstream_broker))
    components = running.agent.components
    calls: list[tuple[str, str]] = []

    def record_stop(name: str, orig: Callable[[float], Awaitable[None]]) -> Any:
        async def stop(grace: float) -> None:
            calls.append(("stop", name))
            await orig(grace)

        return stop

    def record_pause(name: str, orig: Callable[[], None]) -> Any:
        def pause() -> None:
            calls.append(("pause", name))
            orig()

        return pause

    for c in components:
        setattr(c, "stop", record_stop(c.name, c.stop))  # noqa: B010 (shadows the method)
        if isinstance(c, Source):
            setattr(c, "pause_intake", record_pause(c.name, c.pause_intake))  # noqa: B010
    sources = [c.name for c in components if isinstance(c, Source)]
    assert sources == ["mqtt"]
    await running.stop()
    assert calls[: len(sources)] == [("pause", n) for n in sources]
    assert calls[len(sources) :] == [("stop", c.name) for c in reversed(components)]
    stopped = [name for _, name in calls[len(sources) :]]
    # The no-loss order: drain, then acknowledge and disconnect, then wait for PUBACKs.
    assert stopped.index("pipeline") < stopped.index("mqtt") < stopped.index("bridge")
    assert running.agent.pipeline.drained is True
