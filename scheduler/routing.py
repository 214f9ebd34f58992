"""Routing policies behind one interface, chosen per model.

A ``Router`` is called with the batch's candidates, ``now`` and the batch's
deadline and returns a ``Decision``; it does no I/O and never reads a clock,
so the live ``BatchRunner`` and the simulator (``scheduler.sim``) call the
same objects. The default, ``predicted_finish_time``, is ``placement.place``
itself; the others are baselines to measure it against:

=========================  ==================================================
name                       chooses
=========================  ==================================================
predicted_finish_time      soonest predicted finish, CPU tier only as a spill
                           when no accelerator makes the deadline (``place``)
pft_no_spill               the same, never spilling to the CPU tier while an
                           accelerator serves the model
pft_no_deadline            the same, ignoring deadlines: never refuses a batch
                           as too late, spills only when no accelerator is up
round_robin                the next usable backend in turn
least_outstanding          the usable backend with the fewest calls in flight
power_of_two               of two usable backends drawn at random, the one
                           with fewer calls in flight (Ray Serve's router)
=========================  ==================================================

The baselines know nothing of service times: like the routers they stand
for, they see only which backends are up and how many calls each holds. They
prefer accelerators and fall back to the CPU tier only when no accelerator is
usable, so they are not handicapped by sending work to a slow tier at random.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Protocol

import numpy as np
import numpy.typing as npt

from scheduler.placement import Candidates, Decision, Tier, Verdict, place, telemetry_age

_ACCELERATOR = int(Tier.ACCELERATOR)

#: The default policy's name (``SchedulerConfig.routing``).
DEFAULT_ROUTER = "predicted_finish_time"


class Router(Protocol):
    """A routing policy: candidates of one batch, ``now``, its deadline -> a Decision.

    ``wants_outstanding``: the policy reads ``Candidates.outstanding`` (calls
    in flight per backend), which the candidate tables fill in only for such
    policies, so the default decision allocates nothing more than ``place``.
    """

    @property
    def name(self) -> str: ...

    @property
    def wants_outstanding(self) -> bool: ...

    def __call__(
        self, c: Candidates, *, now: float, deadline: float | None, unknown_service_s: float
    ) -> Decision: ...


class PredictedFinishTime:
    """The project's policy (``placement.place``), optionally without CPU
    spillover or without deadline awareness, for ablations.

    Without spillover the CPU rows are dropped whenever an accelerator row
    exists, so a batch an accelerator cannot finish in time is refused as
    too late instead of spilled. Without deadline awareness the deadline is
    not passed to ``place``: every usable backend counts as in time, so
    nothing is refused early and nothing spills while an accelerator is up.
    """

    wants_outstanding = False

    def __init__(self, *, spill: bool = True, deadline_aware: bool = True) -> None:
        self.spill = spill
        self.deadline_aware = deadline_aware
        if spill and deadline_aware:
            self.name = DEFAULT_ROUTER
        else:
            self.name = "pft_no_spill" if not spill else "pft_no_deadline"

    def __call__(
        self, c: Candidates, *, now: float, deadline: float | None, unknown_service_s: float
    ) -> Decision:
        if not self.spill and len(c.backend_ids) > 1:
            accelerators = c.tier == _ACCELERATOR
            if accelerators.any() and not accelerators.all():
                c = _rows(c, np.flatnonzero(accelerators))
        return place(
            c,
            now=now,
            deadline=deadline if self.deadline_aware else None,
            unknown_service_s=unknown_service_s,
        )


class _CountingRouter:
    """Shared by the baselines: the usable rows, accelerators first, and the Decision."""

    name = ""
    wants_outstanding = True

    def __call__(
        self, c: Candidates, *, now: float, deadline: float | None, unknown_service_s: float
    ) -> Decision:
        usable = c.available & c.memory_ok & c.load_ok
        pool = usable & (c.tier == _ACCELERATOR)
        if not pool.any():
            pool = usable
        rows = np.flatnonzero(pool)
        if len(rows) == 0:
            # Nothing usable: ``place`` words the refusal the same way for every policy.
            return place(c, now=now, deadline=deadline, unknown_service_s=unknown_service_s)
        outstanding = c.outstanding
        if outstanding is None:  # a caller that did not count: every backend looks idle
            outstanding = np.zeros(len(c.tier), np.int64)
        row = self.pick(rows, outstanding)
        service = c.service_s.item(row)
        if service != service:  # NaN: never seen on this backend
            service = unknown_service_s
        finish = c.queued_s.item(row) + service
        accelerator = c.tier.item(row) == _ACCELERATOR
        spilled = not accelerator and bool((usable & (c.tier == _ACCELERATOR)).any())
        backend_id = c.backend_ids[row]
        return Decision(
            Verdict.SPILLED if spilled else Verdict.PLACED,
            backend_id,
            finish,
            service,
            None,
            math.nan,
            f"{self.name}: {backend_id} ({int(outstanding[row])} in flight)",
            now,
            telemetry_age(c, row, now),
        )

    def pick(self, rows: npt.NDArray[np.intp], outstanding: npt.NDArray[np.int64]) -> int:
        raise NotImplementedError


class RoundRobin(_CountingRouter):
    """Each batch to the next usable backend in table order, wrapping around.

    The turn is the router's only state: a counter, advanced per decision.
    """

    name = "round_robin"

    def __init__(self) -> None:
        self._turn = 0

    def pick(self, rows: npt.NDArray[np.intp], outstanding: npt.NDArray[np.int64]) -> int:
        self._turn += 1
        return int(rows[self._turn % len(rows)])


class LeastOutstanding(_CountingRouter):
    """The usable backend with the fewest calls in flight; ties to the first."""

    name = "least_outstanding"

    def pick(self, rows: npt.NDArray[np.intp], outstanding: npt.NDArray[np.int64]) -> int:
        return int(rows[int(np.argmin(outstanding[rows]))])


class PowerOfTwo(_CountingRouter):
    """Two usable backends drawn at random; the one with fewer calls in flight.

    Ray Serve's default router does this (with probing and backoff around
    it, which a router with local counts does not need). ``seed`` makes the
    draws repeatable for the simulator and tests.
    """

    name = "power_of_two"

    def __init__(self, seed: int | None = None) -> None:
        self._random = random.Random(seed)

    def pick(self, rows: npt.NDArray[np.intp], outstanding: npt.NDArray[np.int64]) -> int:
        if len(rows) == 1:
            return int(rows[0])
        a, b = self._random.sample(range(len(rows)), 2)
        first, second = int(rows[a]), int(rows[b])
        return first if outstanding[first] <= outstanding[second] else second


def make_router(name: str, *, seed: int | None = None) -> Router:
    """A fresh router by name; ValueError naming the known ones otherwise."""
    if name == DEFAULT_ROUTER:
        return PredictedFinishTime()
    if name == "pft_no_spill":
        return PredictedFinishTime(spill=False)
    if name == "pft_no_deadline":
        return PredictedFinishTime(deadline_aware=False)
    if name == "round_robin":
        return RoundRobin()
    if name == "least_outstanding":
        return LeastOutstanding()
    if name == "power_of_two":
        return PowerOfTwo(seed)
    raise ValueError(f"unknown routing policy {name!r}; known: {', '.join(ROUTERS)}")


#: Every policy's name, the default first.
ROUTERS = (
    DEFAULT_ROUTER,
    "pft_no_spill",
    "pft_no_deadline",
    "round_robin",
    "least_outstanding",
    "power_of_two",
)


class RouterTable:
    """The router of each model: ``default`` unless ``by_model`` names another.

    One router object per policy name, so stateful baselines (the round-robin
    turn) are shared by the models that use them, as one router would be.
    """

    def __init__(self, default: str, by_model: Mapping[str, str], seed: int | None = None) -> None:
        names = {default, *by_model.values()}
        self._routers = {name: make_router(name, seed=seed) for name in sorted(names)}
        self.default = self._routers[default]
        self._by_model = {model: self._routers[name] for model, name in by_model.items()}

    def of(self, model: str) -> Router:
        return self._by_model.get(model, self.default)


def _rows(c: Candidates, rows: npt.NDArray[np.intp]) -> Candidates:
    return Candidates(
        tuple(c.backend_ids[i] for i in rows.tolist()),
        c.tier[rows],
        c.available[rows],
        c.memory_ok[rows],
        c.load_ok[rows],
        c.queued_s[rows],
        c.service_s[rows],
        c.sampled_at[rows],
        None,
        None if c.outstanding is None else c.outstanding[rows],
    )
