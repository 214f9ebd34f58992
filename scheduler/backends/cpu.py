"""The local CPU backend: runs numpy models on a thread pool, off the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from opentelemetry.trace import Tracer

from scheduler import tracing
from scheduler.backends.base import DecodedTensorsOnly, Device, DeviceKind
from scheduler.backends.cpu_models import CpuModel
from scheduler.clock import Clock, MonotonicClock
from scheduler.errors import BackendError, DeadlineExceeded, GatewayError, Unavailable
from scheduler.request import Parameters
from scheduler.spec import DataType, ModelSpec, Tensor


class CpuBackend(DecodedTensorsOnly):
    """Runs ``CpuModel``s on a fixed pool of worker threads.

    At most ``workers`` calls run at once; later calls wait for a slot, but
    never past their deadline. A thread cannot be interrupted, so a call that
    misses its deadline while running still finishes in the background; its
    slot is held until it does, which keeps the pool from being oversubscribed
    by abandoned work.
    """

    def __init__(
        self,
        models: Iterable[CpuModel],
        *,
        backend_id: str = "cpu",
        workers: int | None = None,
        clock: Clock | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self._id = backend_id
        self._tracer = tracer or tracing.default_tracer()
        self._workers = workers or max(1, min(4, os.cpu_count() or 1))
        self._models: dict[str, CpuModel] = {}
        for model in models:
            if model.spec.name in self._models:
                raise ValueError(f"two CPU models are named {model.spec.name!r}")
            self._models[model.spec.name] = model
        self._clock = clock or MonotonicClock()
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix=f"{backend_id}-worker")
        self._slots = asyncio.Semaphore(self._workers)
        self._closed = False

    @property
    def id(self) -> str:
        return self._id

    @property
    def workers(self) -> int:
        """Calls that run at once (the scheduler's concurrency for queue estimates)."""
        return self._workers

    @property
    def device(self) -> Device:
        return Device(DeviceKind.CPU, name=f"{self._workers} worker threads")

    def models(self) -> Mapping[str, ModelSpec]:
        return {name: m.spec for name, m in self._models.items()}

    async def start(self) -> None:
        return None

    async def health(self) -> bool:
        return not self._closed

    async def infer(
        self,
        model: ModelSpec,
        inputs: Mapping[str, Tensor],
        *,
        version: str = "",
        outputs: tuple[str, ...] = (),
        parameters: Parameters | None = None,
        deadline: float | None = None,
        trace_context: Mapping[str, str] | None = None,
    ) -> dict[str, Tensor]:
        if self._closed:
            raise Unavailable(f"CPU backend '{self._id}' is shut down")
        runner = self._models.get(model.name)
        if runner is None:
            raise BackendError(
                f"CPU backend '{self._id}' does not serve model '{model.name}'",
                backend_id=self._id,
                code="NOT_FOUND",
                retryable=True,
            )
        timeout_s = None if deadline is None else deadline - self._clock.now()
        if timeout_s is not None and timeout_s <= 0:
            raise DeadlineExceeded(f"deadline passed before model '{model.name}' could run")
        try:
            async with asyncio.timeout(timeout_s):
                await self._slots.acquire()
        except TimeoutError:
            raise DeadlineExceeded(
                f"no CPU worker became free for model '{model.name}' before the deadline"
            ) from None
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, runner, inputs, parameters or {})
        future.add_done_callback(lambda _: self._slots.release())
        rows = int(next(iter(inputs.values())).shape[0]) if inputs and model.max_batch_size else 1
        try:
            timeout_s = None if deadline is None else deadline - self._clock.now()
            # shield: a timeout must not cancel the executor future, whose
            # callback frees the slot only when the thread is really done.
            with tracing.cpu_execution(
                self._tracer, model=model.name, backend_id=self._id, rows=rows
            ):
                produced = await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            raise DeadlineExceeded(
                f"model '{model.name}' did not finish before the deadline"
            ) from None
        except GatewayError:
            raise
        except Exception as exc:
            raise BackendError(
                f"CPU model '{model.name}' failed: {type(exc).__name__}: {exc}",
                backend_id=self._id,
            ) from exc
        return _check_outputs(model, produced, outputs, self._id)

    async def aclose(self) -> None:
        self._closed = True
        with contextlib.suppress(RuntimeError):
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: self._pool.shutdown(wait=True, cancel_futures=True)
            )


def _check_outputs(
    model: ModelSpec, produced: Mapping[str, Tensor], wanted: tuple[str, ...], backend_id: str
) -> dict[str, Tensor]:
    """Keep the requested outputs, checking the model kept its promises."""
    result: dict[str, Tensor] = {}
    for spec in model.outputs:
        if wanted and spec.name not in wanted:
            continue
        array = produced.get(spec.name)
        if array is None:
            raise BackendError(
                f"CPU model '{model.name}' did not produce output '{spec.name}'",
                backend_id=backend_id,
            )
        array = np.asarray(array)
        if spec.datatype is not DataType.BYTES and array.dtype != spec.datatype.numpy_dtype:
            array = array.astype(spec.datatype.numpy_dtype)
        result[spec.name] = array
    return result
