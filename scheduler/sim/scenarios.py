"""Named scenarios: fleets, models and workloads the simulator ships with.

The base fleet mixes two GPU generations and a CPU pool: ``fast`` GPUs
(fixed 6 ms + 0.4 ms a row per batch), ``slow`` ones (15 ms + 1.5 ms a row),
and CPU workers (20 ms + 4 ms a row). Three models share it with different
SLOs and arrival shapes: ``vision`` (Poisson, 100 ms), ``text`` (bursty
on/off, 60 ms), ``rank`` (diurnal ramp, 4 rows a request, 250 ms).
``stall``: one fast GPU runs eight times slower from 2 s to 6 s, then
recovers, over 30 s: the estimate learnt during the stall bars it until the
estimator's stale sweep (every ``stale_estimate_s``, 10 s) relaxes it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from scheduler.config import SchedulerConfig
from scheduler.placement import Tier
from scheduler.sim.cpu import CpuStage
from scheduler.sim.devices import DeviceSpec, DeviceType, Failure
from scheduler.sim.engine import Scenario, SimModel
from scheduler.sim.workload import ModelLoad, generate, read_trace

FAST = DeviceType("fast-gpu", fixed_s=0.006, per_row_s=0.0004)
SLOW = DeviceType("slow-gpu", fixed_s=0.015, per_row_s=0.0015)
CPU = DeviceType("cpu", fixed_s=0.020, per_row_s=0.004, tier=Tier.CPU)

#: ``--scenario stall``: when gpu0000 stalls (start and end, virtual seconds), and how slow.
STALL_S = (2.0, 6.0)
STALL_FACTOR = 8.0

MODELS = (
    SimModel("vision", max_batch_size=16),
    SimModel("text", max_batch_size=16),
    SimModel("rank", max_batch_size=32),
)


def base_loads(gpus: int) -> tuple[ModelLoad, ...]:
    """Traffic at which, at scale 1, the baselines keep ``gpus`` GPUs of the base mix ~90% busy."""
    per_gpu = 285.0
    return (
        ModelLoad("vision", rate_per_s=per_gpu * gpus * 0.45, slo_s=0.100),
        ModelLoad("text", rate_per_s=per_gpu * gpus * 0.35, slo_s=0.060, shape="bursty"),
        ModelLoad(
            "rank",
            rate_per_s=per_gpu * gpus * 0.05,
            slo_s=0.250,
            rows=4,
            shape="diurnal",
            period_s=10.0,
        ),
    )


def fleet(gpus: int, cpu_workers: int = 4, failures: bool = False) -> list[DeviceSpec]:
    """Half fast and half slow GPUs, one CPU pool; with ``failures``, some die,
    hang or slow down for a while and then recover."""
    devices = []
    for i in range(gpus):
        kind = FAST if i % 2 == 0 else SLOW
        devices.append(DeviceSpec(f"gpu{i:04d}", kind))
    devices.append(DeviceSpec("cpu", CPU, instances=cpu_workers))
    if failures:
        plan = {
            0: (Failure("dead", 2.0, 5.0),),
            2: (Failure("hung", 3.0, 5.0),),
            4: (Failure("slow", 1.0, 6.0, factor=5.0),),
            1: (Failure("slow", 2.0, 7.0, factor=3.0),),
        }
        for j in range(gpus):  # the same share of the fleet fails at any size
            windows = plan.get(j % 16)
            if windows is not None:
                devices[j] = replace(devices[j], failures=windows)
    return devices


def build(
    name: str = "default",
    *,
    gpus: int = 16,
    scale: float = 1.0,
    duration_s: float = 8.0,
    replicas: int = 1,
    failures: bool = False,
    telemetry_lag_s: float = 0.0,
    telemetry_interval_s: float = 0.5,
    seed: int = 0,
    trace: Path | None = None,
    cold: bool = False,
    gateway_cpu: CpuStage | None = None,
    requests: int | None = None,
    stall: bool = False,
    stale_sweep: bool = True,
) -> Scenario:
    """A scenario of the base mix; ``trace`` replays a recorded workload instead;
    ``requests`` runs exactly that many: the traffic is drawn over a doubling
    span until there are enough, and cut after the ``requests``-th arrival."""
    loads = base_loads(gpus)
    if trace is not None:
        arrivals = read_trace(trace, {load.model: load.slo_s for load in loads})
        duration_s = max((a.at_s for a in arrivals), default=0.0) + 0.001
    else:
        # One past ``requests`` is enough to tell whether the traffic was cut.
        limit = None if requests is None else requests + 1
        arrivals = generate(loads, duration_s, seed=seed, scale=scale, limit=limit)
        while requests is not None and 0 < len(arrivals) < requests:
            duration_s *= 2
            arrivals = generate(loads, duration_s, seed=seed, scale=scale, limit=limit)
        if requests is not None and len(arrivals) > requests:
            arrivals = arrivals[:requests]
            duration_s = arrivals[-1].at_s + 0.001
    devices = fleet(gpus, failures=failures)
    if stall:  # the first fast GPU runs STALL_FACTOR times slower for a while, then recovers
        devices[0] = replace(devices[0], failures=(Failure("slow", *STALL_S, STALL_FACTOR),))
    if cold:  # servers that start with the run: no statistics to seed estimates from
        devices = [replace(d, warm=False) for d in devices]
    return Scenario(
        name=name + ("_cold" if cold else "") + ("" if stale_sweep else "_nosweep"),
        devices=devices,
        models=MODELS,
        arrivals=arrivals,
        duration_s=duration_s,
        replicas=replicas,
        telemetry_lag_s=telemetry_lag_s,
        telemetry_interval_s=telemetry_interval_s,
        seed=seed,
        config=SchedulerConfig(),
        gateway_cpu=gateway_cpu or CpuStage(),
        stale_sweep=stale_sweep,
    )


#: The named scenarios of ``python -m scheduler.sim --scenario NAME``.
SCENARIOS: dict[str, Callable[..., Scenario]] = {
    "default": lambda **kw: build("default", **kw),
    "failures": lambda **kw: build("failures", failures=True, **kw),
    "replicas": lambda **kw: build("replicas", **{"replicas": 4, "telemetry_lag_s": 0.25, **kw}),
    # One GPU stalls and recovers: what the estimator's stale sweep gives back
    # (compare with ``--no-stale-sweep``).
    "stall": lambda **kw: build("stall", **{"stall": True, "duration_s": 30.0, **kw}),
    "large": lambda **kw: build("large", **{"gpus": 1000, "duration_s": 2.0, **kw}),
    # The scale check: 1,000 GPUs and exactly 1,000,000 requests (~4 s of traffic).
    "million": lambda **kw: build("million", **{"gpus": 1000, "requests": 1_000_000, **kw}),
}
