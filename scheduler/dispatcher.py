"""The scheduler's front: admit a request, place it on a backend, run it, retry.

This is the seam the gateway talks to. Batching and the predicted-finish-time
policy slot in behind ``infer`` without the gateway noticing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict, deque
from collections.abc import Sequence

from scheduler.backends.base import Backend
from scheduler.clock import Clock, MonotonicClock
from scheduler.errors import DeadlineExceeded, GatewayError, ModelNotFound, Unavailable
from scheduler.placement import Candidate, Decision, choose
from scheduler.registry import ModelRegistry
from scheduler.request import InferRequest, InferResult
from scheduler.spec import ModelSpec
from scheduler.stats import ModelStats
from scheduler.validation import validate_inputs, validate_requested_outputs

log = logging.getLogger(__name__)


class Scheduler:
    """Routes requests to backends and keeps the fleet's health current.

    Per request: resolve the model, validate the tensors, then loop: build
    candidates (health, outstanding calls), ask the pure placement policy,
    call the backend. A retryable failure (backend down, model gone there)
    marks the backend and tries the next candidate while the deadline leaves
    time; anything else ends the request with its own status.

    Health is passive and active: a backend that fails with UNAVAILABLE is
    marked down at once (so callers are not sent to it again), and a
    background loop probes every backend, readmits the ones that answer and
    re-discovers their models.
    """

    def __init__(
        self,
        backends: Sequence[Backend],
        *,
        clock: Clock | None = None,
        health_interval_s: float = 2.0,
        decision_log_size: int = 256,
    ) -> None:
        ids = [b.id for b in backends]
        if len(set(ids)) != len(ids):
            raise ValueError(f"backend ids must be unique: {ids}")
        self._backends = list(backends)
        self._order = {b.id: i for i, b in enumerate(backends)}
        self._clock = clock or MonotonicClock()
        self._health_interval_s = health_interval_s
        self._healthy: dict[str, bool] = {b.id: False for b in backends}
        self._outstanding: dict[str, int] = defaultdict(int)
        self._registry = ModelRegistry()
        self._stats: dict[str, ModelStats] = defaultdict(ModelStats)
        self.decisions: deque[Decision] = deque(maxlen=decision_log_size)
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle ---------------------------------------------------------
    async def start(self) -> None:
        """Start every backend; one that is down is logged and probed later."""
        await asyncio.gather(*(self._start_backend(b) for b in self._backends))
        # Every backend's last-known models stay routable; health decides at
        # placement time, so a backend that goes down shows its models as
        # UNAVAILABLE rather than making them vanish (NOT_FOUND).
        self._registry.rebuild(self._backends)
        task = asyncio.create_task(self._health_loop(), name="scheduler-health")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.gather(*(b.aclose() for b in self._backends), return_exceptions=True)

    async def _start_backend(self, backend: Backend) -> None:
        try:
            await backend.start()
            self._healthy[backend.id] = True
        except GatewayError as exc:
            log.warning("backend %s is not available at start: %s", backend.id, exc.message)

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self._health_interval_s)
            await self.check_health()

    async def check_health(self) -> None:
        """Probe every backend; re-discover the ones that came back."""
        changed = False
        for backend in self._backends:
            ok = await backend.health()
            if ok and not self._healthy[backend.id]:
                try:
                    await backend.start()
                except GatewayError as exc:
                    log.info("backend %s answers but discovery failed: %s", backend.id, exc)
                    ok = False
                else:
                    log.info("backend %s is healthy again", backend.id)
            if ok != self._healthy[backend.id]:
                self._healthy[backend.id] = ok
                changed = True
        if changed:
            self._registry.rebuild(self._backends)

    # -- queries -----------------------------------------------------------
    @property
    def backends(self) -> Sequence[Backend]:
        return self._backends

    def is_healthy(self, backend_id: str) -> bool:
        return self._healthy.get(backend_id, False)

    def models(self) -> list[ModelSpec]:
        return self._registry.specs()

    def model(self, name: str, version: str = "") -> ModelSpec:
        return self._resolve(name, version)[0]

    def _resolve(self, name: str, version: str) -> tuple[ModelSpec, Sequence[Backend]]:
        """The registry's answer, except that an unknown model is UNAVAILABLE,
        not NOT_FOUND, while some backend has never told us what it serves."""
        try:
            return self._registry.resolve(name, version)
        except ModelNotFound as exc:
            unknown = [b.id for b in self._backends if not b.models() and not self._healthy[b.id]]
            if unknown and name not in {s.name for s in self._registry.specs()}:
                raise Unavailable(
                    f"{exc.message}; backends {', '.join(unknown)} are unreachable, "
                    "so it may be served there once they answer"
                ) from exc
            raise

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            _, backends = self._registry.resolve(name, version)
        except GatewayError:
            return False
        return any(self._healthy[b.id] for b in backends)

    def stats(self, name: str) -> ModelStats:
        return self._stats[name]

    # -- the request path --------------------------------------------------
    async def infer(self, request: InferRequest) -> InferResult:
        start = self._clock.now()
        spec, backends = self._resolve(request.model_name, request.model_version)
        validate_requested_outputs(spec, request.requested_outputs)
        validate_inputs(spec, request.inputs)
        first = next(iter(request.inputs.values()), None)
        rows = first.shape[0] if first is not None and spec.max_batch_size > 0 else 1
        stats = self._stats[spec.name]
        tried: list[str] = []
        last_error: GatewayError | None = None
        queue_s = compute_s = 0.0
        try:
            while True:
                now = self._clock.now()
                if request.deadline is not None and now >= request.deadline:
                    raise DeadlineExceeded(
                        f"deadline exceeded before model '{spec.name}' could run"
                        + (f" (tried {', '.join(tried)})" if tried else "")
                    )
                candidates = [
                    Candidate(b.id, self._healthy[b.id], self._outstanding[b.id], self._order[b.id])
                    for b in backends
                    if b.id not in tried
                ]
                decision = choose(candidates, now)
                if decision is None and last_error is not None:
                    raise last_error  # the retry found nowhere else to go
                if decision is None:
                    down = ", ".join(b.id for b in backends) or "none"
                    raise Unavailable(
                        f"no healthy backend can serve model '{spec.name}' now "
                        f"(backends: {down}; tried: {', '.join(tried) or 'none'})"
                    )
                self.decisions.append(decision)
                backend = next(b for b in backends if b.id == decision.backend_id)
                tried.append(backend.id)
                queue_s += now - (start if len(tried) == 1 else now)
                call_start = self._clock.now()
                self._outstanding[backend.id] += 1
                try:
                    outputs = await backend.infer(
                        spec,
                        request.inputs,
                        version=request.model_version,
                        outputs=request.requested_outputs,
                        parameters=request.parameters,
                        deadline=request.deadline,
                        trace_context=request.trace_context,
                    )
                except GatewayError as exc:
                    if not exc.retryable:
                        raise
                    if exc.code == "UNAVAILABLE":
                        self._mark_down(backend.id, exc.message)
                    log.info("retrying model %s elsewhere after: %s", spec.name, exc.message)
                    last_error = exc
                    continue
                finally:
                    self._outstanding[backend.id] -= 1
                    compute_s += self._clock.now() - call_start
                break
        except GatewayError:
            stats.record(
                ok=False, total_s=self._clock.now() - start, queue_s=0, compute_s=0, rows=0
            )
            raise
        stats.record(
            ok=True,
            total_s=self._clock.now() - start,
            queue_s=queue_s,
            compute_s=compute_s,
            rows=rows,
        )
        return InferResult(
            model_name=spec.name,
            model_version=request.model_version or spec.versions[-1],
            outputs=outputs,
            id=request.id,
            backend_id=backend.id,
        )

    def _mark_down(self, backend_id: str, why: str) -> None:
        if self._healthy.get(backend_id):
            log.warning("backend %s marked down: %s", backend_id, why)
            self._healthy[backend_id] = False
