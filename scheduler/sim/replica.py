"""One gateway replica in the simulator: the real scheduler parts, on virtual time.

Each replica has what a gateway process has: its own ``Fleet`` (circuit
breakers, in-flight counts), ``CandidateTables``, ``ServiceTimeEstimator``,
one ``BatchQueue`` per model and the model's ``Router`` — all imported from
``scheduler``, none copied. What the live ``Batcher`` and ``BatchRunner`` do
with asyncio is done here with events: an arrival that finds its queue
empty, no queue delay and a backend slot free is its own batch at once, past
the queue, by the live ``Batcher._may_skip_queue`` rule; a look at a queue
(``step``) when any other request arrives, a batch finishes or a queue's
wake-up falls due — an arrival skips the look by the live
``Batcher._worth_a_look`` rule (every slot busy, its batch cannot fill,
nothing it brings is due before the next wake-up: the look would change
nothing); a batch is placed, counted into the backend's in-flight work,
sent to its simulated device, and on its outcome counted out, learned from
(estimator, breaker, queue service time) or retried on another backend while
its deadline allows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from scheduler.batching.admission import AdmissionPolicy, admit_by_deadline
from scheduler.batching.policy import BatchingPolicy
from scheduler.batching.queue import Batch, BatchQueue, QueueItem
from scheduler.candidates import CandidateTables
from scheduler.config import SchedulerConfig
from scheduler.errors import GatewayError, ResourceExhausted
from scheduler.estimator import ServiceTimeEstimator
from scheduler.fleet import BackendState, Fleet
from scheduler.load import Departures, concurrency, service_sample
from scheduler.placement import Decision, Verdict
from scheduler.registry import ModelRegistry
from scheduler.routing import RouterTable
from scheduler.sim.cpu import CpuStage, ProcessCpu
from scheduler.sim.devices import Call, SimBackend
from scheduler.telemetry.snapshot import TelemetrySnapshot

if TYPE_CHECKING:
    from scheduler.clock import ManualClock


@dataclass(slots=True)
class SimRequest:
    """One request's life: filled in as it goes."""

    arrived_at: float
    model: str
    rows: int
    deadline: float
    slo_s: float
    finished_at: float = math.nan
    backend: str = ""
    tier: int = -1
    outcome: str = ""  # ok, expired, refused, failed, shed
    priority: int = 0  # read by admission, as an InferRequest's


@dataclass(slots=True)
class InFlight:
    """A batch on its way through one backend, as the runner keeps it."""

    batch: Batch[SimRequest]
    state: BackendState
    decision: Decision
    ahead: int
    wait_s: float
    started_at: float
    deadline: float
    rows: int
    tried: set[str] = field(default_factory=set)


#: How the engine sends a call to a device: (backend id, call, replica).
Send = Callable[[str, Call, "Replica"], None]
#: How the engine schedules a callback at a virtual time.
Schedule = Callable[..., None]


