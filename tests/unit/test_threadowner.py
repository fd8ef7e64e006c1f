"""The one thread owner the journal and the small sqlite stores share (agent/threadowner.py):
opening and closing run in its thread, calls queue there in order, a failed opening leaves no
thread behind. Real threads; the resource is a list."""

from __future__ import annotations

import asyncio
import threading

import pytest

from agent.errors import AgentError
from agent.threadowner import ThreadOwner


class Resource(ThreadOwner):
    def __init__(self, fail_open: bool = False) -> None:
        super().__init__("resource")
        self.fail_open = fail_open
        self.events: list[tuple[str, str]] = []

    def _thread_open(self) -> None:
        self.events.append(("open", threading.current_thread().name))
        if self.fail_open:
            raise OSError("cannot open")

    def _thread_close(self) -> None:
        self.events.append(("close", threading.current_thread().name))

    def _not_open(self) -> AgentError:
        return AgentError("resource is not open")

    def record(self, what: str) -> str:
        self.events.append((what, threading.current_thread().name))
        return what


async def test_open_calls_and_close_run_in_the_owners_one_thread_in_order() -> None:
    owner = Resource()
    async with owner:
        assert owner.is_open
        assert [await owner._call(owner.record, str(i)) for i in range(3)] == ["0", "1", "2"]
    assert not owner.is_open
    assert [e for e, _ in owner.events] == ["open", "0", "1", "2", "close"]
    threads = {t for _, t in owner.events}
    assert len(threads) == 1 and threads.pop().startswith("resource")
    await owner.close()  # twice: nothing happens
    assert [e for e, _ in owner.events].count("close") == 1


async def test_a_call_before_opening_raises_the_owners_error() -> None:
    with pytest.raises(AgentError, match="resource is not open"):
        await Resource()._call(print)


async def test_a_failed_opening_closes_in_the_thread_and_leaves_it_closed() -> None:
    owner = Resource(fail_open=True)
    with pytest.raises(OSError, match="cannot open"):
        await owner.open()
    assert not owner.is_open
    await owner.close()
    for _ in range(100):  # the close was submitted to the ending thread
        if "close" in [e for e, _ in owner.events]:
            break
        await asyncio.sleep(0.01)
    assert [e for e, _ in owner.events] == ["open", "close"]
