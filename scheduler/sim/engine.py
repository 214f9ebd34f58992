"""The discrete-event engine: a virtual clock, an event heap, devices and replicas.

Events are ``(time, seq, callback, args)`` in a heap; the clock (a real
``ManualClock``, the one the fleet's breakers read) jumps to each event's
time before its callback runs, so the scheduler code sees a monotonic clock
that only moves between events. Arrivals go to the replicas in turn (a
Kubernetes Service spreads connections much like that). Every
``telemetry_interval_s`` the devices are sampled the way Triton's metrics
endpoint reports them (queue length per model, memory); the sample becomes
visible to every replica ``telemetry_lag_s`` later — the shared signal next
to each replica's own in-flight counts. With ``gateway_cpu`` set, each
replica's process CPU is a FIFO stage in front of its batch queue and ahead
of each reply (``scheduler.sim.cpu``). A device with ``reply_s`` answers
that long after it is done with a call, and is free meanwhile. Every ``stale_estimate_s`` each
replica's estimator runs its ``relax_stale`` sweep, as the live dispatcher's
timer does (``Scenario.stale_sweep``).
"""

from __future__ import annotations

import collections
import gc
import heapq
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from operator import attrgetter
from typing import Any

from scheduler.batching.policy import BatchingPolicy
from scheduler.clock import ManualClock
from scheduler.config import SchedulerConfig
from scheduler.errors import BackendUnavailable, DeadlineExceeded, GatewayError
from scheduler.placement import Tier
from scheduler.sim.cpu import CpuStage
from scheduler.sim.devices import Call, DeviceSpec, SimBackend, SimDevice, noise_source
from scheduler.sim.replica import Replica, SimRequest
from scheduler.sim.workload import Arrival
from scheduler.spec import DataType, ModelSpec, TensorSpec
from scheduler.telemetry.snapshot import BackendLoad, DeviceSnapshot, TelemetrySnapshot

#: How long a dead device takes to refuse a call (a refused TCP connection).
REFUSE_S = 0.0005


@dataclass(frozen=True, slots=True)
class SimModel:
    """A model as the scenario serves it: batching limits and memory footprint."""

    name: str
    max_batch_size: int = 32
    max_queue_delay_us: int = 0
    memory_bytes: int = 0

    def spec(self) -> ModelSpec:
        tensor = TensorSpec("INPUT", DataType.FP32, (-1, 16))
        return ModelSpec(
            self.name,
            (tensor,),
            (TensorSpec("OUTPUT", DataType.FP32, (-1, 16)),),
            max_batch_size=self.max_batch_size,
        )

    def policy(self) -> BatchingPolicy:
        return BatchingPolicy(
            max_batch_size=self.max_batch_size, max_queue_delay_us=self.max_queue_delay_us
        )


@dataclass(frozen=True)
class Scenario:
    """Everything one simulated run needs but the routing policy."""

    name: str
    devices: Sequence[DeviceSpec]
    models: Sequence[SimModel]
    arrivals: Sequence[Arrival]
    duration_s: float
    replicas: int = 1
    telemetry_interval_s: float = 0.5
    telemetry_lag_s: float = 0.0
    noise_sigma: float = 0.05
    seed: int = 0
    config: SchedulerConfig = field(default_factory=SchedulerConfig)
    #: Each replica's own CPU (one FIFO server a process); off by default.
    gateway_cpu: CpuStage = field(default_factory=CpuStage)
    #: Refuse at the door what the queue would make late, as the live
    #: ``Batcher`` does (``batching.admission``); off by default: the named
    #: scenarios' recorded results were made without it.
    admission: bool = False
    #: Run each replica's estimator sweep (``relax_stale``) every
    #: ``config.stale_estimate_s`` of virtual time, as the live dispatcher does.
    stale_sweep: bool = True
    #: How long the live scheduler had been up when the run began: its sweeps
    #: fall at whole periods from its start, so the first here is at
    #: ``stale_estimate_s - sweep_phase_s`` (modulo the period).
    sweep_phase_s: float = 0.0
    #: (device, model, rows, seconds) each replica's estimator has measured
    #: when the run begins, as a live gateway's after its warm-up: they
    #: replace the devices' seeds (``service_time_hints``) for those buckets.
    estimates: tuple[tuple[str, str, int, float], ...] = ()


class SimClock(ManualClock):
    """The scheduler's ``ManualClock``, set straight to an event's time.

    ``advance(when - now)`` would add the difference and drift by a rounding
    error an event; ``set`` lands exactly on the event's time, never backwards.
    """

    def set(self, when: float) -> None:
        if when < self._now:
            raise ValueError("a monotonic clock cannot go backwards")
        self._now = when


