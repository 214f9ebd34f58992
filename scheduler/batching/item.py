"""What the batch queue holds and hands out: items, batches, a step's outcome,
and the instant its timed rules are judged at (``Moment``).

Plain values, apart from ``QueueItem.cancelled``, which tells the queue holding
the item at once (see ``BatchQueue``), so the queue never scans for it.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Generic, Literal, NamedTuple, TypeVar

from scheduler.batching.fair_share import DEMOTED
from scheduler.errors import DeadlineExceeded

if TYPE_CHECKING:
    from scheduler.batching.queue import BatchQueue

__all__ = [
    "ENTRY_ITEM",
    "ENTRY_LEVEL",
    "ENTRY_RANK",
    "ENTRY_ROWS",
    "Batch",
    "Entry",
    "Moment",
    "QueueItem",
    "Step",
    "Trigger",
    "entry_of",
]

T = TypeVar("T")
_INF = math.inf

#: Why a batch left the queue.
Trigger = Literal["full", "preferred", "delay", "deadline", "idle"]
#: Queue order: level, then rank (the tenant's fair-share tag, demoted items
#: last: ``fair_share.rank_of``), earliest deadline first (inf: none), then
#: arrival; ``seq`` is unique, so two entries never compare what follows it:
#: the item's rows (read in hot loops without an attribute lookup) and the item.
Entry = tuple[int, float, float, int, int, "QueueItem[Any]"]
#: An entry's fields, read in C by ``map`` and ``bisect`` (its level, rank, rows, item).
ENTRY_LEVEL, ENTRY_RANK, ENTRY_ROWS, ENTRY_ITEM = map(itemgetter, (0, 1, 4, 5))


def entry_of(item: QueueItem[Any]) -> Entry:
    """``item``'s place in queue order, as it stands now."""
    deadline = _INF if item.deadline is None else item.deadline
    rank = item.tag + DEMOTED if item.delayed else item.tag  # fair_share.rank_of, inlined
    return (item.level, rank, deadline, item.seq, item.rows, item)


class QueueItem(Generic[T]):
    """One queued request. ``payload`` is the caller's (the batcher keeps request and future).

    ``key`` groups the items that may share a batch (shapes, dtypes, version,
    parameters); ``deadline`` is the request's own absolute deadline;
    ``tenant`` who sent it ("" for none) and ``share``, its weight, for fair
    share. The queue fills in
    ``level``, ``enqueued_at``, ``timeout_at``, ``seq``, ``tag`` and ``entry``
    on push; ``key`` and ``deadline`` must not change while queued.
    Setting ``cancelled`` tells the queue at once, so it never has to look.
    """

    __slots__ = (
        "_cancelled",
        "_queue",
        "deadline",
        "delayed",
        "enqueued_at",
        "entry",
        "key",
        "level",
        "payload",
        "priority",
        "rows",
        "seq",
        "share",
        "tag",
        "tenant",
        "timeout_at",
    )

    def __init__(
        self,
        payload: T,
        rows: int,
        key: Hashable,
        priority: int = 0,
        deadline: float | None = None,
        cancelled: bool = False,
        tenant: str = "",
        share: float = 1.0,
    ) -> None:
        self.payload = payload
        self.rows = rows
        self.key = key
        self.priority = priority
        self.deadline = deadline
        self._cancelled = cancelled
        self.level = 0
        self.enqueued_at = 0.0
        self.timeout_at: float | None = None
        self.delayed = False
        self.seq = 0
        self.tenant = tenant
        self.share = share
        self.tag = 0.0  # its fair-share start tag (fair_share.FairShare)
        self.entry: Entry | None = None
        self._queue: BatchQueue[T] | None = None

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    @cancelled.setter
    def cancelled(self, value: bool) -> None:
        if value != self._cancelled:
            self._cancelled = value
            if self._queue is not None:
                self._queue._cancel_changed(self)

    def __repr__(self) -> str:
        return f"QueueItem({self.payload!r}, rows={self.rows}, key={self.key!r}, seq={self.seq})"


class Batch(NamedTuple, Generic[T]):
    """Items that leave the queue together, in batch order, and why they left."""

    items: tuple[QueueItem[T], ...]
    trigger: Trigger

    @property
    def rows(self) -> int:
        return sum(item.rows for item in self.items)


class Step(NamedTuple, Generic[T]):
    """What one look at the queue decided (see ``BatchQueue.step``)."""

    expired: list[tuple[QueueItem[T], DeadlineExceeded]]
    batches: list[Batch[T]]
    wake_at: float | None


class Moment(NamedTuple):
    """Everything the timed rules read besides a group: one query's ``now``.

    (A named tuple: one is made per query, and a frozen dataclass costs
    several times as much to make.)
    """

    now: float
    idle: bool  # a backend has capacity now
    service_s: float  # the batch service estimate (0 before any)
    delay_s: float  # max_queue_delay
    quiet_s: float  # min(IDLE_QUIET_S, delay)
    last_event_at: float
    last_completion_at: float

    def deadline_due(self, earliest_deadline: float) -> bool:
        return self.now >= earliest_deadline - self.service_s

    def delay_due(self, oldest: float) -> bool:
        return self.now - oldest >= self.delay_s

    def idle_release_at(self, oldest: float) -> float:
        since = max(oldest, self.last_completion_at)
        return min(self.last_event_at + self.quiet_s, since + self.delay_s)

    def idle_due(self, oldest: float) -> bool:
        return self.idle and self.now >= self.idle_release_at(oldest)

    @property
    def all_idle_due(self) -> bool:
        """Arrivals paused: an idle backend takes whatever group comes first."""
        return self.idle and self.now >= self.last_event_at + self.quiet_s
