"""The simulated half of ``loadtests.sim_vs_real``: the real run's fleet and
send times in ``scheduler.sim``, each device costing what the live gateway
measured a call of it to take, and the rule a figure is compared by.

``within``: a latency agrees when the two are within 15% of the larger; a
backend's share likewise, except when both are under 10%, where it agrees
within 2 points. The exception is the sampling noise of a small share: a run
answers ~550-600 requests, so a share near 5% has a binomial standard error
of ~0.9 points (``share_noise``) before the machine adds any of its own, and
15% of it (0.75 points) would ask the simulator to be closer to one run than
two runs of the same workload are to each other. 2 points is ~2 standard
errors there; at 10% the relative rule allows 1.5 points, ~1.2 of them.
``loadtests.sim_vs_real_dist`` measures that spread between real runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np
import numpy.typing as npt

from loadtests.sim_vs_real_live import FleetMs
from scheduler.placement import Tier
from scheduler.sim.cpu import CpuStage
from scheduler.sim.devices import DeviceSpec, DeviceType
from scheduler.sim.engine import Scenario, SimModel, Simulation
from scheduler.sim.report import measure
from scheduler.sim.workload import Arrival


def simulated_run(
    sent_at_s: list[float],
    fleet: FleetMs,
    device_ms: Mapping[str, float],
    path_ms: list[float],
    cpu: CpuStage | None = None,
    deadline_s: float = 10.0,
    path_before: float = 0.5,
    path_span_s: float | None = None,
    sweep_phase_s: float = 0.0,
    stale_sweep: bool = True,
    estimates: Mapping[str, float] | None = None,
    reply_ms: Mapping[str, float] | None = None,
    simulation: Callable[[Scenario, str], Simulation] = Simulation,
) -> dict[str, object]:
    """The same fleet in the simulator, fed the real run's arrivals
    (``sent_at_s``) with the same deadline. ``device_ms`` by device (what a
    call costs beyond the configured device time: the round trip, the Python
    backend's IPC, the thread hand-off) is added to that device's fixed cost,
    where it occupies the device (the gateway sends a backend its next batch
    only when the last one is back, so the device is taken for the whole
    call); each request also gets a draw from
    ``path_ms``, what the path (client, gRPC, the gateway, a shared machine's
    scheduling noise) added to requests that queued nowhere. ``path_before``
    of that draw delays the request's arrival at the batch queue while its
    deadline stays anchored at the send time (the client's deadline runs
    from the send: time lost on the way in is time the policy no longer has,
    which decides spills to the CPU tier), and the rest of a second, separate
    draw is added to its reply. With ``path_span_s``, ``path_ms`` is a time
    series over that many seconds (the calibration run's requests in the
    order they were answered) and the draws are not random: a request takes
    the sample at its send time, its reply the one at its finish time (both
    wrapped around the span), so a burst of the shared machine's noise
    delays neighbouring requests together, as it does in a real run.
    ``sweep_phase_s``: how long the live gateway had been up when its load
    began, so the estimator's stale sweeps fall where the gateway's did
    (``stale_sweep=False`` leaves them out). ``estimates``: ms by device, the
    live estimator's service times for a batch of one when the load began;
    the simulated estimator starts from them (as measured, not as seeds).
    ``reply_ms``: ms by device, how long after the device is done with a
    call the gateway has its answer, the device free meanwhile
    (``DeviceSpec.reply_s``; see ``replies``). ``simulation`` makes the
    simulation (a subclass that counts what it does, for a diagnosis)."""

    def kind(name: str, cost: tuple[float, float], tier: Tier) -> DeviceType:
        return DeviceType(name, (cost[0] + device_ms[name]) / 1e3, cost[1] / 1e3, tier=tier)

    def reply_s(name: str) -> float:
        return (reply_ms or {}).get(name, 0.0) / 1e3

    devices = [
        DeviceSpec("fast", kind("fast", fleet.fast, Tier.ACCELERATOR), reply_s=reply_s("fast")),
        DeviceSpec("slow", kind("slow", fleet.slow, Tier.ACCELERATOR), reply_s=reply_s("slow")),
        DeviceSpec(
            "cpu",
            kind("cpu", fleet.cpu, Tier.CPU),
            instances=fleet.cpu_workers,
            reply_s=reply_s("cpu"),
        ),
    ]
    rng = np.random.default_rng(0)
    series = np.array(path_ms) / 1e3

    def noise_at(times_s: list[float]) -> npt.NDArray[np.float64]:
        if path_span_s is None:
            return rng.choice(series, size=len(times_s))
        at = (np.array(times_s) / path_span_s * series.size).astype(np.int64) % series.size
        drawn: npt.NDArray[np.float64] = series[at]
        return drawn

    path_s = noise_at(sent_at_s)
    before_s = path_s * path_before
    arrivals = sorted(
        Arrival(t + ahead, "gpu_sim", 1, deadline_s - ahead)
        for t, ahead in zip(sent_at_s, before_s.tolist(), strict=True)
    )
    duration_s = max((a.at_s for a in arrivals), default=0.0) + 0.001
    scenario = Scenario(
        "sim_vs_real",
        devices,
        [SimModel("gpu_sim", max_batch_size=64)],
        arrivals,
        duration_s,
        noise_sigma=0.05,
        gateway_cpu=cpu or CpuStage(),
        admission=True,  # the live gateway refuses what its queue would make late
        sweep_phase_s=sweep_phase_s,
        stale_sweep=stale_sweep,
        estimates=tuple((name, "gpu_sim", 1, ms / 1e3) for name, ms in (estimates or {}).items()),
    )
    sim = simulation(scenario, "predicted_finish_time")
    requests = sim.run()
    result = measure(sim, requests, 0.0)
    # The deadline is the send time plus ``deadline_s``: latency runs from the send.
    answered = [r for r in requests if r.outcome == "ok"]
    latency_ms = np.array([(r.finished_at - (r.deadline - deadline_s)) * 1e3 for r in answered])
    after_s = noise_at([r.finished_at for r in answered]) * (1 - path_before)
    latency_ms += after_s * 1e3
    # The client gives up at its deadline: a reply the path noise pushes past
    # it is a DEADLINE_EXCEEDED there, not a latency.
    latency_ms = latency_ms[latency_ms <= deadline_s * 1e3]
    outcomes: dict[str, int] = {}
    for r in requests:
        outcomes[r.outcome] = outcomes.get(r.outcome, 0) + 1
    return {
        "requests": result.requests,
        "ok": int(latency_ms.size),
        "outcomes": outcomes,
        "p50_ms": float(np.percentile(latency_ms, 50)),
        "p99_ms": float(np.percentile(latency_ms, 99)),
        "share": {k: result.share.get(k, 0.0) for k in ("fast", "slow", "cpu")},
        "gateway_cpu_utilisation": sim.replicas[0].cpu.utilisation(duration_s),
        "servers": {
            name: {
                "rows_per_batch": d.served_rows / max(1, d.calls),
                "queue_ms": d.waited_s / max(1, d.calls) * 1e3,
            }
            for name, d in sim.devices.items()
            if name != "cpu"
        },
        # A call as the simulated gateway times it: queued, run, and its reply.
        "call_ms": {
            name: (d.waited_s + d.busy_s) / d.calls * 1e3 + reply_s(name) * 1e3
            for name, d in sim.devices.items()
            if d.calls
        },
    }


def overheads(
    fleet: FleetMs,
    real: Mapping[str, object],
    triton_ms: float,
    how: str,
) -> dict[str, float]:
    """What each simulated device's call costs beyond its configured time.

    ``learnt``: from the measured run ``real``, the largest of three figures
    for a call of one row, less its configured cost: the gateway's mean call
    time less Triton's mean queue time a request (how long the gateway sees a
    call take once the server starts it: the round trip and the gateway's
    own event-loop delays included — what keeps a backend's in-flight count
    up, which is what the policy's queued time reads); the live estimator's
    median service time (what the policy compared with the time left); and
    Triton's compute time a request (the floor: the estimator takes the wait
    it predicted off each call, so under queueing it can learn less than the
    device spent). A device with none falls back to ``triton_ms``.
    ``triton``: ``triton_ms`` for every device (Triton's compute less the
    configured cost in the calibration run, as before).
    ``measured``: as ``learnt`` without the estimator's figure, which is the
    gateway's belief about the device, not what the device costs: a live
    estimate inflated by one slow call (a stall of the shared machine at the
    end of the warm-up) made a 92 ms server a 254 ms one in the simulator,
    which then sent it nothing where the real gateway, once the belief was
    relaxed and re-measured, sent it 5%. The simulated gateway starts from the
    live estimator's state instead (``simulated_run``'s ``estimates``) and
    learns from there, as the live one did.
    ``split``: the device's own part of ``measured`` only, Triton's compute
    time a request (the CPU pool, which has no server statistics, its
    configured time); the rest of the call is its reply (``replies``)."""
    if how == "split":
        return {
            name: max(0.0, ms - _cost(fleet, name)) for name, ms in _compute_ms(fleet, real).items()
        }
    learnt_ms: Mapping[str, float] = real.get("learnt_service_ms", {})  # type: ignore[assignment]
    call_ms: Mapping[str, float] = real.get("call_ms", {})  # type: ignore[assignment]
    servers: Mapping[str, Mapping[str, float]] = real.get("servers", {})  # type: ignore[assignment]
    out = {}
    for name, cost in (("fast", fleet.fast), ("slow", fleet.slow), ("cpu", fleet.cpu)):
        server = servers.get(name, {})
        seen = [
            learnt_ms.get(name, 0.0) if how == "learnt" else 0.0,
            server.get("compute_ms", 0.0),
            call_ms.get(name, 0.0) - server.get("queue_ms", 0.0),
        ]
        if how != "triton" and max(seen) > 0.0:
            out[name] = max(0.0, max(seen) - cost[0] - cost[1])
        else:
            out[name] = triton_ms
    return out


def _cost(fleet: FleetMs, name: str) -> float:
    """A device's configured cost for a call of one row, ms."""
    fixed, per_row = getattr(fleet, name)
    return float(fixed + per_row)


