"""Commands to BLE devices by GATT write (docs/downlink.md, "Over BLE"): the downlink's framed
command is written, newline-terminated and split to the ATT MTU, to the device's command
characteristic; the device answers by notification on its answer characteristic. A device that
offers no answer characteristic (a BTHome-only sensor) cannot answer: the write is all there
is, and the requester is told so, without a receipt.

A device out of range is tried again with backoff until the command is answered or its TTL
ends (the downlink then cancels the delivery and tells the requester); a device that missed
the answer's notification gets the same frame again and answers again from memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from typing import Any, Protocol

from agent.backoff import Backoff
from agent.devices.bledevices import BleDevice
from agent.devices.blegatt import GattLink
from agent.downlink.codec import MAX_ANSWER_BYTES
from agent.errors import AgentError
from agent.logs import RateLimitedLog, event


class AnswerSink(Protocol):
    """The downlink's side (agent/downlink/service.py)."""

    async def take_answer(self, device: str, payload: bytes) -> str | None: ...

    async def take_unanswered(self, device: str, command_id: str) -> None: ...


class NoCommandCharacteristic(AgentError):
    """The device offers no characteristic to write commands to."""


class GattCommands:
    """Push delivery of command frames over GATT, one task per device with a command in
    flight. `address_of(device)` is the device's MAC (None once it is no longer enrolled)."""

    def __init__(
        self,
        link: GattLink,
        *,
        command_characteristic: str,
        answer_characteristic: str,
        address_of: Callable[[str], str | None],
        resend_s: float,
        log: logging.Logger | None = None,
    ) -> None:
        self.link = link
        self.metrics = link.metrics
        self.command_characteristic = command_characteristic
        self.answer_characteristic = answer_characteristic
        self.address_of = address_of
        self.resend_s = resend_s
        self.log = log or logging.getLogger("agent.devices.blecommands")
        self.rl = RateLimitedLog(self.log)
        self.answers: AnswerSink | None = None  # set by the downlink that uses it
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def deliver(self, device: str, command_id: str, frame: bytes) -> None:
        """Start delivering `frame` (replacing any earlier delivery to `device`)."""
        self.cancel(device)
        task = asyncio.get_running_loop().create_task(self._deliver(device, command_id, frame))
        self._tasks[device] = task
        task.add_done_callback(
            lambda t: self._tasks.pop(device, None) if self._tasks.get(device) is t else None
        )

    def cancel(self, device: str) -> None:
        task = self._tasks.pop(device, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def delivering(self) -> int:
        return len(self._tasks)

    async def _deliver(self, device: str, command_id: str, frame: bytes) -> None:
        backoff = Backoff(1.0, self.link.cfg.reconnect_max_s, jitter=0.5, reset_after=math.inf)
        while True:
            mac = self.address_of(device)
            if mac is None:
                return  # no longer enrolled: the TTL ends the command
            try:
                async with self.link.slots:  # adapters have few connection slots
                    if await self._session(BleDevice(device, mac, "gatt"), command_id, frame):
                        return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # out of range, refused, no characteristic: try again
                self.metrics.inc("gatt_command_attempts_failed")
                self.rl.event(
                    (device, "gatt_command"),
                    "gatt_command_unreachable",
                    device=device,
                    mac=mac,
                    id=command_id,
                    error=f"{type(exc).__name__}: {exc}"[:200],
                )
            await backoff.wait()

    async def _session(self, dev: BleDevice, command_id: str, frame: bytes) -> bool:
        """One connection: write the frame, wait for the answer; True when the command is
        done (answered, or written to a device that cannot answer)."""
        assert self.answers is not None
        disconnected = asyncio.Event()
        client = await self.link.connect(dev, disconnected)
        try:
            services = client.services
            cmd_char = services.get_characteristic(self.command_characteristic)
            if cmd_char is None:
                raise NoCommandCharacteristic(
                    f"{dev.device_id} ({dev.mac}) offers no command characteristic "
                    f"{self.command_characteristic}"
                )
            ans_char = services.get_characteristic(self.answer_characteristic)
            lines: asyncio.Queue[bytes] = asyncio.Queue()
            if ans_char is not None:
                buffer = bytearray()

                def on_notify(_char: Any, data: bytearray) -> None:
                    buffer.extend(data)
                    while (end := buffer.find(b"\n")) >= 0:
                        line = bytes(buffer[:end])
                        del buffer[: end + 1]
                        if line.strip():
                            lines.put_nowait(line)
                    if len(buffer) > MAX_ANSWER_BYTES:
                        buffer.clear()
                        lines.put_nowait(b"\xff")  # refused as not JSON, counted there

                await client.start_notify(ans_char, on_notify)
            data = frame + b"\n"
            step = max(20, client.mtu_size - 3)
            for i in range(0, len(data), step):
                await client.write_gatt_char(cmd_char, data[i : i + step], response=True)
            self.metrics.inc("command_frames_sent")
            event(self.log, "gatt_command_written", device=dev.device_id, id=command_id)
            if ans_char is None:
                await self.answers.take_unanswered(dev.device_id, command_id)
                return True
            return await self._await_answer(dev.device_id, lines, disconnected)
        finally:
            await self.link.release(client)

    async def _await_answer(
        self, device: str, lines: asyncio.Queue[bytes], disconnected: asyncio.Event
    ) -> bool:
        assert self.answers is not None
        loop = asyncio.get_running_loop()
        until = loop.time() + self.resend_s
        gone = asyncio.ensure_future(disconnected.wait())
        try:
            while (left := until - loop.time()) > 0:
                get = asyncio.ensure_future(lines.get())
                done, _ = await asyncio.wait(
                    {get, gone}, timeout=left, return_when=asyncio.FIRST_COMPLETED
                )
                if get not in done:
                    get.cancel()
                    return False  # disconnected or silent: connect and write again
                if await self.answers.take_answer(device, get.result()) is None:
                    return True
            return False
        finally:
            gone.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await gone


__all__ = ["AnswerSink", "GattCommands", "NoCommandCharacteristic"]
