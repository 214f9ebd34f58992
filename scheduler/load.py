"""How much a backend can take at once, and what a finished call says about
its service time: the small pieces of arithmetic placement's inputs rest on."""

from __future__ import annotations

from scheduler.fleet import BackendState
from scheduler.spec import ModelSpec


def service_sample(elapsed_s: float, wait_s: float, ahead: int) -> float:
    """The service part of a call's latency, for the estimator.

    A call that joined ``ahead`` others waited behind them inside the backend;
    learning its whole latency as "service time" would feed queueing back into
    the queue estimate and run away under load. Take off the wait that was
    predicted at dispatch (errors there correct themselves: too high a wait
    lowers the estimate, which lowers the next predicted wait), and never go
    below an even share of the latency among the calls it queued with.
    """
    return max(elapsed_s - wait_s, elapsed_s / (ahead + 1))


def concurrency(state: BackendState, spec: ModelSpec) -> int:
    """Model instances a backend runs in parallel: Triton's instance_group
    counts, or else the workers the backend declares."""
    own = state.backend.models().get(spec.name, spec)
    groups = own.config.get("instance_group") if own.config else None
    if groups:
        return max(1, sum(int(g.get("count", 1)) for g in groups))
    return state.backend.workers
