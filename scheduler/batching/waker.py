"""Waking the batcher's loop: on an event, or at a time, without a task per wait."""

from __future__ import annotations

import asyncio


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Waker:
    """An ``asyncio.Event`` for one waiter that can also time out.

    ``asyncio.wait_for(event.wait(), delay)`` wraps the wait in a new task on
    every call, and the batcher's loop waits once per step: here a wait is one
    future and, when it has a time limit, one timer handle. ``set`` before the
    waiter waits is remembered (as with an event) until ``clear``.
    """

    __slots__ = ("_future", "_set")

    def __init__(self) -> None:
        self._set = False
        self._future: asyncio.Future[None] | None = None

    def set(self) -> None:
        self._set = True
        future = self._future
        if future is not None and not future.done():
            future.set_result(None)

    def clear(self) -> None:
        self._set = False

    def is_set(self) -> bool:
        return self._set

    async def wait(self, delay_s: float | None = None) -> None:
        """Until ``set`` (or already set), or ``delay_s`` seconds have passed."""
        if self._set:
            return
        loop = asyncio.get_running_loop()
        future = self._future = loop.create_future()
        timer = None if delay_s is None else loop.call_later(delay_s, _wake, future)
        try:
            await future
        finally:
            self._future = None
            if timer is not None:
                timer.cancel()
