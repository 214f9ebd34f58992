"""Service-time estimates per backend, model and batch size, learned online."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass

#: Told (backend id, model, buckets) after estimates of the pair changed:
#: ``buckets`` holds every bucket whose prediction may have moved, of those
#: predicted since the pair's known buckets last changed; None when any may
#: have (the pair's first estimate, or ``forget``). See ``ServiceTimeEstimator``.
EstimateListener = Callable[[str, str, Collection[int] | None], None]


def bucket_of(rows: int) -> int:
    """Batch sizes are grouped in powers of two: 1, 2, 4, 8, ..."""
    # The smallest power of two >= rows, in integer arithmetic (no float log).
    return 1 << (rows - 1).bit_length() if rows > 1 else 1


@dataclass(slots=True)
class _Estimate:
    seconds: float
    observed: bool  # False while only a seed (e.g. from Triton's statistics)


class _Pair:
    """One (backend, model)'s estimates, and what its interpolated predictions read."""

    __slots__ = ("bases", "estimates", "readers")

    def __init__(self) -> None:
        self.estimates: dict[int, _Estimate] = {}
        #: Bucket without an estimate of its own -> the known buckets its
        #: prediction is drawn from: (lower, upper), or (only, -1).
        self.bases: dict[int, tuple[int, int]] = {}
        #: Known bucket -> itself and the buckets whose basis holds it: the
        #: predictions that move when its estimate does.
        self.readers: dict[int, list[int]] = {}

    def add(self, bucket: int, estimate: _Estimate) -> Collection[int] | None:
        """``bucket`` gains an estimate of its own, and every basis may differ:
        the predictions that may move are its own and those drawn from a basis
        since the known buckets last changed; None for the pair's first
        estimate (a prediction asked for before it had none to be drawn from)."""
        first = not self.estimates
        self.estimates[bucket] = estimate
        self.bases.pop(bucket, None)
        moved = None if first else [bucket, *self.bases]
        self.bases.clear()
        self.readers.clear()
        return moved

    def moved_with(self, bucket: int) -> Collection[int]:
        """The predictions that move with ``bucket``'s estimate (its keys unchanged)."""
        return self.readers.get(bucket) or (bucket,)


_NONE: dict[int, _Estimate] = {}  # the buckets of a pair never seen


