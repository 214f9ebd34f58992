"""The placement policy's view of the backends, kept current instead of rebuilt per batch.

This is where live state meets the pure policy: breaker and drain state, the
work each backend has in flight, learned service times, and telemetry — fresh
telemetry only: a stale or missing reading leaves a constraint unchecked and
adds no load, it never makes a device look idle or full.

A decision has to cost microseconds at a thousand backends, so nothing here
walks the fleet per decision. ``CandidateTables`` keeps, per model, a
``ModelTable`` whose rows are the backends serving that model (registry
order) and whose columns are numpy arrays. Each column changes when, and only
where, its source changes:

=================  ===========================================  ==================
column             source                                       updated
=================  ===========================================  ==================
tier, concurrency  the fleet and the registry                   table rebuilt on
                                                                fleet change
available          breaker / drain / discovery, as the instant  O(1) per change
                   ``available_from`` from which the backend    (hooks), compared
                   takes work                                   with ``now`` when
                                                                ``now`` crosses one
queued (ours)      ``BackendState.load`` seconds / concurrency  O(1) per write
                                                                (its ``watch``)
queued (theirs)    Triton's pending requests x the 1-row        per telemetry
                   prediction                                   epoch, and per
                                                                changed estimate
memory_ok,         fresh device readings (``TelemetryIndex``)   per telemetry
load_ok,           and total calls in flight per backend        epoch; load_ok
sampled_at                                                      also when a
                                                                backend crosses
                                                                its in-flight cap
service            the estimator, per batch-size bucket         rows whose value
                   (``ServiceColumns``)                         may have moved,
                                                                when it observes
=================  ===========================================  ==================

A decision then costs ``place`` (and ``maximum(ours, theirs)`` into a buffer
the table keeps while Triton reports pending requests): the telemetry's age is
worked out for the chosen row alone (``placement.telemetry_age``). A
``Candidates``' ``queued_s`` and ``service_s`` are borrowed: the table's own
arrays, written in place by the next hook or decision; a caller copies what it
keeps (see ``Candidates``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence

import numpy as np
import numpy.typing as npt

from scheduler.config import SchedulerConfig
from scheduler.estimator import ServiceTimeEstimator, bucket_of
from scheduler.fleet import BackendState, Fleet
from scheduler.load import concurrency
from scheduler.placement import (
    Candidates,
    Tier,
    accelerators_with_room,
    blocked_penalty,
    without,
)
from scheduler.registry import ModelRegistry
from scheduler.service_columns import ServiceColumns, known_or_zero
from scheduler.telemetry.snapshot import TelemetrySnapshot
from scheduler.telemetry_index import BackendSlot, TelemetryIndex, is_local

Floats = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]


class ModelTable:
    """The rows of one model and their columns (see the module docstring)."""

    def __init__(
        self,
        name: str,
        states: Sequence[BackendState],
        slots: Sequence[int],
        instances: Sequence[int],
    ) -> None:
        n = len(states)
        self.name = name
        self.states = tuple(states)
        self.ids = tuple(s.id for s in states)
        self.slots = np.array(slots, np.intp)
        self.concurrency = np.array(instances, np.int64)
        self.divisor = [max(1, c) for c in instances]
        self.tier = np.array([s.tier for s in states], np.int8)
        self.avail_from = np.array([s.available_from() for s in states], np.float64)
        # Who takes work is a step function of ``now``: the same between the nearest
        # ``avail_from`` at or before the last look and the next, until one changes.
        self._available: Bools = np.zeros(n, np.bool_)
        self._capacity = 0
        self._available_in = (math.inf, -math.inf)  # [from, until): empty until looked at
        self.ours = np.array(
            [s.load.seconds(name) / d for s, d in zip(states, self.divisor, strict=True)]
        )
        self.epoch = -1  # of the telemetry the columns below were gathered from
        self.memory_ok: Bools = np.ones(n, np.bool_)
        self.load_ok: Bools = np.ones(n, np.bool_)
        self.accelerator_ok: Bools = self.tier == int(Tier.ACCELERATOR)
        self.sampled_at: Floats = np.full(n, np.nan)
        self._pending: Floats = np.zeros(n)
        self._has_pending = False
        self._theirs: Floats = np.zeros(n)
        self._theirs_valid = True
        # Written by each decision (borrowed by its Candidates, see ``candidates``).
        self._queued: Floats = np.empty(n)
        #: service_s per bucket, kept current by ``estimate_changed``.
        self.service_columns = ServiceColumns(name, self.ids)
        #: blocked_penalty(available, accelerator_ok), for the pair of arrays it was
        #: computed from.
        self._penalty: Floats = np.zeros(0)
        self._penalty_of: tuple[Bools, Bools] | None = None

    # -- O(1) updates (``ours`` too: ``CandidateTables._hook`` writes its cells) --
    def set_available_from(self, row: int, available_from: float) -> None:
        self.avail_from[row] = available_from
        self._available_in = (math.inf, -math.inf)

    def available(self, now: float) -> Bools:
        """``avail_from <= now``, recomputed only when ``now`` crossed an
        ``avail_from`` or one changed; the array is never written afterwards."""
        low, high = self._available_in
        if not low <= now < high:
            self._look(now)
        return self._available

    def capacity(self, now: float) -> int:
        """Instances, summed over the rows that take work at ``now``."""
        self.available(now)
        return self._capacity

    def _look(self, now: float) -> None:
        available = self._available = np.less_equal(self.avail_from, now)
        self._capacity = int(self.concurrency[available].sum())
        # Valid from the latest avail_from reached to the earliest one not yet reached.
        low = np.max(self.avail_from, where=available, initial=-math.inf)
        high = np.min(self.avail_from, where=~available, initial=math.inf)
        self._available_in = (float(low), float(high))

    def set_load_ok(self, row: int, ok: bool) -> None:
        if self.load_ok[row] != ok:
            self.load_ok = self.load_ok.copy()  # the old one may be in a Candidates
            self.load_ok[row] = ok
            self._room_changed()

    def _room_changed(self) -> None:
        self.accelerator_ok = accelerators_with_room(self.tier, self.memory_ok, self.load_ok)

    def estimate_changed(
        self, row: int, buckets: Collection[int] | None, estimator: ServiceTimeEstimator
    ) -> None:
        """Re-predict the cells of ``row`` in ``buckets`` (None: every bucket)."""
        self.service_columns.changed(row, buckets, estimator)
        # Triton's queue x the 1-row prediction follows it (all zeros with none queued).
        if self._has_pending and (single := self.service_columns.cached(1)) is not None:
            self._theirs[row] = self._pending[row] * known_or_zero(single[row])

    # -- reads ----------------------------------------------------------------
    def service(self, bucket: int, estimator: ServiceTimeEstimator) -> Floats:
        """Predicted service time per row for a batch-size bucket (NaN: unknown)."""
        return self.service_columns.read(bucket, estimator)

    def apply_telemetry(
        self, index: TelemetryIndex, in_flight_ok: Bools, need_bytes: int | None
    ) -> None:
        """Re-gather the telemetry columns after the index moved to a new epoch."""
        slots = self.slots
        self.sampled_at = index.sampled_at[slots]
        free = index.free_bytes[slots]
        self.memory_ok = (
            np.ones(len(slots), np.bool_) if need_bytes is None else ~(free < need_bytes)
        )
        self.load_ok = index.utilization_ok[slots] & in_flight_ok[slots]
        self._room_changed()
        loads = index.loads
        pending = [
            0 if (load := loads[slot]) is None else load.pending_requests.get(self.name, 0)
            for slot in slots.tolist()
        ]
        self._pending = np.array(pending, np.float64)
        self._has_pending = any(pending)
        self._theirs = np.zeros(len(slots))
        self._theirs_valid = not self._has_pending
        self.epoch = index.epoch

    def candidates(self, rows: int, now: float, estimator: ServiceTimeEstimator) -> Candidates:
        service = self.service_columns.read(bucket_of(rows), estimator)
        if not self._theirs_valid:  # kept current by estimate_changed from here on
            single = self.service_columns.read(1, estimator)
            self._theirs = self._pending * np.nan_to_num(single, nan=0.0)
            self._theirs_valid = True
        available, room = self.available(now), self.accelerator_ok
        # Both are replaced, never written, when they change: identity tells.
        of = self._penalty_of
        if of is None or of[0] is not available or of[1] is not room:
            self._penalty = blocked_penalty(available, room)
            self._penalty_of = (available, room)
        # tuple.__new__: a named tuple's own __new__ is a Python function.
        return tuple.__new__(
            Candidates,
            (
                self.ids,  # backend_ids
                self.tier,  # tier
                available,  # available
                self.memory_ok,  # memory_ok
                self.load_ok,  # load_ok
                # queued_s: the larger view (Triton's holds ours and other gateways'); with
                # nothing pending theirs is zeros and ours >= 0: ours itself, borrowed.
                np.maximum(self.ours, self._theirs, out=self._queued)
                if self._has_pending
                else self.ours,
                service,  # service_s
                self.sampled_at,  # sampled_at
                room,  # accelerator_ok
                None,  # outstanding
                self._penalty,  # penalty
            ),
        )


class CandidateTables:
    """Every model's ``ModelTable``, built on first use and kept current by hooks.

    Hooks set on each ``BackendState`` (its ``watch``, its breaker's
    ``on_change``, the ``watch`` of its ``CallsInFlight``) and on the
    estimator route each change to the rows it touches. ``invalidate`` (the
    fleet or the registry changed) drops the tables; the next read rebuilds
    them, which is the only O(backends) work outside a telemetry epoch.
    """

    def __init__(
        self,
        config: SchedulerConfig,
        fleet: Fleet,
        registry: ModelRegistry,
        estimator: ServiceTimeEstimator,
        snapshot: Callable[[], TelemetrySnapshot | None],
    ) -> None:
        self._config = config
        self._fleet = fleet
        self._registry = registry
        self._estimator = estimator
        self._snapshot = snapshot
        self._index = TelemetryIndex(
            max_age_s=config.telemetry_max_age_s, max_gpu_utilization=config.max_gpu_utilization
        )
        self._tables: dict[str, ModelTable] = {}
        #: backend id -> model -> (table, row): a hook's lookup makes no key tuple.
        self._cells: dict[str, dict[str, tuple[ModelTable, int]]] = {}
        self._rows_of: dict[str, list[tuple[ModelTable, int]]] = {}
        self._slot_of: dict[str, int] = {}
        self._in_flight: list[int] = []
        self._in_flight_ok: Bools = np.ones(0, np.bool_)
        self._bound = False
        estimator.listeners.append(self._estimate_changed)

    def invalidate(self) -> None:
        """Backends or models changed: rebuild the tables on next use."""
        self._bound = False
        self._tables.clear()
        for cells in self._cells.values():  # each is held by its backend's hook
            cells.clear()
        self._rows_of.clear()

    # -- reads ----------------------------------------------------------------
    def table(self, model: str) -> ModelTable:
        """The model's table; ModelNotFound (from the registry) if none serves it."""
        table = self._tables.get(model)
        return table if table is not None else self._build(model)

    def gather(
        self,
        model: str,
        rows: int,
        now: float,
        exclude: Collection[str] = (),
        outstanding: bool = False,
    ) -> Candidates:
        """The candidates for a batch of ``rows`` of ``model`` at ``now``,
        leaving out the backends in ``exclude`` (already tried); with
        ``outstanding``, the calls in flight per backend too (for routers
        that count calls; the default one does not, and pays nothing)."""
        table = self._tables.get(model) or self._build(model)
        epoch = self._index.sync(self._snapshot(), now)
        if table.epoch != epoch:
            footprint = self._config.model_memory_bytes.get(model, 0)
            need = footprint + self._config.memory_headroom_bytes if footprint else None
            table.apply_telemetry(self._index, self._in_flight_ok, need)
        candidates = table.candidates(rows, now, self._estimator)
        if outstanding:
            in_flight = np.array(self._in_flight, np.int64)[table.slots]
            candidates = candidates._replace(outstanding=in_flight)
        return without(candidates, exclude) if exclude else candidates

    def capacity(self, model: str, now: float) -> int:
        """Model instances, summed over the backends that take work now."""
        # As ``gather`` finds the table: read per arrival and per look at a queue.
        table = self._tables.get(model) or self._build(model)
        return table.capacity(now)

    # -- building -------------------------------------------------------------
    def _bind(self) -> None:
        states = list(self._fleet)
        limit = self._config.max_in_flight_per_backend
        self._slot_of = {s.id: slot for slot, s in enumerate(states)}
        self._in_flight = [s.in_flight for s in states]
        self._in_flight_ok = np.array([n < limit for n in self._in_flight], np.bool_)
        self._index.bind(
            [
                BackendSlot(s.id, s.tier is not Tier.CPU, is_local(s.backend.endpoint))
                for s in states
            ]
        )
        for state in states:
            self._hook(state)
        self._bound = True

    def _build(self, model: str) -> ModelTable:
        if not self._bound:
            self._bind()
        spec, backends = self._registry.resolve(model)
        found = (self._fleet.get(b.id) for b in backends)
        states = [s for s in found if s is not None and s.id in self._slot_of]
        table = ModelTable(
            model,
            states,
            [self._slot_of[s.id] for s in states],
            [concurrency(s, spec) for s in states],
        )
        for row, state in enumerate(states):
            self._cells.setdefault(state.id, {})[model] = (table, row)
            self._rows_of.setdefault(state.id, []).append((table, row))
        self._tables[model] = table
        return table

    def _hook(self, state: BackendState) -> None:
        backend_id = state.id
        cells = self._cells.setdefault(backend_id, {})

        def availability() -> None:
            self._availability_changed(state)

        # Run at every call placed and ended: ``ours`` and the in-flight count inline.
        def load(model: str, change: int, seconds: float) -> None:
            cell = cells.get(model)
            if cell is not None:
                table, row = cell
                table.ours[row] = seconds / table.divisor[row]
            slot = self._slot_of.get(backend_id)
            if not change or slot is None or not self._bound:
                return
            total = self._in_flight[slot] + change
            self._in_flight[slot] = total
            limit = self._config.max_in_flight_per_backend
            if (total < limit) != (total - change < limit):  # else no cap crossed
                self._in_flight_capped(backend_id, slot, total < limit)

        state.watch = self._availability_changed
        state.breaker.on_change = availability
        state.load.watch = load

    # -- hooks ------------------------------------------------------------------
    def _availability_changed(self, state: BackendState) -> None:
        available_from = state.available_from()
        for table, row in self._rows_of.get(state.id, ()):
            table.set_available_from(row, available_from)

    def _in_flight_capped(self, backend_id: str, slot: int, ok: bool) -> None:
        """The backend's calls in flight crossed the cap (``ok``: now below it)."""
        self._in_flight_ok[slot] = ok
        for table, row in self._rows_of.get(backend_id, ()):
            if table.epoch == self._index.epoch:  # others re-gather before their next read
                table.set_load_ok(row, bool(self._index.utilization_ok[slot]) and ok)

    def _estimate_changed(
        self, backend_id: str, model: str, buckets: Collection[int] | None
    ) -> None:
        cells = self._cells.get(backend_id)
        cell = cells.get(model) if cells is not None else None
        if cell is not None:
            cell[0].estimate_changed(cell[1], buckets, self._estimator)
