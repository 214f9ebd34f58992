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
    """One array of predictions per batch-size bucket, a row per backend, each
    predicted for every row on first use and then kept equal to what the
    estimator predicts.

    A changed estimate can move the prediction of its own bucket and of every
    bucket whose basis holds it (those without an estimate of their own are
    interpolated from it: ``ServiceTimeEstimator``); the estimator names them,
    or names none when any of the pair's may have moved, and ``changed``
    re-predicts those cells of the cached buckets at once, at the completion
    that taught the estimator, so a decision (``read``) finds them current.
    A cell whose inputs did not change keeps its value: predicting it again
    would give the same float. (Deferring them to the read was tried: the
    simulator then predicted ~5% fewer cells, but the live decision paid for
    them on its critical path.)

    ``read`` hands out the bucket's own array, written in place by the next
    ``changed``: a ``Candidates`` borrows it for one decision.
    """

    def __init__(self, model: str, ids: Sequence[str]) -> None:
        self._model = model
        self._ids = tuple(ids)
        self._arrays: dict[int, Floats] = {}

    def changed(
        self, row: int, buckets: Collection[int] | None, estimator: ServiceTimeEstimator
    ) -> None:
        """The predictions of ``buckets`` for ``row`` may have moved (None: any of them)."""
        backend_id, model, arrays = self._ids[row], self._model, self._arrays
        predicted_s = estimator.predicted_s
        if buckets is None:
            for cached, values in arrays.items():
                values[row] = predicted_s(backend_id, model, cached)
            return
        for bucket in buckets:
            moved = arrays.get(bucket)
            if moved is not None:
                moved[row] = predicted_s(backend_id, model, bucket)

    def read(self, bucket: int, estimator: ServiceTimeEstimator) -> Floats:
        """The predictions for ``bucket`` (NaN: unknown); the first read predicts every row."""
        values = self._arrays.get(bucket)
        if values is None:
            model, predicted_s = self._model, estimator.predicted_s
            values = np.array([predicted_s(b, model, bucket) for b in self._ids])
            self._arrays[bucket] = values
        return values

    def cached(self, bucket: int) -> Floats | None:
        """The predictions for ``bucket`` if any read asked for them yet."""
        return self._arrays.get(bucket)


def known_or_zero(seconds: float) -> float:
    """A prediction as work: NaN (unknown) adds none."""
    return 0.0 if seconds != seconds else seconds
