"""How much a backend can take at once, and what a finished call says about
its service time: the small pieces of arithmetic placement's inputs rest on."""

from __future__ import annotations

from collections import deque

from scheduler.fleet import BackendState
from scheduler.spec import ModelSpec


def service_sample(elapsed_s: float, wait_s: float, ahead: int, held_s: float) -> float:
    """The service part of a call's latency, for the estimator.

    A call that joined ``ahead`` others waited behind them inside the backend;
    learning its whole latency as "service time" would feed queueing back into
    the queue estimate and run away under load. Take off the wait that was
    predicted at dispatch (errors there correct themselves: too high a wait
    lowers the estimate, which lowers the next predicted wait), and never go
    below an even share of the latency among the calls it queued with.

    Then never above ``held_s``, the time the call can have held one of the
    backend's instances (``Departures.held_s``). The predicted wait alone
    does not see a stall: when a backend pauses, every call in flight there
    finishes late by the whole pause, and each would learn it as its own
    service time, so that one pause of S seconds with N calls in flight
    became N samples of S, an estimate of ~S and requests refused as too
    late long after the backend was well again. An instance holds one call
    at a time, so the pause is in the held time of only the first call per
    instance to finish after it; the calls behind it held theirs only since
    the one ahead of them left.
    """
    # min(max(...), held_s) in comparisons (the same float, without two
    # builtin calls): one sample per completion.
    sample = elapsed_s - wait_s
    share = elapsed_s / (ahead + 1)
    if share > sample:
        sample = share
    return held_s if held_s < sample else sample


class Departures:
    """When calls last left each (backend, model), to bound a call's service.

    A backend runs ``instances`` calls of a model at once, each instance one
    call at a time. A call that finishes now was running on an instance that
    took it either when the call arrived or when that instance's previous
    call left. When calls leave in the order they started, only the calls
    already running then (at most ``instances - 1``) can have left since, so
    that departure is one of the ``instances`` most recent before this one,
    and the call held its instance for at most ``now - max(start, the
    instances-th most recent departure)``: ``held_s``.

    What it gives, case by case:

    * One instance, steady load (a FIFO queue): the departure before this
      one is exactly when its service began, so ``held_s`` is its service
      time, whatever the arrival rate; when the backend is idle, ``start``
      is the later and ``held_s`` is the whole latency, again the service.
    * A stall (a GC pause, a hung second): the first call to leave per
      instance held it through the pause and learns it; every call after
      it learns only its own service. The estimator's EWMA takes one sample
      of the pause per instance instead of one per call in flight.
    * Several instances: ``instances`` calls started together and leaving
      together each find the ``instances``-th departure before their start,
      and learn their whole latency. In steady load, ``instances``
      departures span, on average, one service time.
    * Batches of different sizes: departures are counted per model, not per
      batch size; on one instance a batch that waited behind another learns
      the time since that one left, which is its own, whatever their sizes.
    * A slower backend: every departure interval is longer, so ``held_s``
      grows with the true service time from the first slow call on, and the
      sample (no larger than the latency less the predicted wait) follows.

    Where calls leave out of the order they started (a server that merges
    calls into one execution, instances whose calls differ in length), a
    call can learn less than its own time: what the backend gave it in
    throughput, which is what the waits predicted from these estimates need.
    Where this process sees only some of the backend's calls (other gateway
    replicas send there too), the intervals hold the others' calls as well
    and bound less; the sample is then never above the one without the bound.
    """

    __slots__ = ("_left",)

    def __init__(self) -> None:
        self._left: dict[tuple[str, str], deque[float]] = {}

    def held_s(
        self, backend_id: str, model: str, instances: int, start: float, now: float
    ) -> float:
        """How long a call from ``start`` to ``now`` can have held an instance;
        records its departure (call once per successful call)."""
        key = (backend_id, model)
        left = self._left.get(key)
        if left is None or left.maxlen != instances:
            left = self._left[key] = deque(maxlen=instances)
        since = start
        if len(left) == instances and left[0] > start:
            since = left[0]
        left.append(now)
        return now - since


def concurrency(state: BackendState, spec: ModelSpec) -> int:
    """Model instances a backend runs in parallel: Triton's instance_group
    counts, or else the workers the backend declares."""
    own = state.backend.models().get(spec.name, spec)
    groups = own.config.get("instance_group") if own.config else None
    if groups:
        return max(1, sum(int(g.get("count", 1)) for g in groups))
    return state.backend.workers
