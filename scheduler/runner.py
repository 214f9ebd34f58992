"""Running a batch on the fleet: place it, call the backend, learn, retry elsewhere."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import TYPE_CHECKING

import numpy as np
from opentelemetry.trace import Tracer

from scheduler import tracing
from scheduler.backends.base import Backend
from scheduler.batching import BatchInfo
from scheduler.batching.info import UNBATCHED
from scheduler.candidates import CandidateTables
from scheduler.clock import Clock
from scheduler.config import SchedulerConfig
from scheduler.errors import (
    BackendUnavailable,
    DeadlineExceeded,
    GatewayError,
    ResourceExhausted,
    Unavailable,
    model_not_ready,
)
from scheduler.estimator import ServiceTimeEstimator
from scheduler.fleet import BackendState, Fleet
from scheduler.health import outlier_needs_s
from scheduler.load import Departures, concurrency, service_sample
from scheduler.observer import NullObserver, SchedulerObserver
from scheduler.placement import Candidates, Decision, Verdict
from scheduler.routing import RouterTable
from scheduler.spec import ModelSpec, Tensor
from scheduler.streams import OpenStreams

if TYPE_CHECKING:
    from scheduler.stats import ModelStats

log = logging.getLogger(__name__)


class BatchRunner:
    """Places each batch on the backend that finishes it soonest, and runs it there.

    ``run`` gathers the candidates (breaker, drain, in-flight work, learned
    service time, fresh telemetry) from ``candidates``, tables that hooks
    keep current as that state changes, asks the model's pure ``Router``
    (``scheduler.routing``; predicted finish time unless configured), and
    calls the chosen backend, counting the call into the backend's in-flight
    work and predicted busy time for the next decision. Outcomes feed the
    estimator and the circuit breakers; a retryable failure is retried on the
    next-best backend while the deadline leaves time. Every decision is kept,
    with its reason, in ``decisions``.
    """

    def __init__(
        self,
        *,
        config: SchedulerConfig,
        fleet: Fleet,
        candidates: CandidateTables,
        estimator: ServiceTimeEstimator,
        stats: Mapping[str, ModelStats],
        clock: Clock,
        tracer: Tracer,
    ) -> None:
        self.config = config
        self.fleet = fleet
        self.candidates = candidates
        self.estimator = estimator
        self._stats = stats
        self._clock = clock
        self._tracer = tracer
        self.observer: SchedulerObserver = NullObserver()
        self.decisions: deque[Decision] = deque(maxlen=config.decision_log_size)
        #: Model instances per (backend, model), read per call: cleared when the fleet changes.
        self.concurrency: dict[tuple[str, str], int] = {}
        #: When calls last left each (backend, model): bounds what a call learns.
        self._departures = Departures()
        #: Bytes per row of the calls each (backend, model)'s estimate learnt from
        #: (moving average, each call weighing 0.2), for the outlier bound.
        self._row_bytes: dict[tuple[str, str], float] = {}
        #: The routing policy of each model (``config.routing``, ``routing_by_model``).
        self.routers = RouterTable(config.routing, config.routing_by_model)

    async def run(
        self, spec: ModelSpec, inputs: dict[str, Tensor], info: BatchInfo
    ) -> Mapping[str, Tensor] | bytes:
        tried: set[str] = set()
        last_error: GatewayError | None = None
        traced = tracing.recording(self._tracer)
        if info.attempt == 0 and info.trigger not in UNBATCHED:
            start = self._clock.now()
            waits = [start - t for t in info.enqueued_at]
            self.observer.batch_started(spec.name, info.size, info.trigger, waits)
        router = self.routers.of(spec.name)
        while True:
            # The placement span covers gathering the candidates and deciding.
            start_ns = time.time_ns() if traced else 0
            now = self._clock.now()
            candidates = self.candidates.gather(
                spec.name, info.size, now, tried, router.wants_outstanding
            )
            decision = router(
                candidates,
                now=now,
                deadline=info.deadline,
                unknown_service_s=self.config.unknown_service_s,
            )
            # Say why the others lost, where there were others.
            others = len(candidates.backend_ids) > 1 or tried
            if (
                decision.backend_id is not None
                and others
                and (skipped := self._skipped(candidates, tried))
            ):
                decision = decision._replace(note=f"{decision.reason}; {skipped}")
            if traced:
                tracing.placement_span(
                    self._tracer, decision, start_ns=start_ns, tries=len(tried), phases=info.phases
                )
            self.decisions.append(decision)
            self.observer.placed(spec.name, info.size, decision)
            if decision.backend_id is None:
                if last_error is not None:
                    raise last_error  # the retry found nowhere else to go
                if decision.verdict is Verdict.TOO_LATE:
                    raise DeadlineExceeded(f"model '{spec.name}': {decision.reason}")
                busy = candidates.available & candidates.memory_ok & ~candidates.load_ok
                if busy.any():  # up, but full: shed with a hint, not "unavailable"
                    wait_ms = float(np.min(candidates.queued_s[busy])) * 1e3
                    raise ResourceExhausted(
                        f"model '{spec.name}': {decision.reason}",
                        retry_after_ms=max(1, round(wait_ms)),
                    )
                raise model_not_ready(spec.name, spec.versions, decision.reason)
            state = self.fleet.get(decision.backend_id)
            if state is None:  # removed since the tables were built: rebuild, decide again
                self.candidates.invalidate()
                continue
            tried.add(state.id)
            if not state.breaker.allows(now):
                continue  # lost the half-open trial to another call
            # The outlier bound needs somewhere for the retry to go: on the last
            # available backend, cutting a slow call only turns a late answer
            # into an error and, repeated, ejects the model's only server (as
            # Envoy's max ejection percent keeps a cluster from emptying).
            spare = len(candidates.backend_ids) > 1 and np.count_nonzero(candidates.available) > 1
            try:
                return await self._call(
                    state, spec, inputs, info, decision, len(tried) - 1, traced, spare
                )
            except GatewayError as exc:
                if not exc.retryable:
                    raise
                log.info("model %s: retrying elsewhere after %s", spec.name, exc.message)
                last_error = exc

    async def run_pinned(
        self, backend_id: str, spec: ModelSpec, inputs: dict[str, Tensor], info: BatchInfo
    ) -> Mapping[str, Tensor] | bytes:
        """Run a request on the one backend that must take it (a sequence's),
        without placement's choice and without retrying elsewhere."""
        state, decision = self._pinned(backend_id, spec, info)
        traced = tracing.recording(self._tracer)
        # A sequence's backend is the only one it may use: no spare to retry on.
        return await self._call(state, spec, inputs, info, decision, 0, traced, False)

    def _pinned(
        self, backend_id: str, spec: ModelSpec, info: BatchInfo
    ) -> tuple[BackendState, Decision]:
        state = self.fleet.get(backend_id)
        if state is None:
            raise BackendUnavailable(f"backend {backend_id} was removed", backend_id=backend_id)
        now = self._clock.now()
        service = self.estimator.predict(state.id, spec.name, 1)
        service_s = self.config.unknown_service_s if service is None else service
        decision = Decision(
            Verdict.PLACED,
            state.id,
            service_s,
            service_s,
            None,
            math.nan,
            f"{state.id}: the backend that holds the sequence",
            now,
            math.nan,
        )
        self.decisions.append(decision)
        self.observer.placed(spec.name, info.size, decision)
        return state, decision

    async def open_stream(
        self,
        spec: ModelSpec,
        info: BatchInfo,
        streams: OpenStreams,
        backend_id: str | None = None,
    ) -> AsyncIterator[bytes]:
        """Place a request of a decoupled model, weighing the streams already
        open on each backend (``scheduler.streams``), or put it on
        ``backend_id`` (a sequence's), and relay the backend's responses
        (encoded ``ModelStreamInferResponse`` messages) as they arrive."""
        if info.wire is None:
            raise Unavailable(f"model '{spec.name}' streams only requests in their wire form")
        now = self._clock.now()
        if backend_id is not None:
            state = self._pinned(backend_id, spec, info)[0]
        else:
            table = self.candidates.table(spec.name)
            router = self.routers.of(spec.name)
            gathered = self.candidates.gather(spec.name, 1, now, (), router.wants_outstanding)
            candidates = streams.weigh(gathered, now, table.concurrency.tolist())
            decision = router(
                candidates, now=now, deadline=None, unknown_service_s=self.config.unknown_service_s
            )
            self.decisions.append(decision)
            self.observer.placed(spec.name, 1, decision)
            found = None if decision.backend_id is None else self.fleet.get(decision.backend_id)
            if found is None:
                raise model_not_ready(spec.name, spec.versions, decision.reason)
            state = found
        info.served_by.append(state.id)
        token = streams.open(state.id, now)
        span = None
        headers: Mapping[str, str] | None
        if tracing.recording(self._tracer):
            # Not the current span: the stream's messages are yielded to the
            # caller's code, which must not run inside it. It lasts as long
            # as the stream, so the request's trace covers the whole stream.
            span, headers = tracing.backend_stream(
                self._tracer, info.caller_context, backend_id=state.id, model=spec.name
            )
        else:
            headers = info.propagation()
        code = "OK"
        try:
            async for message in state.backend.stream_wire(
                spec, info.wire, deadline=info.deadline, trace_context=headers
            ):
                yield message
        except GatewayError as exc:
            code = exc.code
            self.fleet.record_failure(state, exc)
            raise
        except (asyncio.CancelledError, GeneratorExit):  # the caller went away
            code = "CANCELLED"
            raise
        finally:
            streams.close(state.id, token)
            self.observer.backend_called(spec.name, state.id, self._clock.now() - now, code)
            if span is not None:
                tracing.end_backend_stream(span, code)

    def _skipped(self, candidates: Candidates, tried: set[str]) -> str:
        """The candidates placement could not use, each with why ("" for none)."""
        usable = candidates.available & candidates.memory_ok & candidates.load_ok
        why = [f"{backend_id} already tried" for backend_id in sorted(tried)]
        if not usable.all():
            for row in np.flatnonzero(~usable):
                backend_id = candidates.backend_ids[row]
                state = self.fleet.get(backend_id)
                if not candidates.available[row]:
                    if state is not None and state.drained:
                        because = "drained"
                    elif state is not None and not state.discovered:
                        because = "not discovered"
                    elif state is not None:
                        because = f"breaker {state.breaker.state.value}"
                    else:
                        because = "gone"
                elif not candidates.memory_ok[row]:
                    because = "short of memory"
                else:
                    because = "over load limits (utilization or calls in flight)"
                why.append(f"{backend_id} skipped: {because}")
        return "; ".join(why)

    async def _call(
        self,
        state: BackendState,
        spec: ModelSpec,
        inputs: dict[str, Tensor],
        info: BatchInfo,
        decision: Decision,
        retries: int,
        traced: bool,
        spare: bool,
    ) -> Mapping[str, Tensor] | bytes:
        predicted = decision.service_s
        name = spec.name
        load = state.load
        instances = self.concurrency.get((state.id, name))
        if instances is None:
            instances = self.concurrency[(state.id, name)] = concurrency(state, spec)
        # The work already in flight here, as predicted when this call joins it.
        ahead, busy_s = load.start(name, predicted)
        wait_s = busy_s / instances
        info.served_by.append(state.id)
        backend = state.backend
        start = self._clock.now()
        code = "OK"
        # Outlier detection: a call that runs far past what this backend has
        # shown it needs (its prediction and the wait ahead of it) is ended
        # there and retried elsewhere, and counts against the backend; a hung
        # server then costs its callers a bounded delay, not their deadline.
        # Only once the backend has a measured estimate (a first call may be
        # slow), and only with a ``spare`` backend to retry on.
        deadline = info.deadline
        bounded = False
        row_bytes = sum([a.nbytes for a in inputs.values()]) / max(info.size, 1)
        needs_s = predicted + wait_s
        if spare and self.estimator.knows(state.id, name):
            config = self.config
            usual = self._row_bytes.get((state.id, name), 0.0)
            needs_s = outlier_needs_s(predicted, wait_s, row_bytes, usual)
            limit_at = start + config.outlier_min_s + config.outlier_factor * needs_s
            if deadline is None or limit_at < deadline:
                deadline, bounded = limit_at, True
        try:
            if traced:
                with tracing.BackendCall(
                    self._tracer,
                    backend_id=state.id,
                    endpoint=backend.endpoint,
                    retries=retries + info.attempt,
                    phases=info.phases,
                ) as headers:
                    outputs = await self._invoke(backend, spec, inputs, info, deadline, headers)
            else:
                outputs = await self._invoke(
                    backend, spec, inputs, info, deadline, info.propagation()
                )
        except GatewayError as exc:
            code = exc.code
            if bounded and code == "DEADLINE_EXCEEDED":
                bound_s = deadline - start if deadline is not None else 0.0
                exc = BackendUnavailable(
                    f"model '{name}': a backend did not answer within {bound_s:.2f} s "
                    f"(it usually needs {needs_s:.3f} s); retried elsewhere",
                    backend_id=state.id,
                )
                code = exc.code
                self.fleet.record_outlier(state, exc)
                raise exc from None
            self.fleet.record_failure(state, exc)
            raise
        except BaseException:
            code = "INTERNAL"
            raise
        finally:
            load.end(name, predicted)
            ended = self._clock.now()
            took_s = ended - start
            info.backend_s += took_s
            self.observer.backend_called(name, state.id, took_s, code)
        self.fleet.record_success(state)
        held_s = self._departures.held_s(state.id, name, instances, start, ended)
        self.estimator.observe(
            state.id, name, info.size, service_sample(took_s, wait_s, ahead, held_s)
        )
        usual = self._row_bytes.setdefault((state.id, name), row_bytes)
        self._row_bytes[(state.id, name)] = usual + 0.2 * (row_bytes - usual)
        self._stats[spec.name].record_execution(
            rows=info.size, compute_s=took_s, started=start, enqueued_at=info.enqueued_at
        )
        return outputs

    @staticmethod
    def _invoke(
        backend: Backend,
        spec: ModelSpec,
        inputs: dict[str, Tensor],
        info: BatchInfo,
        deadline: float | None,
        headers: Mapping[str, str] | None,
    ) -> Awaitable[Mapping[str, Tensor] | bytes]:
        # The backend's own coroutine, awaited by the caller: no coroutine of
        # its own in between (one frame less on every resume of the call).
        if info.wire is not None and backend.forwards_wire:
            return backend.infer_wire(spec, info.wire, deadline=deadline, trace_context=headers)
        return backend.infer(
            spec,
            inputs,
            version=info.model_version,
            outputs=info.outputs,
            parameters=info.parameters,
            deadline=deadline,
            trace_context=headers,
        )