def _compute_ms(fleet: FleetMs, real: Mapping[str, object]) -> dict[str, float]:
    """What a call of one row occupies each device, ms: Triton's compute time
    a request; the CPU pool's configured time (a worker sleeps it)."""
    servers: Mapping[str, Mapping[str, float]] = real.get("servers", {})  # type: ignore[assignment]
    out = {"cpu": _cost(fleet, "cpu")}
    for name in ("fast", "slow"):
        compute = servers.get(name, {}).get("compute_ms", 0.0)
        out[name] = compute if compute > 0.0 else _cost(fleet, name)
    return out


def replies(fleet: FleetMs, real: Mapping[str, object]) -> dict[str, float]:
    """Each device's reply time, ms: the gateway's mean call time less the
    server's queue and compute time a request (the CPU pool: less its
    configured time). A Triton server runs a call queued behind another as
    soon as the first is done, so this part of the call (the answer's way
    back, the gateway's wake-up on it, and the request's way in, which the
    simulator charges here too) does not hold the device. 0 for a device the
    run never called."""
    call_ms: Mapping[str, float] = real.get("call_ms", {})  # type: ignore[assignment]
    servers: Mapping[str, Mapping[str, float]] = real.get("servers", {})  # type: ignore[assignment]
    compute = _compute_ms(fleet, real)
    out = {}
    for name in ("fast", "slow", "cpu"):
        queue = servers.get(name, {}).get("queue_ms", 0.0)
        call = call_ms.get(name, 0.0)
        out[name] = max(0.0, call - queue - compute[name]) if call > 0.0 else 0.0
    return out


def within(real: float, sim: float, share: bool = False) -> bool:
    if share and max(real, sim) < 0.10:
        return abs(real - sim) <= 0.02
    return abs(real - sim) <= 0.15 * max(abs(real), abs(sim), 1e-9)


def share_noise(share: float, answered: int) -> float:
    """The binomial standard error of a share of ``answered`` requests."""
    return math.sqrt(max(share * (1 - share), 0.0) / max(answered, 1))
