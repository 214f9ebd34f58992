"""The incremental candidate tables (``scheduler.candidates``) against the old
per-batch builder (``candidates_reference.py``), over random sequences of state
changes (hypothesis): breakers, drains, discovery, calls in flight, estimates,
telemetry snapshots and the clock. Every column must match, bit for bit."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.backends.base import Device, DeviceKind
from scheduler.candidates import CandidateTables
from scheduler.clock import ManualClock
from scheduler.config import SchedulerConfig
from scheduler.errors import BackendUnavailable
from scheduler.estimator import ServiceTimeEstimator
from scheduler.fleet import Fleet
from scheduler.health import BreakerConfig
from scheduler.load import concurrency
from scheduler.placement import Candidates, Tier, accelerators_with_room, telemetry_age
from scheduler.registry import ModelRegistry
from scheduler.spec import ModelSpec
from scheduler.telemetry.snapshot import BackendLoad, DeviceSnapshot, TelemetrySnapshot
from tests.unit.candidates_reference import ReferenceBuilder
from tests.unit.test_scheduler import DOUBLE

GIB = 1024**3
MAX_AGE_S = 5.0


class UrlBackend:
    """A backend with a Triton-like id and URL; never called."""

    def __init__(self, index: int, host: str, instances: int) -> None:
        self.url = f"{host}:{8001 + index}"
        self._id = f"triton@{self.url}"
        self.spec = dataclasses.replace(DOUBLE, config={"instance_group": [{"count": instances}]})

    @property
    def id(self) -> str:
        return self._id

    @property
    def device(self) -> Device:
        return Device(DeviceKind.GPU, host=self.url)

    @property
    def tier(self) -> Tier:
        return Tier.ACCELERATOR

    @property
    def endpoint(self) -> str:
        return self.url

    @property
    def workers(self) -> int:
        return 1

    def service_time_hints(self) -> Sequence[tuple[str, int, float]]:
        return ()

    def models(self) -> Mapping[str, ModelSpec]:
        return {"double": self.spec}

    async def start(self) -> None:
        return None

    async def infer(self, *args: object, **kwargs: object) -> dict[str, np.ndarray]:
        raise NotImplementedError

    async def health(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None


def same(a: Candidates, b: Candidates, now: float, ages: list[float]) -> None:
    """``a`` (from the tables) holds what ``b`` (rebuilt from scratch) holds,
    and states the telemetry ages the reference worked out (``ages``) at ``now``."""
    assert a.backend_ids == b.backend_ids
    assert a.accelerator_ok is not None
    room = accelerators_with_room(a.tier, a.memory_ok, a.load_ok)
    np.testing.assert_array_equal(a.accelerator_ok, room, err_msg="accelerator_ok")
    assert a.penalty is not None
    blocked = np.isinf(a.penalty)
    np.testing.assert_array_equal(blocked, ~(b.available & room), err_msg="blocked")
    np.testing.assert_array_equal(np.isnan(a.penalty), ~blocked, err_msg="penalty")
    for name in ("tier", "available", "memory_ok", "load_ok", "queued_s", "service_s"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    np.testing.assert_array_equal(a.sampled_at, b.sampled_at, err_msg="sampled_at")
    stated = [telemetry_age(a, row, now) for row in range(len(a.backend_ids))]
    np.testing.assert_array_equal(stated, ages, err_msg="age")


@st.composite
def readings(draw: st.DrawFn, ids: list[str], now: float) -> TelemetrySnapshot:
    """Devices (some stale, some from the future, some unknown) and queue reports."""
    ages = st.sampled_from([0.0, 1.0, MAX_AGE_S, 4.5, 6.0, -0.5])
    devices: dict[str, DeviceSnapshot] = {}
    for backend_id in ids:
        for j in range(draw(st.integers(0, 2))):
            device_id = f"{backend_id}:GPU-{j}"
            free = draw(st.none() | st.sampled_from([0, 2 * GIB, 3 * GIB, 40 * GIB]))
            devices[device_id] = DeviceSnapshot(
                device_id,
                draw(st.sampled_from(["gpu", "gpu", "cpu"])),
                "triton-metrics",
                now - draw(ages),
                memory_free_bytes=free,
                utilization=draw(st.none() | st.sampled_from([0.1, 0.98, 0.99])),
            )
    for j in range(draw(st.integers(0, 2))):
        devices[f"nvml:GPU-{j}"] = DeviceSnapshot(
            f"nvml:GPU-{j}",
            "gpu",
            "nvml",
            now - draw(ages),
            memory_free_bytes=draw(st.none() | st.just(GIB)),
            utilization=draw(st.none() | st.just(0.995)),
        )
    loads = {
        b: BackendLoad(b, now - draw(ages), pending_requests={"double": draw(st.integers(0, 3))})
        for b in ids
        if draw(st.booleans())
    }
    return TelemetrySnapshot(devices=devices, loads=loads, taken_at=now)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), n=st.integers(1, 6), footprint=st.sampled_from([0, GIB]))
def test_candidate_tables_match_a_rebuild_from_scratch(
    data: st.DataObject, n: int, footprint: int
) -> None:
    clock = ManualClock(50.0)
    hosts = ["127.0.0.1", "10.0.0.9", "localhost"]
    backends = [
        UrlBackend(i, data.draw(st.sampled_from(hosts)), data.draw(st.integers(0, 3)))
        for i in range(n)
    ]
    cpu = {b.id for b in backends if data.draw(st.booleans())}
    config = SchedulerConfig(
        telemetry_max_age_s=MAX_AGE_S,
        model_memory_bytes={"double": footprint},
        memory_headroom_bytes=GIB,
        max_in_flight_per_backend=2,
        max_gpu_utilization=0.98,
        breaker=BreakerConfig(failure_threshold=2, base_backoff_s=1.0),
    )
    fleet = Fleet(
        list(backends),
        clock=clock,
        tier_of=lambda b: Tier.CPU if b.id in cpu else Tier.ACCELERATOR,
        breaker=config.breaker,
    )
    registry = ModelRegistry()
    registry.rebuild(fleet.backends())
    estimator = ServiceTimeEstimator()
    current: list[TelemetrySnapshot | None] = [None]
    tables = CandidateTables(config, fleet, registry, estimator, lambda: current[0])
    reference = ReferenceBuilder(config)
    spec, _ = registry.resolve("double")
    ids = [b.id for b in backends]
    states = list(fleet)
    for state in states:
        state.discovered = True
    ops = st.sampled_from(
        [
            "advance",
            "to_expiry",
            "snapshot",
            "fail",
            "trial",
            "succeed",
            "drain",
            "discover",
            "busy",
            "call",
            "observe",
            "seed",
            "forget",
            "invalidate",
        ]
    )
    for op in data.draw(st.lists(ops, min_size=10, max_size=40), label="ops"):
        state = data.draw(st.sampled_from(states), label="backend")
        now = clock.now()
        if op == "advance":
            clock.advance(data.draw(st.sampled_from([0.0, 0.5, 1.0, 2.5])))
        elif op == "to_expiry" and current[0] is not None:
            # Exactly where a reading turns stale, and just past it.
            stamps = [d.sampled_at for d in current[0].devices.values()]
            stamps += [x.sampled_at for x in current[0].loads.values()]
            later = [s + MAX_AGE_S - now for s in stamps if s + MAX_AGE_S > now]
            if later:
                clock.advance(
                    data.draw(st.sampled_from(later)) + data.draw(st.sampled_from([0, 1e-9]))
                )
        elif op == "snapshot":
            current[0] = data.draw(readings(ids, now), label="snapshot")
        elif op == "fail":
            error = BackendUnavailable("down", backend_id=state.id)
            fleet.record_failure(state, error)
        elif op == "trial":
            state.breaker.allows(now)
        elif op == "succeed":
            fleet.record_success(state)
        elif op == "drain":
            state.drained = not state.drained
        elif op == "discover":
            state.discovered = not state.discovered
        elif op == "busy":
            seconds = data.draw(st.sampled_from([0.0, 0.004, 0.03]))
            state.load.set("double", state.load.calls("double"), seconds)
        elif op == "call":
            model = data.draw(st.sampled_from(["double", "other"]))
            if data.draw(st.booleans(), label="starts") or not state.load.calls(model):
                state.load.start(model, data.draw(st.sampled_from([0.0, 0.004])))
            else:
                state.load.end(model, data.draw(st.sampled_from([0.0, 0.004])))
        elif op == "observe":
            rows = data.draw(st.sampled_from([1, 3, 8]))
            estimator.observe(state.id, "double", rows, data.draw(st.sampled_from([0.002, 0.01])))
        elif op == "seed":
            estimator.seed(state.id, "double", data.draw(st.sampled_from([1, 4])), 0.005)
        elif op == "forget":
            estimator.forget(state.id)
        elif op == "invalidate":
            tables.invalidate()
        now = clock.now()
        rows = data.draw(st.sampled_from([1, 2, 8]), label="rows")
        expected = reference.build(spec, rows, states, estimator, current[0], now)
        same(tables.gather("double", rows, now), expected, now, reference.ages)
        tried = {s.id for s in states if data.draw(st.booleans(), label="tried")}
        kept = [s for s in states if s.id not in tried]
        same(
            tables.gather("double", rows, now, exclude=tried),
            reference.build(spec, rows, kept, estimator, current[0], now),
            now,
            reference.ages,
        )
        instances = sum(concurrency(s, spec) for s in states if s.usable(now))
        assert tables.capacity("double", now) == instances


def test_a_removed_backends_late_call_counts_against_no_other_backend() -> None:
    """A call still in flight on a backend that left the fleet ends after the
    tables were rebound: its hook, from the earlier bind, must not count it
    out of the slot another backend holds now."""
    backends = [UrlBackend(i, "10.0.0.9", 1) for i in range(3)]
    config = SchedulerConfig(max_in_flight_per_backend=1)
    fleet = Fleet(list(backends), clock=ManualClock(0.0), tier_of=lambda b: Tier.ACCELERATOR)
    for state in fleet:
        state.discovered = True
    registry = ModelRegistry()
    registry.rebuild(fleet.backends())
    tables = CandidateTables(config, fleet, registry, ServiceTimeEstimator(), lambda: None)
    tables.gather("double", 1, 0.0)  # bound: one slot per backend
    leaving = next(iter(fleet))
    leaving.load.start("double", 0.0)
    fleet._states.pop(leaving.id)  # as Fleet.remove does, without awaiting the close
    registry.rebuild(fleet.backends())
    tables.invalidate()
    before = tables.gather("double", 1, 0.0)  # rebound: the slots shifted down by one
    assert bool(before.load_ok.all())
    leaving.load.end("double", 0.0)  # its late call ends
    after = tables.gather("double", 1, 0.0)
    assert bool(after.load_ok.all())
    assert tables._in_flight == [0, 0]