class ServiceTimeEstimator:
    """An EWMA of observed service time per (backend, model, batch-size bucket).

    ``observe`` folds a measured call into its bucket (``alpha`` weights the
    new sample; the first observation replaces a seed outright, because a seed
    comes from a different load or from before a restart). ``predict`` for a
    bucket never seen fits ``time = fixed + per_row * rows`` through the two
    nearest known buckets of that backend and model — the shape of cost a GPU
    has — or, with one known bucket, the same shape with a prior slope: each
    row past the known size adds ``per_row_prior`` of that size's time per
    row (a GPU's batch costs mostly its fixed part; a linear scale-up would
    refuse bursts that fit). With nothing known it returns None and the
    caller decides what an unknown costs.

    ``listeners`` are told (backend id, model, buckets) after every change,
    so the placement tables can keep predictions in arrays and recompute only
    what moved: a prediction for a bucket with an estimate of its own
    (``has_bucket``) depends on that estimate alone; any other is drawn from
    a *basis*, the one or two known buckets nearest it, kept per bucket until
    the pair's known buckets change (so a prediction does not search them
    again), and moves only with the estimates of its basis. A new value of an
    estimate names its bucket and the buckets whose basis holds it; a bucket
    gaining its own estimate names itself and every bucket drawn from a basis
    (each basis may change); the pair's first estimate and ``forget`` name
    none (None: any may move). A listener that keeps predictions predicts
    again what it is told, so every bucket it keeps without an estimate of
    its own was predicted, and given a basis, since the known buckets last
    changed: it is told of each whose basis moves.

    ``relax_stale``, run periodically, keeps an estimate from going stale
    for good: placement stops choosing a backend that looks slow, so nothing
    would ever measure it again (a stall or a burst, once learnt, would bar
    it for the rest of its life). Each sweep moves every measured estimate
    that no call refreshed since the last one halfway toward the best
    estimate of the same model and bucket on any backend, and makes it a
    seed, so the first call placed there once it looks competitive again
    replaces it with a fresh measurement. It never goes below that best one.
    """

    def __init__(self, alpha: float = 0.2, per_row_prior: float = 0.125) -> None:
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        if not 0 <= per_row_prior <= 1:
            raise ValueError("per_row_prior must be in [0, 1]")
        self._alpha = alpha
        self._per_row_prior = per_row_prior
        self._table: dict[tuple[str, str], _Pair] = {}
        self._observed: set[tuple[str, str]] = set()
        #: Pairs measured since the last ``relax_stale``.
        self._fresh: set[tuple[str, str]] = set()
        self.listeners: list[EstimateListener] = []

    def _changed(self, backend_id: str, model: str, buckets: Collection[int] | None) -> None:
        for listener in self.listeners:
            listener(backend_id, model, buckets)

    def has_bucket(self, backend_id: str, model: str, bucket: int) -> bool:
        """Whether ``bucket`` has an estimate of its own (seeded or observed)."""
        return bucket in self.buckets(backend_id, model)

    def buckets(self, backend_id: str, model: str) -> Collection[int]:
        """The buckets of the pair with an estimate of their own (a live view)."""
        pair = self._table.get((backend_id, model))
        return (_NONE if pair is None else pair.estimates).keys()

    def knows(self, backend_id: str, model: str) -> bool:
        """Whether a call of ``model`` on ``backend_id`` has been measured (not only seeded)."""
        return (backend_id, model) in self._observed

    def observe(self, backend_id: str, model: str, rows: int, seconds: float) -> None:
        key = (backend_id, model)
        pair = self._table.get(key)
        if pair is None:
            pair = self._table[key] = _Pair()
        self._observed.add(key)
        self._fresh.add(key)
        bucket = bucket_of(rows)
        current = pair.estimates.get(bucket)
        if current is None:
            self._changed(backend_id, model, pair.add(bucket, _Estimate(seconds, observed=True)))
            return
        if not current.observed:
            current.seconds, current.observed = seconds, True
        else:
            current.seconds += self._alpha * (seconds - current.seconds)
        self._changed(backend_id, model, pair.moved_with(bucket))

    def seed(self, backend_id: str, model: str, rows: int, seconds: float) -> None:
        """A prior (e.g. from Triton's statistics); ignored once observed."""
        pair = self._table.setdefault((backend_id, model), _Pair())
        bucket = bucket_of(rows)
        if bucket not in pair.estimates:
            self._changed(backend_id, model, pair.add(bucket, _Estimate(seconds, observed=False)))

    def relax_stale(self) -> list[tuple[str, str]]:
        """One sweep (see the class docstring); returns the pairs it moved."""
        best: dict[tuple[str, int], float] = {}
        for (_, model), pair in self._table.items():
            for bucket, estimate in pair.estimates.items():
                if estimate.seconds < best.get((model, bucket), math.inf):
                    best[(model, bucket)] = estimate.seconds
        moved: list[tuple[str, str]] = []
        for key, pair in self._table.items():
            if key in self._fresh or key not in self._observed:
                continue
            for bucket, estimate in pair.estimates.items():
                gap = estimate.seconds - best[(key[1], bucket)]
                if gap > 1e-6:  # above the best by more than a microsecond
                    estimate.seconds -= gap / 2
                    estimate.observed = False
                    self._changed(*key, pair.moved_with(bucket))
                    if not moved or moved[-1] != key:
                        moved.append(key)
        self._fresh.clear()
        return moved

    def forget(self, backend_id: str) -> None:
        for key in [k for k in self._table if k[0] == backend_id]:
            del self._table[key]
            self._observed.discard(key)
            self._changed(*key, None)

    def predict(self, backend_id: str, model: str, rows: int) -> float | None:
        """The predicted service time of a batch of ``rows``; None when unknown."""
        seconds = self.predicted_s(backend_id, model, bucket_of(rows))
        return None if seconds != seconds else seconds

    def predicted_s(self, backend_id: str, model: str, bucket: int) -> float:
        """The prediction for ``bucket`` (a power of two), NaN when unknown: as
        the placement tables keep it, in an array's cell."""
        pair = self._table.get((backend_id, model))
        if pair is None:
            return math.nan
        estimates = pair.estimates
        exact = estimates.get(bucket)
        if exact is not None:
            return exact.seconds
        basis = pair.bases.get(bucket)
        if basis is None:
            if not estimates:
                return math.nan
            basis = self._basis(pair, bucket)
        b1, b2 = basis
        if b2 < 0:
            seconds = estimates[b1].seconds
            if bucket <= b1:
                return seconds
            # One size seen: assume most of its time is fixed cost and each
            # further row adds a share of it (``per_row_prior``) until a second
            # size is measured. Scaling by rows would predict 51 s for 64 rows
            # of an 800 ms model whose batches cost 800 ms whatever their size.
            return seconds * (1.0 + self._per_row_prior * (bucket / b1 - 1.0))
        t1, t2 = estimates[b1].seconds, estimates[b2].seconds
        # Both clamped at 0 as ``max(0.0, x)`` does (NaN and -0.0 give 0.0),
        # without a builtin call each: ~4 cells re-predicted per completion.
        per_row = (t2 - t1) / (b2 - b1)
        per_row = per_row if per_row > 0.0 else 0.0
        seconds = t1 + per_row * (bucket - b1)
        return seconds if seconds > 0.0 else 0.0

    @staticmethod
    def _basis(pair: _Pair, bucket: int) -> tuple[int, int]:
        """The known buckets ``bucket``'s prediction is drawn from, kept in
        ``pair.bases`` and told to ``pair.readers`` until the known ones change."""
        # The two known buckets nearest ``bucket`` (the first seen wins a tie,
        # as a stable sort by distance would have it): one pass, no sort.
        near = far = -1
        near_d = far_d = math.inf
        for known in pair.estimates:
            distance = abs(known - bucket)
            if distance < near_d:
                far, far_d = near, near_d
                near, near_d = known, distance
            elif distance < far_d:
                far, far_d = known, distance
        basis = (near, -1) if far < 0 else (near, far) if near < far else (far, near)
        pair.bases[bucket] = basis
        for known in basis:
            if known >= 0:
                pair.readers.setdefault(known, [known]).append(bucket)
        return basis

    def snapshot(self) -> dict[str, dict[str, dict[int, float]]]:
        """backend -> model -> bucket -> seconds, for the admin view."""
        view: dict[str, dict[str, dict[int, float]]] = {}
        for (backend_id, model), pair in self._table.items():
            view.setdefault(backend_id, {})[model] = {
                b: e.seconds for b, e in pair.estimates.items()
            }
        return view
