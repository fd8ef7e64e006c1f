"""Home Assistant buttons and switches wired to the downlink ([[homeassistant.commands]]): a
press that Home Assistant publishes on an entity's command topic becomes a downlink command
from the requester "homeassistant", which [[downlink.policy]] must allow; the outcome, with the
gateway's signed receipt, is published back as the entity's attributes, and a switch's state
is what the device's authenticated answer confirmed (never optimistic)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from agent.config.homeassistant import HA_REQUESTER, HaCommand
from agent.downlink.requests import CommandRefused
from agent.hapayload import DeviceAction, Topics
from agent.logs import RateLimitedLog, event

# Presses waiting for their outcome at once; more are dropped (and logged) until one ends.
MAX_PENDING_PRESSES = 32
PRESS, ON, OFF = "PRESS", "ON", "OFF"


class CommandSink(Protocol):
    """What a press needs of the downlink (agent/downlink/service.py)."""

    async def submit(
        self, requester: str, device: str, action: str, args: Mapping[str, Any]
    ) -> Any: ...

    async def outcome(self, command_id: str) -> dict[str, Any]: ...


class HaCommands:
    """The command entities of `commands`, their topics, and what a press does."""

    def __init__(
        self,
        commands: Sequence[HaCommand],
        topics: Topics,
        downlink: CommandSink,
        *,
        logger: logging.Logger | None = None,
    ) -> None:
        self.topics = topics
        self.downlink = downlink
        self.log = logger or logging.getLogger("agent.hacommands")
        self.rlog = RateLimitedLog(self.log)
        self._by_topic = {topics.command(c.device, c.entity): c for c in commands}
        self._commands = tuple(commands)
        self._pending: set[asyncio.Task[None]] = set()
        self.presses = 0

    def attributes_topic(self, c: HaCommand) -> str:
        return self.topics.command(c.device, c.entity) + "/receipt"

    def state_topic(self, c: HaCommand) -> str:
        return self.topics.command(c.device, c.entity) + "/state"

    def actions(self) -> dict[str, Sequence[DeviceAction]]:
        """Per device, its command entities as discovery announces them."""
        out: dict[str, list[DeviceAction]] = {}
        for c in self._commands:
            switch = c.kind == "switch"
            out.setdefault(c.device, []).append(
                DeviceAction(
                    name=c.entity,
                    command_topic=self.topics.command(c.device, c.entity),
                    payload=PRESS,
                    kind=c.kind,
                    state_topic=self.state_topic(c) if switch else None,
                    attributes_topic=self.attributes_topic(c),
                )
            )
        return dict(out)

    def on_message(self, topic: str, payload: bytes, publish: Callable[[str, bytes], bool]) -> None:
        """A message on a command topic (called on the loop): start the press it asks for."""
        c = self._by_topic.get(topic)
        if c is None:
            return
        text = payload.decode("ascii", "replace").strip()
        allowed = (ON, OFF) if c.kind == "switch" else (PRESS,)
        if text not in allowed:
            self.rlog.event(
                (c.device, c.entity, "payload"),
                "ha_command_ignored",
                logging.WARNING,
                device=c.device,
                entity=c.entity,
                reason="bad_payload",
                allowed="/".join(allowed),
            )
            return
        if len(self._pending) >= MAX_PENDING_PRESSES:
            self.rlog.event(
                ("ha", "busy"),
                "ha_command_ignored",
                logging.WARNING,
                device=c.device,
                entity=c.entity,
                reason="busy",
                pending=len(self._pending),
            )
            return
        self.presses += 1
        task = asyncio.get_running_loop().create_task(self.press(c, text, publish))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def press(self, c: HaCommand, text: str, publish: Callable[[str, bytes], bool]) -> None:
        args: dict[str, Any] = dict(c.args)
        if c.kind == "switch":
            args[c.state_arg] = 1 if text == ON else 0
        try:
            stored = await self.downlink.submit(HA_REQUESTER, c.device, c.action, args)
            outcome = await self.downlink.outcome(stored.command_id)
        except CommandRefused as exc:  # counted and logged by the downlink
            outcome = {"ok": False, "error": exc.reason, "detail": exc.detail}
        status = outcome.get("status") or outcome.get("error")
        event(
            self.log,
            "ha_command",
            device=c.device,
            entity=c.entity,
            action=c.action,
            ok=bool(outcome.get("ok")),
            status=status,
        )
        publish(self.attributes_topic(c), json.dumps(outcome, separators=(",", ":")).encode())
        if c.kind == "switch" and outcome.get("ok") and "receipt" in outcome:
            publish(self.state_topic(c), text.encode())

    async def close(self) -> None:
        tasks = list(self._pending)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


__all__ = ["HaCommands"]