#: An arrival's time, read in C (a sort key called once per request).
_arrival_time = attrgetter("at_s")


class Simulation:
    """One run of a scenario under one routing policy (see the module docstring)."""

    def __init__(self, scenario: Scenario, router: str) -> None:
        self.scenario = scenario
        self.router = router
        self.clock = SimClock()
        self._events: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self._noise = noise_source(scenario.seed + 1, scenario.noise_sigma)
        self.devices = {d.id: SimDevice(d) for d in scenario.devices}
        self.finished: list[SimRequest] = []
        self.snapshot: TelemetrySnapshot | None = None
        self._device_readings: dict[str, DeviceSnapshot] = {}
        self._loads: dict[str, BackendLoad] = {}
        footprints = {m.name: m.memory_bytes for m in scenario.models}
        config = scenario.config
        if any(footprints.values()):
            config = replace(config, model_memory_bytes=footprints)
        self._footprint = max(footprints.values(), default=0)
        specs = {m.name: m.spec() for m in scenario.models}
        policies = {m.name: m.policy() for m in scenario.models}
        self.replicas = [
            Replica(
                index=i,
                backends=[
                    SimBackend(d, [specs[n] for n in (d.models or tuple(specs))])
                    for d in scenario.devices
                ],
                config=config,
                policies=policies,
                router=router,
                clock=self.clock,
                telemetry=self._telemetry,
                send=self.send,
                at=self.at,
                finished=self.finished.append,
                seed=scenario.seed + 100 + i,
                cpu=scenario.gateway_cpu,
                admission=scenario.admission,
            )
            for i in range(scenario.replicas)
        ]
        for replica in self.replicas:
            for device_id, model, rows, seconds in scenario.estimates:
                replica.estimator.observe(device_id, model, rows, seconds)

    def _telemetry(self) -> TelemetrySnapshot | None:
        return self.snapshot

    def at(self, when: float, callback: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self._events, (when, next(self._seq), callback, args))

    def run(self) -> list[SimRequest]:
        """Play every arrival and let the work drain; the requests, finished.

        Arrivals are already in time order, so they are not pushed on the heap:
        the loop merges them with it, taking an arrival whenever it is due no
        later than the heap's first event (arrivals first on a tie, as when
        they were pushed first). The heap then holds only what is in progress,
        and each request's record is made when it arrives.

        The cyclic garbage collector is off while it plays: nothing made per
        request or per batch forms a reference cycle (the batch queue breaks
        the one between an item and its queue entry as the item leaves), so
        reference counting frees them, and each of the collector's full passes
        would otherwise walk every arrival and finished request, more per pass
        as the run goes on. (The simulation's own objects do form cycles, with
        their hooks; the collector takes them once it is back on.)
        """
        enabled = gc.isenabled()
        gc.disable()
        try:
            return self._play()
        finally:
            if enabled:
                gc.enable()

    def _play(self) -> list[SimRequest]:
        scenario = self.scenario
        submits = [r.submit for r in self.replicas]
        count = len(submits)
        arrivals = sorted(scenario.arrivals, key=_arrival_time)
        t = 0.0
        while t < scenario.duration_s:
            self.at(t, self._sample)
            t += scenario.telemetry_interval_s
        period = scenario.config.stale_estimate_s
        if scenario.stale_sweep and period > 0:
            t = period - scenario.sweep_phase_s % period
            while t < scenario.duration_s:
                self.at(t, self._sweep)
                t += period
        events, clock, pop = self._events, self.clock, heapq.heappop
        n, total = 0, len(arrivals)
        due = arrivals[0].at_s if total else math.inf
        current = clock.now()  # only this loop moves the clock
        while True:
            if events and events[0][0] < due:
                when, _, callback, args = pop(events)
                if when > current:
                    clock.set(when)
                    current = when
                callback(*args)
            elif n < total:
                a = arrivals[n]
                if due > current:
                    clock.set(due)
                    current = due
                submit = submits[n % count]
                n += 1
                due = arrivals[n].at_s if n < total else math.inf
                submit(SimRequest(a.at_s, a.model, a.rows, a.at_s + a.slo_s, a.slo_s), current)
            else:
                return self.finished

    def release(self) -> None:
        """Drop the per-request records, the arrivals and the finished requests,
        once they are measured.

        The simulation's own objects form reference cycles (``run``), so only
        the cyclic collector frees them, and its first passes once it is back
        on would walk everything they still hold: 0.45 s of CPU at 300,000
        requests against 0.05 s (``loadtests/sim_run_cpu.py``). Let go here,
        the records are freed by reference counting and the cycles left are
        the small ones of the simulated fleet.
        """
        self.finished.clear()
        self.scenario = replace(self.scenario, arrivals=())

    # -- devices -----------------------------------------------------------
    def send(self, device_id: str, call: Call, replica: Replica) -> None:
        device = self.devices[device_id]
        now = call.sent_at  # the replica sends at once
        failure = device.failure_at(now) if device.spec.failures else None
        if failure is not None and failure.kind == "dead":
            error = BackendUnavailable(f"{device_id}: connection refused", backend_id=device_id)
            self.at(now + REFUSE_S, replica.call_done, call, error)
            return
        if failure is not None and failure.kind == "hung":
            deadline = call.token.deadline  # type: ignore[attr-defined]
            error2: GatewayError = DeadlineExceeded(f"{device_id} did not answer in time")
            self.at(max(deadline, now), replica.call_done, call, error2)
            return
        model = call.model
        if device.running.get(model, 0) < device.spec.instances:
            self._start(device, call, replica, now)
        else:
            device.waiting.setdefault(model, collections.deque()).append((call, replica))

    def _start(self, device: SimDevice, call: Call, replica: Replica, now: float) -> None:
        device.running[call.model] = device.running.get(call.model, 0) + 1
        seconds = device.service_s(call.rows, now, next(self._noise))
        device.busy_s += seconds
        if device.active == 0:  # what device.started does, without the call
            device.active_since = now
        device.active += 1
        device.calls += 1
        device.waited_s += now - call.sent_at
        call.started_at = now
        heapq.heappush(
            self._events, (now + seconds, next(self._seq), self._finish, (device, call, replica))
        )

    def _finish(self, device: SimDevice, call: Call, replica: Replica) -> None:
        now = self.clock.now()
        device.running[call.model] -= 1
        device.active -= 1  # what device.finished does, without the call
        if device.active == 0:
            device.occupied_s += now - device.active_since
        device.served_rows += call.rows
        waiting = device.waiting.get(call.model)
        if waiting:
            following, owner = waiting.popleft()
            self._start(device, following, owner, now)
        # The freed instance took the next call waiting before the answer
        # reaches the replica: a call the replica sends on hearing it must
        # queue behind those, not start beside them on one instance.
        reply_s = device.spec.reply_s
        if reply_s > 0.0:  # the answer is on its way back; the device is free now
            heapq.heappush(
                self._events, (now + reply_s, next(self._seq), replica.call_done, (call, None))
            )
        else:
            replica.call_done(call, None)

    def _sweep(self) -> None:
        """The live dispatcher's periodic ``relax_stale``, on each replica's estimator."""
        for replica in self.replicas:
            replica.estimator.relax_stale()

    # -- telemetry -----------------------------------------------------------
    def _sample(self) -> None:
        """Read every reachable GPU's metrics now; publish them after the lag."""
        now = self.clock.now()
        for device_id, device in self.devices.items():
            if device.spec.type.tier is not Tier.ACCELERATOR:
                continue
            failure = device.failure_at(now)
            if failure is not None and failure.kind in ("dead", "hung"):
                continue  # its metrics endpoint is down too: the reading ages out
            total = device.spec.type.memory_bytes
            self._device_readings[device_id] = DeviceSnapshot(
                device_id=f"{device_id}:GPU-0",
                kind="gpu",
                source="simulated",
                sampled_at=now,
                memory_total_bytes=total,
                memory_used_bytes=device.spec.used_bytes,
                memory_free_bytes=max(0, total - device.spec.used_bytes),
                # No utilization: Triton's metrics on these hosts have none, and a
                # saturated GPU would read ~1.0 and be excluded (max_gpu_utilization).
                utilization=None,
            )
            self._loads[device_id] = BackendLoad(
                device_id, now, pending_requests=device.pending_by_model()
            )
        snapshot = TelemetrySnapshot(
            {r.device_id: r for r in self._device_readings.values()}, dict(self._loads), now
        )
        lag = self.scenario.telemetry_lag_s
        if lag > 0:
            self.at(now + lag, self._publish, snapshot)
        else:
            self._publish(snapshot)

    def _publish(self, snapshot: TelemetrySnapshot) -> None:
        self.snapshot = snapshot


def busy_fraction(sim: Simulation, end_s: float) -> dict[str, float]:
    """Each device's share of time with at least one call running."""
    span = max(end_s, 1e-9)
    return {i: min(1.0, d.occupied_s / span) for i, d in sim.devices.items()}


__all__ = ["Scenario", "SimModel", "Simulation", "busy_fraction"]
