"""Service-time estimates per backend, model and batch size, learned online."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass

#: Told (backend id, model, bucket) after that bucket's estimate changed; the
#: bucket is None when every estimate of the pair went (``forget``).
EstimateListener = Callable[[str, str, int | None], None]


def bucket_of(rows: int) -> int:
    """Batch sizes are grouped in powers of two: 1, 2, 4, 8, ..."""
    # The smallest power of two >= rows, in integer arithmetic (no float log).
    return 1 << (rows - 1).bit_length() if rows > 1 else 1


@dataclass(slots=True)
class _Estimate:
    seconds: float
    observed: bool  # False while only a seed (e.g. from Triton's statistics)


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

    ``listeners`` are told (backend id, model, bucket) after every change, so
    the placement tables can keep predictions in arrays and recompute only
    what changed: a prediction for a bucket with an estimate of its own
    (``has_bucket``) depends on that estimate alone; any other is
    interpolated and may move with every bucket of the pair.

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
        self._table: dict[tuple[str, str], dict[int, _Estimate]] = {}
        self._observed: set[tuple[str, str]] = set()
        #: Pairs measured since the last ``relax_stale``.
        self._fresh: set[tuple[str, str]] = set()
        self.listeners: list[EstimateListener] = []

    def _changed(self, backend_id: str, model: str, bucket: int | None) -> None:
        for listener in self.listeners:
            listener(backend_id, model, bucket)

    def has_bucket(self, backend_id: str, model: str, bucket: int) -> bool:
        """Whether ``bucket`` has an estimate of its own (seeded or observed)."""
        buckets = self._table.get((backend_id, model))
        return buckets is not None and bucket in buckets

    def buckets(self, backend_id: str, model: str) -> Collection[int]:
        """The buckets of the pair with an estimate of their own (a live view)."""
        return self._table.get((backend_id, model), _NONE).keys()

    def knows(self, backend_id: str, model: str) -> bool:
        """Whether a call of ``model`` on ``backend_id`` has been measured (not only seeded)."""
        return (backend_id, model) in self._observed

    def observe(self, backend_id: str, model: str, rows: int, seconds: float) -> None:
        pair = (backend_id, model)
        buckets = self._table.setdefault(pair, {})
        self._observed.add(pair)
        self._fresh.add(pair)
        bucket = bucket_of(rows)
        current = buckets.get(bucket)
        if current is None or not current.observed:
            buckets[bucket] = _Estimate(seconds, observed=True)
        else:
            current.seconds += self._alpha * (seconds - current.seconds)
        self._changed(backend_id, model, bucket)

    def seed(self, backend_id: str, model: str, rows: int, seconds: float) -> None:
        """A prior (e.g. from Triton's statistics); ignored once observed."""
        buckets = self._table.setdefault((backend_id, model), {})
        if bucket_of(rows) not in buckets:
            buckets[bucket_of(rows)] = _Estimate(seconds, observed=False)
            self._changed(backend_id, model, bucket_of(rows))

    def relax_stale(self) -> list[tuple[str, str]]:
        """One sweep (see the class docstring); returns the pairs it moved."""
        best: dict[tuple[str, int], float] = {}
        for (_, model), buckets in self._table.items():
            for bucket, estimate in buckets.items():
                if estimate.seconds < best.get((model, bucket), math.inf):
                    best[(model, bucket)] = estimate.seconds
        moved: list[tuple[str, str]] = []
        for pair, buckets in self._table.items():
            if pair in self._fresh or pair not in self._observed:
                continue
            for bucket, estimate in buckets.items():
                gap = estimate.seconds - best[(pair[1], bucket)]
                if gap > 1e-6:  # above the best by more than a microsecond
                    estimate.seconds -= gap / 2
                    estimate.observed = False
                    self._changed(*pair, bucket)
                    if not moved or moved[-1] != pair:
                        moved.append(pair)
        self._fresh.clear()
        return moved

    def forget(self, backend_id: str) -> None:
        for key in [k for k in self._table if k[0] == backend_id]:
            del self._table[key]
            self._observed.discard(key)
            self._changed(*key, None)

    def predict(self, backend_id: str, model: str, rows: int) -> float | None:
        buckets = self._table.get((backend_id, model))
        if not buckets:
            return None
        bucket = bucket_of(rows)
        exact = buckets.get(bucket)
        if exact is not None:
            return exact.seconds
        # The two known buckets nearest ``bucket`` (the first seen wins a tie,
        # as a stable sort by distance would have it): one pass, no sort.
        near = far = -1
        near_d = far_d = math.inf
        for known in buckets:
            distance = abs(known - bucket)
            if distance < near_d:
                far, far_d = near, near_d
                near, near_d = known, distance
            elif distance < far_d:
                far, far_d = known, distance
        if far < 0:
            only = near
            seconds = buckets[only].seconds
            if bucket <= only:
                return seconds
            # One size seen: assume most of its time is fixed cost and each
            # further row adds a share of it (``per_row_prior``) until a second
            # size is measured. Scaling by rows would predict 51 s for 64 rows
            # of an 800 ms model whose batches cost 800 ms whatever their size.
            return seconds * (1.0 + self._per_row_prior * (bucket / only - 1.0))
        b1, b2 = (near, far) if near < far else (far, near)
        t1, t2 = buckets[b1].seconds, buckets[b2].seconds
        per_row = max(0.0, (t2 - t1) / (b2 - b1))
        return max(0.0, t1 + per_row * (bucket - b1))

    def snapshot(self) -> dict[str, dict[str, dict[int, float]]]:
        """backend -> model -> bucket -> seconds, for the admin view."""
        view: dict[str, dict[str, dict[int, float]]] = {}
        for (backend_id, model), buckets in self._table.items():
            view.setdefault(backend_id, {})[model] = {b: e.seconds for b, e in buckets.items()}
        return view
