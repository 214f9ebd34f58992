"""What the gateway's own pool backends (CPU models, ONNX Runtime) share:
finding the model's runner, and running a call on a bounded set of workers
within the caller's deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import TypeVar

from scheduler.clock import Clock
from scheduler.errors import BackendError, DeadlineExceeded, Unavailable
from scheduler.spec import ModelSpec

R = TypeVar("R")
T = TypeVar("T")


def runner_for(
    runners: Mapping[str, R], model: ModelSpec, *, kind: str, backend_id: str, closed: bool
) -> R:
    """The runner of ``model``; UNAVAILABLE once the backend is shut down,
    and a retryable NOT_FOUND for a model it does not serve (another may)."""
    if closed:
        raise Unavailable(f"{kind} backend '{backend_id}' is shut down")
    runner = runners.get(model.name)
    if runner is None:
        raise BackendError(
            f"{kind} backend '{backend_id}' does not serve model '{model.name}'",
            backend_id=backend_id,
            code="NOT_FOUND",
            retryable=True,
        )
    return runner


def time_left(model: ModelSpec, deadline: float | None, clock: Clock) -> float | None:
    """Seconds until ``deadline`` (None: no deadline); DEADLINE_EXCEEDED if it passed."""
    if deadline is None:
        return None
    left = deadline - clock.now()
    if left <= 0:
        raise DeadlineExceeded(f"deadline passed before model '{model.name}' could run")
    return left


class WorkerSlots:
    """A bounded number of calls running on a pool's workers at once.

    ``submit`` waits for a free slot (no longer than the deadline allows),
    starts the call and frees the slot when the worker is really done, not
    when the caller stops waiting: ``finish`` waits on a shielded future, so
    a caller's timeout never releases a slot whose thread is still running.
    """

    def __init__(self, workers: int, clock: Clock, kind: str) -> None:
        self._slots = asyncio.Semaphore(workers)
        self._clock = clock
        self._kind = kind

    async def submit(
        self, model: ModelSpec, timeout_s: float | None, start: Callable[[], asyncio.Future[T]]
    ) -> asyncio.Future[T]:
        try:
            async with asyncio.timeout(timeout_s):
                await self._slots.acquire()
        except TimeoutError:
            raise DeadlineExceeded(
                f"no {self._kind} worker became free for model '{model.name}' before the deadline"
            ) from None
        try:
            future = start()
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        return future

    async def finish(
        self, model: ModelSpec, future: asyncio.Future[T], deadline: float | None
    ) -> T:
        timeout_s = None if deadline is None else deadline - self._clock.now()
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            raise DeadlineExceeded(
                f"model '{model.name}' did not finish before the deadline"
            ) from None