class Replica:
    """A gateway replica: queues, placement and the runner's bookkeeping (see module)."""

    def __init__(
        self,
        *,
        index: int,
        backends: list[SimBackend],
        config: SchedulerConfig,
        policies: dict[str, BatchingPolicy],
        router: str,
        clock: ManualClock,
        telemetry: Callable[[], TelemetrySnapshot | None],
        send: Send,
        at: Schedule,
        finished: Callable[[SimRequest], None],
        seed: int,
        cpu: CpuStage | None = None,
        admission: bool = False,
    ) -> None:
        self.index = index
        self.cpu_stage = cpu or CpuStage()
        self.cpu = ProcessCpu()  # this process's CPU; used when the stage is enabled
        self.config = config
        self._clock = clock
        self._send = send
        self._at = at
        self._finished = finished
        self.fleet = Fleet(
            list(backends), clock=clock, tier_of=lambda b: b.tier, breaker=config.breaker
        )
        for state in self.fleet:
            state.discovered = True
        self.registry = ModelRegistry()
        self.registry.rebuild(self.fleet.backends())
        self.estimator = ServiceTimeEstimator()
        for state in self.fleet:  # as the live scheduler seeds it on a fleet change
            for name, rows, seconds in state.backend.service_time_hints():
                self.estimator.seed(state.id, name, rows, seconds)
        self.candidates = CandidateTables(
            config, self.fleet, self.registry, self.estimator, telemetry
        )
        self.routers = RouterTable(router, {}, seed=seed)
        # By id, with each backend's tier as an int: read per batch, and the
        # simulated fleet never changes.
        self._states = {state.id: state for state in self.fleet}
        self._tiers = {state.id: int(state.tier) for state in self.fleet}
        self._unknown_s = config.unknown_service_s
        self.queues = {name: BatchQueue[SimRequest](p) for name, p in policies.items()}
        self.in_flight = dict.fromkeys(policies, 0)
        self._wake = dict.fromkeys(policies, math.inf)
        self._policies = policies
        self._seen_capacity = dict.fromkeys(policies, 1)  # at the last look, as the batcher keeps
        self._instances: dict[tuple[str, str], int] = {}
        self._departures = Departures()  # as the live runner's
        #: The live batcher's admission by predicted wait, when modelled.
        self._admission = (
            AdmissionPolicy(config.admit_fraction, config.default_slo_s) if admission else None
        )
        self.decisions = 0
        self.verdicts: dict[Verdict, int] = {}
        # Without a CPU stage an arrival is taken in (``enqueue``) at once.
        self.submit = self.enqueue if self.cpu_stage.before_s <= 0.0 else self._through_cpu

    # -- the batcher ---------------------------------------------------------
    def _through_cpu(self, request: SimRequest, now: float) -> None:
        """A request arrives through this process's CPU, then is queued (``submit``)."""
        queued_at = self.cpu.serve(now, self.cpu_stage.before_s)
        self._at(queued_at, self.enqueue, request, queued_at)

    def enqueue(self, request: SimRequest, now: float) -> None:
        """Take ``request`` in at ``now``, the clock's time (the engine's loop
        or the event that brings it has it at hand)."""
        item = QueueItem(request, request.rows, request.model, 0, request.deadline)
        model = request.model
        queue = self.queues[model]
        policy = self._policies[model]
        if not policy.max_queue_delay_us and not len(queue):
            parallel = self._parallel(model, now)
            if self.in_flight[model] < parallel:
                # As the live Batcher._may_skip_queue: nothing to merge with, no
                # delay to wait and a backend has room, so the request is its own
                # batch at once, past the queue (and its admission check).
                self.in_flight[model] += 1
                alone = tuple.__new__(Batch, ((item,), "alone"))
                flight = InFlight(alone, None, None, 0, 0.0, now, request.deadline, request.rows)  # type: ignore[arg-type]
                self._place(flight, now)
                return
        try:
            if self._admission is not None:  # as the live Batcher.submit, before the push
                parallel = self._parallel(model, now)
                admit_by_deadline(
                    queue, request, request.rows, now, lambda: parallel, self._admission
                )
            queue.push(item, now)
        except ResourceExhausted:
            self._end(request, now, "shed")
            return
        if self.in_flight[model] < self._seen_capacity[model]:
            self.step(model, now)
            return
        if policy.preferred_batch_sizes or queue.group_rows(item.key) >= policy.max_batch_size:
            self.step(model, now)
            return
        due = item.timeout_at if item.timeout_at is not None else math.inf
        wake = self._wake[model]
        if request.deadline < wake or due < wake:  # the earlier of the two is before it
            self.step(model, now)

    def _parallel(self, model: str, now: float) -> int:
        """Batches ``model``'s backends can run at once, at least 1: as the
        live dispatcher's ``capacity`` for its batcher."""
        batches = self.candidates.capacity(model, now) * self.config.pipeline_depth
        return batches if batches > 1 else 1  # max(batches, 1), without a builtin call

    def wake(self, model: str, at: float) -> None:
        if self._wake[model] == at:  # else superseded by an earlier wake-up
            self._wake[model] = math.inf
            self.step(model, self._clock.now())

    def step(self, model: str, now: float) -> None:
        """A look at ``model``'s queue at ``now``, the clock's time (its caller
        has read it: no event runs between the read and the look)."""
        capacity = self._parallel(model, now)
        self._seen_capacity[model] = capacity
        step = self.queues[model].step(
            now, in_flight=self.in_flight[model], capacity=capacity, ahead=self.config.queue_ahead
        )
        for item, _ in step.expired:
            self._end(item.payload, now, "expired")
        for batch in step.batches:
            self.in_flight[model] += 1
            deadline, rows = math.inf, 0  # the batch's earliest deadline and its rows
            for item in batch.items:
                request = item.payload
                rows += request.rows
                if request.deadline < deadline:
                    deadline = request.deadline
            self._place(InFlight(batch, None, None, 0, 0.0, now, deadline, rows), now)  # type: ignore[arg-type]
        wake_at = step.wake_at
        if wake_at is not None and wake_at < self._wake[model]:
            wake_at = max(wake_at, now)
            self._wake[model] = wake_at
            self._at(wake_at, self.wake, model, wake_at)

    # -- the runner ------------------------------------------------------------
    def _place(self, flight: InFlight, now: float) -> None:
        """Place ``flight`` at ``now``, the clock's time: no event runs during a
        placement, so its callers' read of the clock holds."""
        batch, rows, tried = flight.batch, flight.rows, flight.tried
        model = batch.items[0].payload.model
        router = self.routers.of(model)
        gather, outstanding, verdicts = (
            self.candidates.gather,
            router.wants_outstanding,
            self.verdicts,
        )
        while True:
            candidates = gather(model, rows, now, tried, outstanding)
            decision = router(
                candidates, now=now, deadline=flight.deadline, unknown_service_s=self._unknown_s
            )
            self.decisions += 1
            verdict = decision.verdict
            verdicts[verdict] = verdicts.get(verdict, 0) + 1
            backend_id = decision.backend_id
            if backend_id is None:
                self._batch_over(batch, now, "refused" if not tried else "failed", model)
                return
            state = self._states[backend_id]
            tried.add(backend_id)
            if state.breaker.allows(now):
                break
        key = (backend_id, model)
        instances = self._instances.get(key)
        if instances is None:
            spec, _ = self.registry.resolve(model)
            instances = self._instances[key] = concurrency(state, spec)
        flight.state, flight.decision = state, decision
        flight.ahead, busy_s = state.load.start(model, decision.service_s)
        flight.wait_s = busy_s / instances
        flight.started_at = now
        self._send(backend_id, Call(model, rows, now, flight), self)

    def call_done(self, call: Call, error: GatewayError | None) -> None:
        flight: InFlight = call.token  # type: ignore[assignment]
        now = self._clock.now()
        state, model = flight.state, call.model
        state.load.end(model, flight.decision.service_s)
        if error is None:
            elapsed = now - flight.started_at
            self.fleet.record_success(state)
            backend_id = flight.decision.backend_id
            assert backend_id is not None  # a call went only where a decision sent it
            instances = self._instances[(backend_id, model)]
            held_s = self._departures.held_s(backend_id, model, instances, flight.started_at, now)
            sample = service_sample(elapsed, flight.wait_s, flight.ahead, held_s)
            self.estimator.observe(backend_id, model, call.rows, sample)
            queue = self.queues[model]
            queue.record_service(elapsed)
            queue.note_completion(now)
            tier = self._tiers[backend_id]
            if self.cpu_stage.after_s > 0.0:
                for item in flight.batch.items:
                    request = item.payload
                    request.backend, request.tier = backend_id, tier
                    self._end(request, now, "ok")
            else:  # what _end does, without a call per request
                finished = self._finished
                for item in flight.batch.items:
                    request = item.payload
                    request.backend, request.tier = backend_id, tier
                    request.finished_at, request.outcome = now, "ok"
                    finished(request)
            self.in_flight[model] -= 1
            self.step(model, now)
            return
        self.fleet.record_failure(state, error)
        if error.retryable and now < flight.deadline:
            self._place(flight, now)  # the next-best backend, as the live runner retries
        else:
            self._batch_over(flight.batch, now, "failed", model)

    def _batch_over(self, batch: Batch[SimRequest], now: float, outcome: str, model: str) -> None:
        for item in batch.items:
            self._end(item.payload, now, outcome)
        self.in_flight[model] -= 1
        self.step(model, now)

    def _end(self, request: SimRequest, now: float, outcome: str) -> None:
        after = self.cpu_stage.after_s
        if after > 0.0 and outcome == "ok":
            now = self.cpu.serve(now, after)  # the reply waits for this process's CPU
        request.finished_at = now
        request.outcome = outcome
        self._finished(request)
