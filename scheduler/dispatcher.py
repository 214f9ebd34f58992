"""The scheduler's front: admit, batch, place on a backend, run, retry.

This is the seam the gateway talks to (``infer``, the model queries and the
admin views). ``scheduler`` never imports ``gateway``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import operator
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from opentelemetry.trace import Tracer

from scheduler import tracing
from scheduler.backends.base import Backend
from scheduler.batching import AdmissionPolicy, Batcher, BatchInfo, policy_from_triton_config
from scheduler.candidates import CandidateTables
from scheduler.clock import Clock, MonotonicClock
from scheduler.config import SchedulerConfig
from scheduler.discovery import DnsEndpointGroup
from scheduler.errors import GatewayError, ModelNotFound, Unavailable
from scheduler.estimator import ServiceTimeEstimator
from scheduler.fleet import BackendFactory, BackendState, Fleet
from scheduler.observer import SchedulerObserver
from scheduler.placement import Decision, Tier
from scheduler.registry import ModelRegistry
from scheduler.request import InferRequest, InferResult, Outputs
from scheduler.runner import BatchRunner
from scheduler.sequences import sequence_of
from scheduler.shared_view import SharedView
from scheduler.spec import ModelSpec
from scheduler.stateful import StatefulRunner
from scheduler.stats import ModelStats
from scheduler.telemetry.monitor import DeviceMonitor
from scheduler.telemetry.snapshot import TelemetrySnapshot
from scheduler.validation import validate_inputs, validate_requested_outputs

log = logging.getLogger(__name__)
#: "Not looked up yet" in the batcher table, where None means "not batched".
_UNSET: Any = object()


class Scheduler:
    """Routes each batch to the backend that finishes it soonest within its deadline.

    Per request: resolve the model and validate the tensors; if the gateway
    batches the model, the request joins its ``Batcher`` (which merges callers
    and hands each batch to ``runner``), else it runs alone through ``runner``.
    ``BatchRunner.run`` places the batch with the pure ``place`` policy on
    candidate tables that hooks keep current, calls the chosen backend and
    retries a retryable failure on the next-best one while the deadline
    leaves time (see ``scheduler.runner``).

    Two kinds of model leave that path (``ModelSpec.stateful``): a request of
    a sequence model that carries a ``sequence_id`` runs on the backend that
    holds its sequence (``scheduler.sequences``), and a request of a
    decoupled model is streamed (``stateful.stream``), placed by the streams
    already open on each backend (``scheduler.streams``). Neither is batched.
    """

    def __init__(
        self,
        backends: Sequence[Backend],
        *,
        clock: Clock | None = None,
        config: SchedulerConfig | None = None,
        monitor: DeviceMonitor | None = None,
        dns_groups: list[DnsEndpointGroup] | None = None,
        backend_factory: BackendFactory | None = None,
        tier_of: Callable[[Backend], Tier] = operator.attrgetter("tier"),  # as it declares
        tracer: Tracer | None = None,
        observer: SchedulerObserver | None = None,
        shared: SharedView | None = None,
    ) -> None:
        self._clock = clock or MonotonicClock()
        self.config = config or SchedulerConfig()
        self.monitor = monitor
        self.fleet = Fleet(
            list(backends),
            clock=self._clock,
            tier_of=tier_of,
            breaker=self.config.breaker,
            dns_groups=dns_groups,
            factory=backend_factory,
            probe_timeout_s=self.config.probe_timeout_s,
        )
        self.fleet.on_change.append(self._fleet_changed)
        self.estimator = ServiceTimeEstimator()
        self._registry = ModelRegistry()

        def telemetry() -> TelemetrySnapshot | None:
            return self.monitor.snapshot() if self.monitor is not None else None

        #: Per-model candidate tables, kept current by hooks on the fleet and
        #: the estimator; ``gather`` + ``place`` is one placement decision.
        self.candidates = CandidateTables(
            self.config, self.fleet, self._registry, self.estimator, telemetry
        )
        # A removed backend must leave the tables before the registry is rebuilt.
        self.fleet.on_removed.append(lambda _backend: self.candidates.invalidate())
        self._batchers: dict[str, Batcher | None] = {}
        self._stats: dict[str, ModelStats] = defaultdict(ModelStats)
        self._tasks: set[asyncio.Task[None]] = set()
        self._tracer = tracer or tracing.default_tracer()
        self.runner = BatchRunner(
            config=self.config,
            fleet=self.fleet,
            candidates=self.candidates,
            estimator=self.estimator,
            stats=self._stats,
            clock=self._clock,
            tracer=self._tracer,
        )
        if observer is not None:
            self.runner.observer = observer
        #: With several gateway workers: the view the leader shares with the others.
        self.shared = shared
        #: Sequences on their backends, and streams of decoupled models.
        self.stateful = StatefulRunner(self.runner, self.candidates, self._clock)

    # -- lifecycle ---------------------------------------------------------
    async def start(self) -> None:
        """Start every backend (one that is down is probed later) and the loops.

        A follower worker (``shared``) neither probes nor re-reads models: it
        applies what the leader publishes (``scheduler.shared_view``).
        """
        await self.fleet.start()
        if self.monitor is not None:
            await self.monitor.start()
        shared = self.shared
        if shared is None or shared.role == "leader":
            self._every(self.config.health_interval_s, self.fleet.probe, "health")
            self._every(self.config.rediscover_interval_s, self.fleet.rediscover, "rediscover")
        if shared is not None:
            share_every_s = self.config.health_interval_s / 2
            if shared.role == "leader":
                await self._publish()
                self._every(share_every_s, self._publish, "publish")
            else:
                self._every(share_every_s, self._follow, "follow")
        self._every(self.config.dns_interval_s, self.fleet.refresh_dns, "dns")
        self._every(self.config.stale_estimate_s, self.estimator.relax_stale, "estimates")

    async def _publish(self) -> None:
        if self.shared is not None:
            snapshot = self.monitor.snapshot() if self.monitor is not None else None
            self.shared.publish(self.fleet, snapshot, self._clock.now())

    async def _follow(self) -> None:
        if self.shared is not None:
            await self.shared.follow(self.fleet, self._clock.now())

    def _every(self, period_s: float, job: Callable[[], object], name: str) -> None:
        async def loop() -> None:  # ``job`` is a function, or one returning an awaitable
            while True:
                await asyncio.sleep(period_s)
                try:
                    if inspect.isawaitable(done := job()):
                        await done
                except Exception:  # a failed round must not end the loop
                    log.exception("scheduler %s round failed", name)

        self._keep(asyncio.create_task(loop(), name=f"scheduler-{name}"))

    def _keep(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.gather(*(b.aclose() for b in self._batchers.values() if b is not None))
        if self.monitor is not None:
            await self.monitor.aclose()
        await self.fleet.aclose()

    def _fleet_changed(self) -> None:
        self.candidates.invalidate()
        self.runner.concurrency.clear()
        self._registry.rebuild(self.fleet.backends())
        for state in self.fleet:
            for name, rows, seconds in state.backend.service_time_hints():
                self.estimator.seed(state.id, name, rows, seconds)
        served = {s.name: s for s in self._registry.specs()}
        for name, batcher in list(self._batchers.items()):
            # Gone, or rediscovered with another signature: decide again on next
            # use; a batcher's queued callers get UNAVAILABLE rather than wrong shapes.
            if batcher is None or name not in served or batcher.spec != served[name]:
                del self._batchers[name]
                if batcher is not None:
                    self._keep(asyncio.get_running_loop().create_task(batcher.aclose()))
            else:
                batcher.notify_capacity()

    # -- queries -------------------------------------------------------------
    @property
    def observer(self) -> SchedulerObserver:
        """Told of every batch, decision and backend call (the gateway's metrics)."""
        return self.runner.observer

    @observer.setter
    def observer(self, observer: SchedulerObserver) -> None:
        self.runner.observer = observer

    @property
    def decisions(self) -> deque[Decision]:
        """The latest placement decisions, with their reasons, oldest first."""
        return self.runner.decisions

    @property
    def backends(self) -> list[Backend]:
        return self.fleet.backends()

    def is_healthy(self, backend_id: str) -> bool:
        state = self.fleet.get(backend_id)
        return state is not None and state.usable(self._clock.now())

    def models(self) -> list[ModelSpec]:
        return self._registry.specs()

    @property
    def generation(self) -> int:
        """Changes whenever the served models may have: a request layout
        checked against ``model()`` in one generation holds for that one."""
        return self._registry.generation

    def model(self, name: str, version: str = "") -> ModelSpec:
        return self._resolve(name, version)[0]

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            _, backends = self._registry.resolve(name, version)
        except GatewayError:
            return False
        return any(self.is_healthy(b.id) for b in backends)

    def stats(self, name: str) -> ModelStats:
        return self._stats[name]

    def batcher(self, name: str) -> Batcher | None:
        return self._batchers.get(name)

    def batcher_of(self, spec: ModelSpec) -> Batcher | None:
        """The model's batcher, made on first use; None when the gateway does not batch it."""
        batcher = self._batchers.get(spec.name, _UNSET)
        return self._batcher_for(spec) if batcher is _UNSET else batcher

    def set_drained(self, backend_id: str, drained: bool) -> BackendState:
        """Take a backend out of rotation (placement skips it) or put it back.
        In-flight calls finish. Raises KeyError for an unknown id."""
        state = self.fleet.get(backend_id)
        if state is None:
            raise KeyError(backend_id)
        state.drained = drained
        for batcher in self._batchers.values():
            if batcher is not None:
                batcher.notify_capacity()  # capacity changed either way
        return state

    def live_sequences(self, backend_id: str) -> int:
        """Sequences still running on a backend: a drained one is empty when
        this is 0 (they end, or idle out) and it has no calls in flight."""
        return self.stateful.sequences.live_on(backend_id, self._clock.now())

    def _resolve(self, name: str, version: str) -> tuple[ModelSpec, Sequence[Backend]]:
        """The registry's answer, except that an unknown model is UNAVAILABLE,
        not NOT_FOUND, while some backend has never told us what it serves."""
        try:
            return self._registry.resolve(name, version)
        except ModelNotFound as exc:
            unknown = [s.id for s in self.fleet if not s.discovered]
            if unknown and name not in {s.name for s in self._registry.specs()}:
                raise Unavailable(
                    f"{exc.message}; backends {', '.join(unknown)} are unreachable, "
                    "so it may be served there once they answer"
                ) from exc
            raise

    # -- the request path ----------------------------------------------------
    async def infer(self, request: InferRequest, spec: ModelSpec | None = None) -> InferResult:
        """Run one request; ``spec`` is the model as the caller already resolved it."""
        start = self._clock.now()
        if spec is None:
            spec = self._resolve(request.model_name, request.model_version)[0]
        if request.checked is not spec:
            if request.requested_outputs:
                validate_requested_outputs(spec, request.requested_outputs)
            validate_inputs(spec, request.inputs)
        first = next(iter(request.inputs.values()), None)
        rows = first.shape[0] if first is not None and spec.max_batch_size > 0 else 1
        stats = self._stats[spec.name]
        try:
            batcher = self._batchers.get(spec.name, _UNSET)
            if batcher is _UNSET:
                batcher = self._batcher_for(spec)
            if batcher is not None:
                outputs = await batcher.submit(request, start)
            else:
                outputs = await self._run_solo(spec, request, rows, start)
        except GatewayError:
            stats.record_request(ok=False, total_s=self._clock.now() - start, rows=rows)
            raise
        stats.record_request(ok=True, total_s=self._clock.now() - start, rows=rows)
        return InferResult(
            model_name=spec.name,
            model_version=request.model_version or spec.versions[-1],
            outputs={} if isinstance(outputs, bytes) else outputs,
            id=request.id,
            backend_id=request.served_by,
            wire=outputs if isinstance(outputs, bytes) else None,
        )

    async def _run_solo(
        self, spec: ModelSpec, request: InferRequest, rows: int, start: float
    ) -> Outputs:
        """A request the gateway does not batch: placed and run on its own,
        forwarded in its wire form where the backend takes it."""
        info = BatchInfo(
            model_name=spec.name,
            model_version=request.model_version,
            size=rows,
            request_ids=(request.id,),
            deadline=request.deadline,
            trigger="solo",
            outputs=request.requested_outputs,
            priority=request.priority,
            parameters=request.parameters,
            trace_contexts=(),
            enqueued_at=(start,),
            wire=request.wire,
            caller_context=request.trace_context,
        )
        run = self.runner.run
        if spec.sequence and (sequence := sequence_of(request.parameters)) is not None:
            run = functools.partial(self.stateful.run_sequence, *sequence)
        try:
            if tracing.recording(self._tracer):
                with tracing.solo_batch(self._tracer, request.trace_context, spec.name, rows):
                    outputs = await run(spec, request.inputs, info)
            else:
                outputs = await run(spec, request.inputs, info)
            return outputs if isinstance(outputs, bytes) else dict(outputs)
        finally:
            request.served_by = info.served_by[-1] if info.served_by else ""
            request.backend_s = info.backend_s

    def _batcher_for(self, spec: ModelSpec) -> Batcher | None:
        """The model's batcher, made on first use; None (also remembered, so the
        policy is not parsed again per request) when the gateway does not batch it."""
        if spec.name in self._batchers:
            return self._batchers[spec.name]
        # Triton batches sequences itself; a decoupled model streams per request.
        if spec.max_batch_size <= 0 or spec.stateful:
            self._batchers[spec.name] = None
            return None
        layer = self.config.batching_layer_by_model.get(spec.name, self.config.batching_layer)
        config = dict(spec.config)
        override = dict(self.config.batching_by_model.get(spec.name, {}))
        # The gateway may batch smaller than the model allows, never larger.
        max_batch = min(
            int(override.pop("max_batch_size", spec.max_batch_size)), spec.max_batch_size
        )
        if override:
            config["dynamic_batching"] = {**config.get("dynamic_batching", {}), **override}
        policy = policy_from_triton_config(config, max(1, max_batch), layer=layer)
        if not policy.enabled:
            self._batchers[spec.name] = None
            return None
        if not policy.max_queue_delay_us and self.config.default_max_queue_delay_us:
            policy = replace(policy, max_queue_delay_us=self.config.default_max_queue_delay_us)
        batcher = Batcher(
            spec,
            replace(policy, max_message_bytes=self.config.max_message_bytes),
            self.runner.run,
            clock=self._clock,
            capacity=lambda: self._capacity(spec),
            tracer=self._tracer,
            admission=AdmissionPolicy(self.config.admit_fraction, self.config.default_slo_s),
            queue_ahead=self.config.queue_ahead,
        )
        self._batchers[spec.name] = batcher
        return batcher

    def _capacity(self, spec: ModelSpec) -> int:
        """Batches this model's usable backends can run at once."""
        instances = self.candidates.capacity(spec.name, self._clock.now())
        return max(instances * self.config.pipeline_depth, 1)
