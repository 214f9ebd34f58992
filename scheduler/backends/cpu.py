"""The local CPU backend: runs numpy models inline, on threads or in processes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
from opentelemetry.trace import Tracer

from scheduler import tracing
from scheduler.backends.base import DecodedTensorsOnly, Device, DeviceKind
from scheduler.backends.cpu_models import CpuModel, Execution, load_cpu_model
from scheduler.backends.worker_pool import WorkerSlots, runner_for, time_left
from scheduler.clock import Clock, MonotonicClock
from scheduler.errors import BackendError, GatewayError
from scheduler.placement import Tier
from scheduler.request import Parameters
from scheduler.spec import DataType, ModelSpec, Tensor

log = logging.getLogger(__name__)

#: An inline model whose calls take longer than this, on average, stalls every
#: other request on the event loop; it is logged at most once per
#: ``INLINE_WARN_EVERY_S``. (An average of wall times: one call that was
#: preempted is not the model's fault, and a CPU-time clock costs a system call.)
INLINE_WARN_S = 0.002
INLINE_WARN_EVERY_S = 60.0
_INLINE_SMOOTHING = 0.1

#: Models loaded in a process worker, by name (set by ``_load_in_child``).
_CHILD_MODELS: dict[str, CpuModel] = {}


def _load_in_child(refs: Mapping[str, str]) -> None:
    for name, ref in refs.items():
        _CHILD_MODELS[name] = load_cpu_model(ref)


def _run_in_child(
    name: str, inputs: Mapping[str, Tensor], parameters: Parameters
) -> dict[str, Tensor]:
    return _CHILD_MODELS[name](inputs, parameters)


class CpuBackend(DecodedTensorsOnly):
    """Runs ``CpuModel``s inline, on a pool of worker threads, or in a pool of
    worker processes, per model (``execution``; see ``cpu_models.Execution``).

    An inline call runs to its end on the event loop: nothing else can run
    meanwhile, so it needs no slot. Thread and process calls share ``workers``
    slots: at most that many run at once; later calls wait for a slot, but
    never past their deadline. A thread cannot be interrupted, so a call that
    misses its deadline while running still finishes in the background; its
    slot is held until it does, which keeps the pool from being oversubscribed
    by abandoned work. Process workers load their models themselves from
    ``refs`` (the ``module:factory`` they were loaded from here).
    """

    def __init__(
        self,
        models: Iterable[CpuModel],
        *,
        backend_id: str = "cpu",
        workers: int | None = None,
        clock: Clock | None = None,
        tracer: Tracer | None = None,
        execution: Mapping[str, Execution] | None = None,
        refs: Mapping[str, str] | None = None,
    ) -> None:
        self._id = backend_id
        self._tracer = tracer or tracing.default_tracer()
        self._workers = workers or max(1, min(4, os.cpu_count() or 1))
        self._models: dict[str, CpuModel] = {}
        for model in models:
            if model.spec.name in self._models:
                raise ValueError(f"two CPU models are named {model.spec.name!r}")
            self._models[model.spec.name] = model
        self._specs = {name: m.spec for name, m in self._models.items()}
        if unknown := sorted(set(execution or {}) - set(self._models)):
            raise ValueError(f"execution is set for models this backend lacks: {unknown}")
        self._execution = {name: Execution.THREAD for name in self._models}
        self._execution.update(execution or {})
        in_processes = {
            n: (refs or {}).get(n, "") for n, e in self._execution.items() if e is Execution.PROCESS
        }
        if missing := sorted(n for n, ref in in_processes.items() if not ref):
            raise ValueError(
                f"CPU models {', '.join(missing)} run in processes, which load them by "
                "reference: give their module:factory"
            )
        self._clock = clock or MonotonicClock()
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix=f"{backend_id}-worker")
        self._processes: Executor | None = None
        if in_processes:
            self._processes = ProcessPoolExecutor(
                self._workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_load_in_child,
                initargs=(in_processes,),
            )
        self._slots = WorkerSlots(self._workers, self._clock, "CPU")
        self._warned_at: dict[str, float] = {}
        self._inline_s: dict[str, float] = {}  # mean wall time per inline call
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

    @property
    def tier(self) -> Tier:
        return Tier.CPU

    @property
    def endpoint(self) -> str:
        return ""

    def service_time_hints(self) -> Sequence[tuple[str, int, float]]:
        return ()

    def models(self) -> Mapping[str, ModelSpec]:
        return self._specs

    def execution(self, model: str) -> Execution:
        return self._execution[model]

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
        runner = runner_for(
            self._models, model, kind="CPU", backend_id=self._id, closed=self._closed
        )
        timeout_s = time_left(model, deadline, self._clock)
        mode = self._execution[model.name]
        if mode is Execution.INLINE:
            return self._run_inline(runner, model, inputs, outputs, parameters)
        loop = asyncio.get_running_loop()
        if mode is Execution.PROCESS and self._processes is not None:
            processes = self._processes
            future = await self._slots.submit(
                model,
                timeout_s,
                lambda: loop.run_in_executor(
                    processes, _run_in_child, model.name, dict(inputs), dict(parameters or {})
                ),
            )
        else:
            future = await self._slots.submit(
                model,
                timeout_s,
                lambda: loop.run_in_executor(self._pool, runner, inputs, parameters or {}),
            )
        rows = int(next(iter(inputs.values())).shape[0]) if inputs and model.max_batch_size else 1
        try:
            if tracing.recording(self._tracer):
                with tracing.cpu_execution(
                    self._tracer, model=model.name, backend_id=self._id, rows=rows
                ):
                    produced = await self._slots.finish(model, future, deadline)
            else:
                produced = await self._slots.finish(model, future, deadline)
        except GatewayError:
            raise
        except Exception as exc:
            raise self._failed(model, exc) from exc
        return _check_outputs(model, produced, outputs, self._id)

    def _run_inline(
        self,
        runner: CpuModel,
        model: ModelSpec,
        inputs: Mapping[str, Tensor],
        outputs: tuple[str, ...],
        parameters: Parameters | None,
    ) -> dict[str, Tensor]:
        start = time.perf_counter()
        try:
            produced = runner(inputs, parameters or {})
        except GatewayError:
            raise
        except Exception as exc:
            raise self._failed(model, exc) from exc
        elapsed = time.perf_counter() - start
        mean = self._inline_s.get(model.name, elapsed)
        mean += _INLINE_SMOOTHING * (elapsed - mean)
        self._inline_s[model.name] = mean
        if mean > INLINE_WARN_S and self._may_warn(model.name):
            log.warning(
                "CPU model %s takes %.1f ms per call on the event loop, stalling every other "
                "request meanwhile; set cpu_execution.%s to 'thread' (or 'process' if it "
                "holds the GIL)",
                model.name,
                mean * 1e3,
                model.name,
            )
        return _check_outputs(model, produced, outputs, self._id)

    def _failed(self, model: ModelSpec, exc: Exception) -> BackendError:
        """A model's own exception, as the error the caller gets."""
        return BackendError(
            f"CPU model '{model.name}' failed: {type(exc).__name__}: {exc}", backend_id=self._id
        )

    def _may_warn(self, model: str) -> bool:
        now = self._clock.now()
        if now < self._warned_at.get(model, -INLINE_WARN_EVERY_S) + INLINE_WARN_EVERY_S:
            return False
        self._warned_at[model] = now
        return True

    async def aclose(self) -> None:
        self._closed = True
        pools: list[Executor] = [self._pool]
        if self._processes is not None:
            pools.append(self._processes)
        for pool in pools:
            with contextlib.suppress(RuntimeError):
                await asyncio.get_running_loop().run_in_executor(None, _shut_down, pool)


def _shut_down(pool: Executor) -> None:
    pool.shutdown(wait=True, cancel_futures=True)


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
