"""The predicted service time column of a model's candidate table, per batch-size bucket.

Split from ``scheduler.candidates``: a ``ModelTable`` keeps one of these for
its ``service_s`` column.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np
import numpy.typing as npt

from scheduler.estimator import ServiceTimeEstimator

Floats = npt.NDArray[np.float64]


class ServiceColumns:
    """One array of predictions per batch-size bucket, a row per backend; what
    ``read`` returns is what the estimator predicts at that moment.

    A changed estimate can move the prediction of its own bucket and of every
    bucket of the pair without an estimate of its own (those are interpolated
    from the pair's nearest buckets, so any of them may move them); ``changed``
    only marks those rows of the cached buckets as stale, and ``read``
    re-predicts a bucket's stale rows before it hands the array out. A row
    changed several times between two reads of a bucket is predicted once, and
    a bucket no decision reads costs a set insertion per change, no prediction.
    The values are those an immediate re-prediction at every change would give:
    a prediction depends only on the estimator's state, every change of which
    ``changed`` is told of (``ServiceTimeEstimator.listeners``), and a row no
    change marked predicts as at its last refresh.

    An array handed out (``lend``) is never written afterwards: the next
    refresh of its bucket writes a copy.
    """

    def __init__(self, model: str, ids: Sequence[str]) -> None:
        self._model = model
        self._ids = tuple(ids)
        self._arrays: dict[int, Floats] = {}
        #: Per cached bucket, the rows whose prediction may have moved since computed.
        self._stale: dict[int, set[int]] = {}
        #: Buckets lent since last written: copied before the next write.
        self._lent: set[int] = set()

    def changed(self, row: int, bucket: int | None, estimator: ServiceTimeEstimator) -> None:
        """``bucket``'s estimate of ``row`` changed (None: all of the pair's went)."""
        known = estimator.buckets(self._ids[row], self._model)
        for cached, stale in self._stale.items():
            if bucket is None or cached == bucket or cached not in known:
                stale.add(row)

    def read(self, bucket: int, estimator: ServiceTimeEstimator) -> Floats:
        """The predictions for ``bucket`` (NaN: unknown), current; the first read
        predicts every row."""
        values = self._arrays.get(bucket)
        if values is None:
            values = np.array([cell(estimator, b, self._model, bucket) for b in self._ids])
            self._arrays[bucket] = values
            self._stale[bucket] = set()
        elif self._stale[bucket]:
            values = self._refresh(bucket, estimator)
        return values

    def stale(self, bucket: int) -> Collection[int]:
        """The rows of ``bucket`` the next ``read`` re-predicts (a live view)."""
        return self._stale.get(bucket, ())

    def _refresh(self, bucket: int, estimator: ServiceTimeEstimator) -> Floats:
        values = self._arrays[bucket]
        if bucket in self._lent:  # a Candidates holds it: write a copy
            self._lent.discard(bucket)
            values = self._arrays[bucket] = values.copy()  # same key: the dict keeps its shape
        stale, ids, model, predict = self._stale[bucket], self._ids, self._model, estimator.predict
        for row in stale:  # as ``cell`` does, without a call per row
            predicted = predict(ids[row], model, bucket)
            values[row] = np.nan if predicted is None else predicted
        stale.clear()
        return values

    def lend(self, bucket: int) -> None:
        """The array of ``bucket`` is handed out: never write it again."""
        self._lent.add(bucket)


def cell(estimator: ServiceTimeEstimator, backend_id: str, model: str, bucket: int) -> float:
    """The estimator's prediction as an array's cell: NaN when unknown."""
    predicted = estimator.predict(backend_id, model, bucket)
    return np.nan if predicted is None else predicted


def known_or_zero(seconds: float) -> float:
    """A prediction as work: NaN (unknown) adds none."""
    return 0.0 if seconds != seconds else seconds
