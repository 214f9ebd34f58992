"""The service-time column (``scheduler.service_columns``): what a read returns
is what the estimator predicts now, re-predicted at the change, so a read
(a decision) predicts nothing once a bucket is cached; a lent array is never
written."""

from __future__ import annotations

import math
from collections.abc import Collection

import numpy as np

from scheduler.estimator import ServiceTimeEstimator
from scheduler.service_columns import ServiceColumns

IDS = ("a", "b", "c")


class CountingEstimator(ServiceTimeEstimator):
    """The real estimator, counting its predictions (``predict`` makes one too)."""

    def __init__(self) -> None:
        super().__init__()
        self.predictions = 0

    def predicted_s(self, backend_id: str, model: str, bucket: int) -> float:
        self.predictions += 1
        return super().predicted_s(backend_id, model, bucket)


def wired() -> tuple[CountingEstimator, ServiceColumns]:
    estimator = CountingEstimator()
    columns = ServiceColumns("m", IDS)

    def changed(backend_id: str, model: str, buckets: Collection[int] | None) -> None:
        columns.changed(IDS.index(backend_id), buckets, estimator)

    estimator.listeners.append(changed)
    return estimator, columns


def current(estimator: ServiceTimeEstimator, bucket: int) -> list[float]:
    return [math.nan if (p := estimator.predict(b, "m", bucket)) is None else p for b in IDS]


def test_reads_what_the_estimator_predicts_now() -> None:
    estimator, columns = wired()
    estimator.seed("a", "m", 1, 0.010)
    for bucket in (1, 2, 8):
        columns.read(bucket, estimator)
    estimator.observe("a", "m", 1, 0.012)  # moves 1 and the interpolated 2 and 8
    estimator.observe("b", "m", 8, 0.030)  # b's 8, and its 1 and 2 from it
    estimator.forget("a")
    estimator.observe("c", "m", 2, 0.020)
    for bucket in (1, 2, 8):
        np.testing.assert_array_equal(columns.read(bucket, estimator), current(estimator, bucket))


def test_a_read_predicts_nothing_once_cached() -> None:
    estimator, columns = wired()
    estimator.seed("a", "m", 1, 0.010)
    columns.read(2, estimator)
    estimator.observe("a", "m", 1, 0.012)  # bucket 2 of "a" is interpolated: re-predicted
    estimator.predictions = 0
    values = columns.read(2, estimator)
    assert estimator.predictions == 0
    assert values[0] == estimator.predict("a", "m", 2)


def test_a_read_array_is_borrowed_and_kept_current_in_place() -> None:
    """A ``Candidates`` borrows the bucket's own array for one decision: a
    change writes it in place (no copy per change), so a caller copies what it keeps."""
    estimator, columns = wired()
    estimator.seed("a", "m", 1, 0.010)
    borrowed = columns.read(1, estimator)
    estimator.observe("a", "m", 1, 0.050)
    assert columns.read(1, estimator) is borrowed
    assert borrowed[0] == 0.050


def test_a_change_re_predicts_only_the_cells_drawn_from_it() -> None:
    """Bucket 2 is drawn from 1 and 8 (the nearest two), bucket 32 from 8 and
    16: a new estimate for 16 moves 32 alone, one for 1 moves 2 alone, and the
    cells left alone still hold what the estimator predicts."""
    estimator, columns = wired()
    for rows, seconds in ((1, 0.010), (8, 0.014), (16, 0.030)):
        estimator.seed("a", "m", rows, seconds)
    for bucket in (2, 32):
        columns.read(bucket, estimator)
    estimator.predictions = 0
    estimator.observe("a", "m", 16, 0.040)
    assert estimator.predictions == 1
    estimator.observe("a", "m", 1, 0.008)
    assert estimator.predictions == 2
    for bucket in (2, 32):
        np.testing.assert_array_equal(columns.read(bucket, estimator), current(estimator, bucket))
