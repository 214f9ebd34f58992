"""The predicted service time column of a model's candidate table, per batch-size bucket.

Split from ``scheduler.candidates``: a ``ModelTable`` keeps one of these for
its ``service_s`` column.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from scheduler.estimator import ServiceTimeEstimator

Floats = npt.NDArray[np.float64]


class ServiceColumns:
    """One array of predictions per batch-size bucket, a row per backend, each
    predicted for every row on first use and then kept equal to what the
    estimator predicts.

    A changed estimate can move the prediction of its own bucket and of every
    bucket of the pair without an estimate of its own (those are interpolated
    from the pair's nearest buckets, so any of them may move them); ``changed``
    re-predicts those cells of the cached buckets at once, at the completion
    that taught the estimator, so a decision (``read``) finds them current.
    (Deferring them to the read was tried: the simulator then predicted ~5%
    fewer cells, but the live decision paid for them on its critical path.)

    ``read`` hands out the bucket's own array, written in place by the next
    ``changed``: a ``Candidates`` borrows it for one decision.
    """

    def __init__(self, model: str, ids: Sequence[str]) -> None:
        self._model = model
        self._ids = tuple(ids)
        self._arrays: dict[int, Floats] = {}

    def changed(self, row: int, bucket: int | None, estimator: ServiceTimeEstimator) -> None:
        """``bucket``'s estimate of ``row`` changed (None: all of the pair's went)."""
        backend_id, model = self._ids[row], self._model
        known = estimator.buckets(backend_id, model)
        for cached, values in self._arrays.items():
            if bucket is None or cached == bucket or cached not in known:
                values[row] = cell(estimator, backend_id, model, cached)

    def read(self, bucket: int, estimator: ServiceTimeEstimator) -> Floats:
        """The predictions for ``bucket`` (NaN: unknown); the first read predicts every row."""
        values = self._arrays.get(bucket)
        if values is None:
            values = np.array([cell(estimator, b, self._model, bucket) for b in self._ids])
            self._arrays[bucket] = values
        return values

    def cached(self, bucket: int) -> Floats | None:
        """The predictions for ``bucket`` if any read asked for them yet."""
        return self._arrays.get(bucket)


def cell(estimator: ServiceTimeEstimator, backend_id: str, model: str, bucket: int) -> float:
    """The estimator's prediction as an array's cell: NaN when unknown."""
    predicted = estimator.predict(backend_id, model, bucket)
    return np.nan if predicted is None else predicted


def known_or_zero(seconds: float) -> float:
    """A prediction as work: NaN (unknown) adds none."""
    return 0.0 if seconds != seconds else seconds
