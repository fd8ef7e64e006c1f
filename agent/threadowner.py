"""One worker thread that alone runs a resource's blocking calls (the journal, the small sqlite
stores): opened and closed in it, every call queued to it, none on the event loop.

Subclasses say what opening and closing are (`_thread_open`, `_thread_close`, both run in the
thread) and which error a call before opening raises (`_not_open`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Self, TypeVar, TypeVarTuple

from agent.errors import AgentError

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")


class ThreadOwner:
    """``async with owner`` (or `await open()` / `await close()` for an owner whose lifetime is
    not one block) starts the thread and opens the resource in it; on exit closes it there and
    ends the thread. Calls run in that thread one at a time, in the order they were awaited."""

    def __init__(self, thread_name: str) -> None:
        self._thread_name = thread_name
        self._worker: ThreadPoolExecutor | None = None

    # What a subclass provides.
    def _thread_open(self) -> None:
        """Open the resource (runs in the thread)."""
        raise NotImplementedError

    def _thread_close(self) -> None:
        """Close the resource; safe to call when it is not open (runs in the thread)."""
        raise NotImplementedError

    def _not_open(self) -> AgentError:
        """The error of a call made before open() or after close()."""
        raise NotImplementedError

    @property
    def is_open(self) -> bool:
        return self._worker is not None

    async def open(self) -> None:
        """Start the thread and open the resource in it. Does nothing if open; callers that
        race here share one opening (their calls queue behind it in the thread)."""
        if self._worker is not None:
            return
        worker = ThreadPoolExecutor(1, thread_name_prefix=self._thread_name)
        self._worker = worker
        try:
            await asyncio.get_running_loop().run_in_executor(worker, self._thread_open)
        except BaseException:
            if self._worker is worker:
                self._worker = None
            # Also when cancelled while opening: close whatever the thread still opens.
            worker.submit(self._thread_close)
            worker.shutdown(wait=False)
            raise

    async def close(self) -> None:
        """Close the resource, then end the thread. Safe to call twice, or never opened."""
        worker, self._worker = self._worker, None
        if worker is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(worker, self._thread_close)
        except BaseException:
            worker.shutdown(wait=False)  # the thread finishes the close by itself
            raise
        worker.shutdown(wait=True)  # idle by now: calls run in order and the close was last

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _call(self, fn: Callable[[*_Ts], _T], *args: *_Ts) -> _T:
        """Run `fn(*args)` in the thread (the only way anything reaches the resource)."""
        worker = self._worker
        if worker is None:
            raise self._not_open()
        return await asyncio.get_running_loop().run_in_executor(worker, fn, *args)
