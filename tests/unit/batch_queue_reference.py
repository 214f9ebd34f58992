"""The batch queue as it was before the O(log n) rewrite: the reference model.

A straightforward implementation of the rules in ``BatchQueue``'s docstring
(sorted lists per level, regrouped on every call, linear scans), kept
verbatim but for names, so that tests/unit/test_batch_queue_model.py can
check the indexed ``scheduler.batching.queue.BatchQueue`` against it over
random operation sequences.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from scheduler.batching.item import Trigger
from scheduler.batching.policy import BatchingPolicy
from scheduler.batching.queue import IDLE_QUIET_S
from scheduler.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted

T = TypeVar("T")


_INF = math.inf
#: Weight of the newest sample in the service-time moving average.
_SERVICE_SMOOTHING = 0.2


@dataclass(slots=True, eq=False)
class RefItem(Generic[T]):
    """One queued request. ``payload`` is the caller's (the batcher keeps request and future).

    ``key`` groups the items that may share a batch (shapes, dtypes, version,
    parameters); ``deadline`` is the request's own absolute deadline. The
    queue fills in ``level``, ``enqueued_at``, ``timeout_at`` and ``seq`` on push.
    """

    payload: T
    rows: int
    key: Hashable
    priority: int = 0
    deadline: float | None = None
    cancelled: bool = False
    level: int = field(default=0, init=False)
    enqueued_at: float = field(default=0.0, init=False)
    timeout_at: float | None = field(default=None, init=False)
    delayed: bool = field(default=False, init=False)
    seq: int = field(default=0, init=False)


@dataclass(frozen=True, slots=True)
class RefBatch(Generic[T]):
    """Items that leave the queue together, in batch order, and why they left."""

    items: tuple[RefItem[T], ...]
    trigger: Trigger

    @property
    def rows(self) -> int:
        return sum(item.rows for item in self.items)


def _order(item: RefItem[T]) -> tuple[bool, float, int]:
    # Within a level: timed-out-but-delayed items last, then earliest deadline
    # first, then arrival order (items without a deadline sort after those with one).
    return (item.delayed, _INF if item.deadline is None else item.deadline, item.seq)


class ReferenceQueue(Generic[T]):
    """Priority levels of EDF-ordered items, and the rules that cut batches from them.

    Order: level 1 first; within a level, earliest deadline first, arrival
    order on ties; items whose queue timeout passed with action ``delay`` go
    behind the rest of their level. Items are grouped by ``key`` in that
    order; the group of the first item is considered first, so the most
    urgent request decides which shape is batched next, but a group further
    down that is due is not held back by an earlier one that is not.

    For a group, its *candidates* are its items in order while their rows fit
    in ``max_batch_size``; the first that does not fit ends the candidates
    (skipping it for smaller ones behind would starve large requests). The
    candidates leave as a batch when, checked in this order:

    - ``full``: they fill ``max_batch_size``, or the next item cannot fit;
    - ``preferred``: a prefix of them sums to a preferred size (the longest
      such prefix leaves);
    - ``deadline``: the earliest candidate deadline is within the estimated
      batch service time (an EWMA of ``record_service`` samples, 0 until one);
    - ``delay``: the oldest candidate has waited ``max_queue_delay_us``;
    - ``idle``: the caller says a backend has capacity now (work-conserving).
    """

    def __init__(self, policy: BatchingPolicy) -> None:
        self._policy = policy
        self._levels: dict[int, list[RefItem[T]]] = {
            level: [] for level in range(1, policy.priority_levels + 1)
        }
        self._seq = itertools.count()
        self._service_s: float | None = None
        #: The last arrival or batch completion: callers whose batch just
        #: finished tend to send their next request within a moment.
        self._last_event_at = -_INF
        self._last_completion_at = -_INF

    # -- state -------------------------------------------------------------
    def __len__(self) -> int:
        return sum(len(items) for items in self._levels.values())

    def depth(self) -> dict[int, int]:
        """Queued requests by priority level."""
        return {level: len(items) for level, items in self._levels.items()}

    @property
    def service_estimate_s(self) -> float | None:
        return self._service_s

    def note_completion(self, now: float) -> None:
        """A batch finished: its callers may be about to send again."""
        self._last_event_at = max(self._last_event_at, now)
        self._last_completion_at = now

    def record_service(self, seconds: float) -> None:
        """A batch's service time (dispatch to result); feeds deadlines and retry hints."""
        prev = self._service_s
        self._service_s = seconds if prev is None else prev + _SERVICE_SMOOTHING * (seconds - prev)

    def _items(self) -> Iterator[RefItem[T]]:
        for level in sorted(self._levels):
            yield from self._levels[level]

    # -- in and out --------------------------------------------------------
    def push(self, item: RefItem[T], now: float) -> None:
        """Queue ``item``; ResourceExhausted (with a retry hint) if its level is full."""
        policy = self._policy
        if not 1 <= item.rows <= policy.max_batch_size:
            raise InvalidArgument(
                f"a request of {item.rows} rows cannot be batched: max_batch_size is "
                f"{policy.max_batch_size}"
            )
        level = policy.level_of(item.priority)
        queue_policy = policy.queue_policy(level)
        queue = self._levels[level]
        if len(queue) >= queue_policy.max_queue_size:
            raise ResourceExhausted(
                f"the queue of priority level {level} is full "
                f"({queue_policy.max_queue_size} requests); retry later",
                retry_after_ms=self._retry_after_ms(level),
            )
        item.level = level
        item.enqueued_at = now
        item.seq = next(self._seq)
        self._last_event_at = now
        if queue_policy.allow_timeout_override and item.deadline is not None:
            item.timeout_at = None  # the request's own deadline replaces the default
        elif queue_policy.default_timeout_us > 0:
            item.timeout_at = now + queue_policy.default_timeout_us / 1e6
        bisect.insort(queue, item, key=_order)

    def _retry_after_ms(self, level: int) -> int:
        # Time to drain what is ahead of a new request at this level, one batch
        # at a time; before any batch was timed, guess with the queue delay.
        rows_ahead = sum(i.rows for lvl, q in self._levels.items() if lvl <= level for i in q)
        batches = math.ceil(rows_ahead / self._policy.max_batch_size)
        per_batch_s = self._service_s or max(self._policy.max_queue_delay_s, 0.001)
        return max(1, math.ceil(batches * per_batch_s * 1000))

    def remove(self, item: RefItem[T]) -> bool:
        """Take ``item`` out (its caller went away); False if it already left."""
        queue = self._levels.get(item.level, [])
        for index, queued in enumerate(queue):
            if queued is item:
                del queue[index]
                return True
        return False

    def drain(self) -> list[RefItem[T]]:
        """Take every item out, in queue order (the batcher is closing)."""
        items = list(self._items())
        for queue in self._levels.values():
            queue.clear()
        return items

    def remove_cancelled(self) -> list[RefItem[T]]:
        """Drop every item marked ``cancelled``, before it can be dispatched."""
        gone: list[RefItem[T]] = []
        for level, queue in self._levels.items():
            gone.extend(i for i in queue if i.cancelled)
            self._levels[level] = [i for i in queue if not i.cancelled]
        return gone

    def expire(self, now: float) -> list[tuple[RefItem[T], DeadlineExceeded]]:
        """Remove items past their deadline or their reject-timeout; demote delay-timeouts."""
        out: list[tuple[RefItem[T], DeadlineExceeded]] = []
        for level, queue in self._levels.items():
            keep: list[RefItem[T]] = []
            demoted = False
            for item in queue:
                waited_ms = (now - item.enqueued_at) * 1000
                if item.deadline is not None and now >= item.deadline:
                    error = DeadlineExceeded(
                        f"deadline exceeded after {waited_ms:.1f} ms in the batch queue"
                    )
                    out.append((item, error))
                elif not item.delayed and item.timeout_at is not None and now >= item.timeout_at:
                    policy = self._policy.queue_policy(level)
                    if policy.timeout_action == "reject":
                        error = DeadlineExceeded(
                            f"timed out after {waited_ms:.1f} ms in the batch queue (queue "
                            f"policy of priority level {level}: "
                            f"{policy.default_timeout_us} µs, action reject)"
                        )
                        out.append((item, error))
                    else:
                        item.delayed = demoted = True
                        keep.append(item)
                else:
                    keep.append(item)
            if demoted:
                keep.sort(key=_order)
            self._levels[level] = keep
        return out

    # -- batching decisions ------------------------------------------------
    def _groups(self) -> Iterator[tuple[list[RefItem[T]], bool]]:
        """Per key, in queue order: the candidates, and whether an item was left out for size."""
        by_key: dict[Hashable, list[RefItem[T]]] = {}
        for item in self._items():
            if not item.cancelled:
                by_key.setdefault(item.key, []).append(item)
        limit = self._policy.max_batch_size
        for members in by_key.values():
            chosen: list[RefItem[T]] = []
            rows = 0
            for item in members:
                if rows + item.rows > limit:
                    break
                chosen.append(item)
                rows += item.rows
            yield chosen, len(chosen) < len(members)

    def _deadline_due_at(self, chosen: list[RefItem[T]]) -> float:
        earliest = min((i.deadline for i in chosen if i.deadline is not None), default=_INF)
        return earliest - (self._service_s or 0.0)

    def _decide(
        self, chosen: list[RefItem[T]], blocked: bool, now: float, idle_capacity: bool
    ) -> tuple[int, Trigger] | None:
        """How many of ``chosen`` leave now, and why; None to keep waiting."""
        policy = self._policy
        rows = sum(i.rows for i in chosen)
        if rows >= policy.max_batch_size or blocked:
            return len(chosen), "full"
        preferred = set(policy.preferred_batch_sizes)
        cut, running = 0, 0
        for index, item in enumerate(chosen, start=1):
            running += item.rows
            if running in preferred:
                cut = index
        if cut:
            return cut, "preferred"
        if now >= self._deadline_due_at(chosen):
            return len(chosen), "deadline"
        if now - min(i.enqueued_at for i in chosen) >= policy.max_queue_delay_s:
            return len(chosen), "delay"
        if idle_capacity and now >= self._idle_release_at(chosen):
            return len(chosen), "idle"
        return None

    def _idle_release_at(self, chosen: list[RefItem[T]]) -> float:
        """When an idle backend takes what is queued: once arrivals (and batch
        completions, whose callers come back) pause for ``IDLE_QUIET_S``, so a
        burst of callers lands in one batch instead of being split, but never
        later than the model's delay, and at once when it has none (purely
        work-conserving). The delay bounds the wait this adds, so it counts
        from when the work arrived or the backend last freed up, whichever is
        later: requests queued behind a busy backend already waited for it."""
        delay = self._policy.max_queue_delay_s
        quiet = min(IDLE_QUIET_S, delay)
        since = max(min(i.enqueued_at for i in chosen), self._last_completion_at)
        return min(self._last_event_at + quiet, since + delay)

    def pop_batch(
        self, now: float, idle_capacity: bool, *, complete_only: bool = False
    ) -> RefBatch[T] | None:
        """The next batch to dispatch, removed from the queue, or None if nothing is due.

        ``complete_only``: only a batch that is full, of a preferred size, or
        due by its deadline (not by delay or idleness). Call ``expire(now)``
        first: this does not check timeouts.
        """
        for chosen, blocked in self._groups():
            decision = self._decide(chosen, blocked, now, idle_capacity)
            if decision is not None and complete_only and decision[1] in ("delay", "idle"):
                decision = None
            if decision is None:
                continue
            count, trigger = decision
            taken = chosen[:count]
            for item in taken:
                self.remove(item)
            return RefBatch(tuple(taken), trigger)
        return None

    def next_wakeup(self, now: float, *, triggers: bool = True, idle: bool = False) -> float | None:
        """When a timeout or a trigger next falls due; None if nothing will.

        ``triggers=False`` asks for timeouts only (the caller could not send
        a batch now anyway); ``idle=True`` adds when an idle backend would
        take the queue (see ``_idle_release_at``).
        """
        times: list[float] = []
        for item in self._items():
            if item.deadline is not None:
                times.append(item.deadline)
            if item.timeout_at is not None and not item.delayed:
                times.append(item.timeout_at)
        for chosen, _ in self._groups() if triggers else ():
            times.append(min(i.enqueued_at for i in chosen) + self._policy.max_queue_delay_s)
            times.append(self._deadline_due_at(chosen))
            if idle:
                times.append(self._idle_release_at(chosen))
        due = min(times, default=_INF)
        return None if due == _INF else due
