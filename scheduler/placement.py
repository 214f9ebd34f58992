"""Placement: which backend runs a batch. Pure: no I/O, ``now`` passed in.

The score is the predicted finish time: the work already queued on a backend
plus the predicted service time of this batch there, in seconds, so a slow CPU
and a fast GPU compete on one scale. Candidates are laid out as a struct of
numpy arrays (one row per backend) so one decision over many backends costs a
handful of vector operations (``loadtests/placement_bench.py``).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Collection
from typing import NamedTuple

import numpy as np
import numpy.typing as npt


class Tier(enum.IntEnum):
    """Accelerators are preferred; the CPU tier takes work only as a spill."""

    ACCELERATOR = 0
    CPU = 1


#: The accelerator tier as a plain int: numpy compares an int8 array with an
#: ``IntEnum`` member several times slower than with an ``int``.
_ACCELERATOR = int(Tier.ACCELERATOR)


class Verdict(enum.Enum):
    PLACED = "placed"
    SPILLED = "spilled"  # placed on the CPU tier because no accelerator could make it
    NO_CAPACITY = "no_capacity"  # nothing available: down, ejected, full or over limits
    TOO_LATE = "too_late"  # something is available, but nothing can finish in time

    # Members are singletons compared by identity, so identity hashing is
    # consistent with equality; ``Enum.__hash__`` is a Python function (it
    # hashes the name), and verdicts are counted in dicts once per decision.
    __hash__ = object.__hash__


class Candidates(NamedTuple):
    """One row per backend that serves the model, as the policy sees it now.

    ``available``: healthy, breaker admits, not drained. ``memory_ok`` and
    ``load_ok`` are already False only where *fresh* telemetry says so:
    unknown or stale telemetry never excludes a backend and never makes one
    look idle. ``service_s`` is NaN where nothing is known yet.
    ``sampled_at`` is when the reading behind a row's telemetry columns was
    taken (NaN: none); a decision states its age for the chosen row alone
    (``telemetry_age``), so no age column is computed per decision.

    ``accelerator_ok``, optional, is ``memory_ok & load_ok & (tier ==
    ACCELERATOR)`` precomputed by a producer that keeps it anyway (the
    candidate tables recompute it only when those columns change); ``place``
    computes it when it is None. It must agree with the other columns.

    ``outstanding``, optional, is the calls in flight on each backend (all
    models), filled in only for routers that count calls (``scheduler.routing``).

    ``penalty``, optional, is ``blocked_penalty(available, accelerator_ok)``:
    inf on the rows the fast path leaves out, NaN elsewhere, which ``place``
    applies to its scores with one ``fmax``, from a producer that keeps it
    between changes of those columns (the candidate tables); ``place``
    computes it when it is None. It must agree with the other columns.

    Borrowed, not owned: a producer may hand out its own arrays and write
    them again after the decision (the candidate tables lend ``queued_s`` and
    ``service_s`` so, saving an array a decision).
    A consumer reads the columns while it decides and copies what it keeps
    past that (a ``Decision`` holds plain floats); nothing writes into them.

    ``Candidates`` and ``Decision`` are named tuples (immutable, read by
    attribute) rather than frozen dataclasses: one of each is made per
    decision, and a frozen dataclass costs four times as much to make (its
    ``__init__`` goes through ``object.__setattr__`` field by field).
    """

    backend_ids: tuple[str, ...]
    tier: npt.NDArray[np.int8]
    available: npt.NDArray[np.bool_]
    memory_ok: npt.NDArray[np.bool_]
    load_ok: npt.NDArray[np.bool_]
    queued_s: npt.NDArray[np.float64]
    service_s: npt.NDArray[np.float64]
    sampled_at: npt.NDArray[np.float64]
    accelerator_ok: npt.NDArray[np.bool_] | None = None
    outstanding: npt.NDArray[np.int64] | None = None
    penalty: npt.NDArray[np.float64] | None = None


def telemetry_age(c: Candidates, row: int, now: float) -> float:
    """Seconds since the reading behind ``row``'s telemetry was taken at
    ``now`` (NaN: none); never below 0 (a reading stamped after ``now``)."""
    age = now - c.sampled_at.item(row)
    return 0.0 if age < 0.0 else age


def accelerators_with_room(
    tier: npt.NDArray[np.int8], memory_ok: npt.NDArray[np.bool_], load_ok: npt.NDArray[np.bool_]
) -> npt.NDArray[np.bool_]:
    """Rows that are accelerators with room (memory and load), availability aside."""
    room: npt.NDArray[np.bool_] = memory_ok & load_ok & (tier == _ACCELERATOR)
    return room


def blocked_penalty(
    available: npt.NDArray[np.bool_], accelerator_ok: npt.NDArray[np.bool_]
) -> npt.NDArray[np.float64]:
    """inf on the rows the fast path leaves out (not available, or not an
    accelerator with room), NaN elsewhere: ``np.fmax`` with it keeps a usable
    row's score (NaN too: it takes the non-NaN operand) and makes a blocked
    one inf."""
    penalty: npt.NDArray[np.float64] = np.where(available & accelerator_ok, np.nan, np.inf)
    return penalty


class Decision(NamedTuple):
    """The outcome and why, for traces, the admin view and error messages.

    ``reason`` words why. A backend chosen by predicted finish, the common
    case, leaves ``note`` empty and is worded from the fields when asked
    (``placed_reason``): a decision is made per batch, and only traces, the
    admin view and errors read why, so the two times formatted per decision
    are spared (most of the text's cost is the float formatting). Any other
    decision words its reason as it is made and keeps it in ``note``.
    """

    verdict: Verdict
    backend_id: str | None
    predicted_s: float  # finish time from now: queued work + service_s
    service_s: float  # the batch's own predicted service time on the chosen backend
    runner_up: str | None
    runner_up_s: float
    note: str  # the reason, when not the plain one worded from the fields ("")
    decided_at: float
    telemetry_age_s: float

    @property
    def reason(self) -> str:
        if self.note or self.backend_id is None:
            return self.note
        return placed_reason(self.backend_id, self.predicted_s, self.runner_up, self.runner_up_s)


def placed_reason(
    backend_id: str, predicted_s: float, runner_up: str | None, runner_up_s: float
) -> str:
    """Why ``backend_id`` was chosen by predicted finish, against the runner-up if any."""
    reason = f"{backend_id} predicted {predicted_s * 1e3:.2f} ms"
    if runner_up is not None:
        reason += f", runner-up {runner_up} {runner_up_s * 1e3:.2f} ms"
    return reason


def place(
    c: Candidates, *, now: float, deadline: float | None, unknown_service_s: float = 0.0
) -> Decision:
    """Choose the backend that finishes soonest, preferring accelerators that
    meet the deadline, spilling to the CPU tier only when none can.

    Without a deadline any available accelerator beats the CPU tier; with one,
    a backend counts only if its predicted finish is within the time left.
    When something is available but nothing can finish in time the verdict is
    TOO_LATE, so the caller fails fast instead of queueing doomed work.
    """
    # Fast path, the common case: an accelerator finishes in time and every
    # usable accelerator's service time is known. A handful of vector
    # operations, each ~0.5-2 µs (reductions such as ``any`` or ``min`` cost several
    # times an ``argmin``, so none is used). ``argmin`` returns the first NaN
    # if there is one, which sends the decision down the general path, where
    # unknown service times are filled in.
    if len(c.backend_ids) == 1:
        return _place_one(c, now=now, deadline=deadline, unknown_service_s=unknown_service_s)
    if not c.backend_ids:
        return _place(c, now=now, deadline=deadline, unknown_service_s=unknown_service_s)
    scores = c.queued_s + c.service_s
    penalty = c.penalty
    if penalty is None:
        room = c.accelerator_ok
        if room is None:
            room = accelerators_with_room(c.tier, c.memory_ok, c.load_ok)
        penalty = blocked_penalty(c.available, room)
    # The blocked rows become inf in place; ~30% fewer instructions than a
    # ``putmask`` of a boolean mask.
    np.fmax(scores, penalty, out=scores)
    best = int(scores.argmin())
    best_s = scores.item(best)
    left = np.inf if deadline is None else deadline - now
    if not best_s <= left or best_s == np.inf:
        return _place(c, now=now, deadline=deadline, unknown_service_s=unknown_service_s)
    # The rest of the usable accelerators are the in-time pool exactly when
    # they also finish in time; the runner-up is the best of them.
    scores[best] = np.inf
    second = int(scores.argmin())
    second_s = scores.item(second)
    best_id = c.backend_ids[best]
    if second_s <= left and second_s != np.inf:
        runner_up: str | None = c.backend_ids[second]
    else:
        runner_up, second_s = None, float("nan")
    # In field order, through tuple.__new__ (as ``candidates`` makes a Candidates).
    return tuple.__new__(
        Decision,
        (
            Verdict.PLACED,  # verdict
            best_id,  # backend_id
            best_s,  # predicted_s
            c.service_s.item(best),  # service_s
            runner_up,  # runner_up
            second_s,  # runner_up_s
            "",  # note: the reason is worded when read
            now,  # decided_at
            telemetry_age(c, best, now),  # telemetry_age_s
        ),
    )


def _place_one(
    c: Candidates, *, now: float, deadline: float | None, unknown_service_s: float
) -> Decision:
    """One candidate (a model on a single backend, the common case): the same
    decision as the general path, in plain Python (a vector operation costs
    more than the whole decision here). With one row there is nothing to
    prefer it over, so it is PLACED when usable and in time, whatever its tier."""
    service = c.service_s.item(0)
    if service != service:  # NaN: never seen on this backend
        service = unknown_service_s
    finish = c.queued_s.item(0) + service
    usable = c.available.item(0) and c.memory_ok.item(0) and c.load_ok.item(0)
    if not usable or (deadline is not None and not finish <= deadline - now):
        return _place(c, now=now, deadline=deadline, unknown_service_s=unknown_service_s)
    backend_id = c.backend_ids[0]
    return Decision(
        Verdict.PLACED,  # verdict
        backend_id,  # backend_id
        finish,  # predicted_s
        service,  # service_s
        None,  # runner_up
        math.nan,  # runner_up_s
        "",  # note: the reason is worded when read
        now,  # decided_at
        telemetry_age(c, 0, now),  # telemetry_age_s
    )


def _place(
    c: Candidates, *, now: float, deadline: float | None, unknown_service_s: float
) -> Decision:
    """The general case: unknown service times, spills to the CPU tier, refusals."""
    service = np.where(np.isnan(c.service_s), unknown_service_s, c.service_s)
    finish = c.queued_s + service
    usable = c.available & c.memory_ok & c.load_ok
    left = np.inf if deadline is None else deadline - now
    in_time = usable & (finish <= left)
    accelerators = c.tier == _ACCELERATOR
    verdict = Verdict.PLACED
    pool = in_time & accelerators
    if not pool.any():
        pool = in_time & ~accelerators
        verdict = Verdict.SPILLED if pool.any() and (usable & accelerators).any() else verdict
    if not pool.any():
        return _refusal(c, finish, usable, left, now)
    scores = np.where(pool, finish, np.inf)
    best = int(np.argmin(scores))
    scores[best] = np.inf
    second = int(np.argmin(scores))
    has_second = bool(np.isfinite(scores[second]))
    best_id = c.backend_ids[best]
    predicted_s = float(finish[best])
    runner_up = c.backend_ids[second] if has_second else None
    runner_up_s = float(finish[second]) if has_second else float("nan")
    note = ""  # placed: worded when read
    if verdict is Verdict.SPILLED:
        fastest_accel = float(np.where(usable & accelerators, finish, np.inf).min())
        note = (
            f"spill: accelerators predicted {fastest_accel * 1e3:.2f} ms > "
            f"{left * 1e3:.2f} ms left; "
            + placed_reason(best_id, predicted_s, runner_up, runner_up_s)
        )
    return Decision(
        verdict=verdict,
        backend_id=best_id,
        predicted_s=predicted_s,
        service_s=float(service[best]),
        runner_up=runner_up,
        runner_up_s=runner_up_s,
        note=note,
        decided_at=now,
        telemetry_age_s=telemetry_age(c, best, now),
    )


def _refusal(
    c: Candidates,
    finish: npt.NDArray[np.float64],
    usable: npt.NDArray[np.bool_],
    left: float,
    now: float,
) -> Decision:
    """Why nothing was chosen, worded for the caller."""
    if usable.any():
        best = int(np.argmin(np.where(usable, finish, np.inf)))
        return Decision(
            verdict=Verdict.TOO_LATE,
            backend_id=None,
            predicted_s=float(finish[best]),
            service_s=float("nan"),
            runner_up=None,
            runner_up_s=float("nan"),
            note=(
                f"no backend can finish in time: fastest {c.backend_ids[best]} predicted "
                f"{finish[best] * 1e3:.2f} ms, {max(left, 0.0) * 1e3:.2f} ms left"
            ),
            decided_at=now,
            telemetry_age_s=telemetry_age(c, best, now),
        )
    why = []
    for label, mask in (
        ("unavailable", ~c.available),
        ("short of memory", c.available & ~c.memory_ok),
        ("over load limits", c.available & c.memory_ok & ~c.load_ok),
    ):
        ids = [c.backend_ids[i] for i in np.flatnonzero(mask)]
        if ids:
            why.append(f"{label}: {', '.join(ids)}")
    return Decision(
        verdict=Verdict.NO_CAPACITY,
        backend_id=None,
        predicted_s=float("nan"),
        service_s=float("nan"),
        runner_up=None,
        runner_up_s=float("nan"),
        note="no backend can take it now (" + ("; ".join(why) or "no backends") + ")",
        decided_at=now,
        telemetry_age_s=float("nan"),
    )


def without(c: Candidates, exclude: Collection[str]) -> Candidates:
    """``c`` less the rows of the backends in ``exclude`` (copies of the columns)."""
    keep = [i for i, backend_id in enumerate(c.backend_ids) if backend_id not in exclude]
    rows = np.array(keep, np.intp)
    columns = (None if column is None else column[rows] for column in c[1:])
    return Candidates._make([tuple(c.backend_ids[i] for i in keep), *columns])
