"""Request-path counters and histograms as plain numbers, exposed when scraped.

``prometheus_client``'s ``Counter`` and ``Histogram`` take a lock and walk
their label and bucket machinery on every update: a dozen updates a request
cost the gateway more than its own decoding does. Every update here happens on
the event loop's thread, so no lock is needed: a series is a float (counter)
or a list of bucket counts plus a sum (histogram), found by its label values
in a dict, and the bucket by bisection. ``prometheus_client`` still does the
exposition: ``families()`` turns the series into its metric families on each
scrape (from the HTTP server's thread; copying a list or a dict's items is
atomic under the GIL, so a scrape sees every series whole, give or take the
updates of the moment).

Exemplars: an observation made with a trace id keeps it, with its value and
time, as the latest exemplar of its bucket (one tuple per bucket, replaced,
so memory stays bounded). ``prometheus_client`` writes them only in the
OpenMetrics exposition, which its HTTP server serves to a scraper that asks
for it (``Accept: application/openmetrics-text``); the classic text format
leaves them out. Without a trace id (tracing off) nothing is kept.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString

Labels = tuple[str, ...]


class CounterSeries:
    """A counter per combination of label values."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = tuple(labels)
        self.values: dict[Labels, float] = {}

    def inc(self, labels: Labels, amount: float = 1.0) -> None:
        values = self.values
        values[labels] = values.get(labels, 0.0) + amount

    def family(self) -> Metric:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for labels, value in list(self.values.items()):
            family.add_metric(labels, value)
        return family


class HistogramSeries:
    """A histogram per combination of label values; ``bounds`` are the upper
    bounds of the buckets (``le``), ascending, ``+Inf`` implied."""

    def __init__(
        self, name: str, documentation: str, labels: Sequence[str], bounds: Sequence[float]
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = tuple(labels)
        self.bounds = tuple(float(b) for b in bounds)
        #: per series: one count per bucket (non-cumulative), +Inf, then the sum
        self.values: dict[Labels, list[float]] = {}
        #: per series and bucket index: the latest (trace id, value, Unix time)
        self.exemplars: dict[Labels, dict[int, tuple[str, float, float]]] = {}

    def observe(self, labels: Labels, value: float, trace_id: str = "") -> None:
        counts = self.values.get(labels)
        if counts is None:
            counts = self.values[labels] = [0.0] * (len(self.bounds) + 2)
        bucket = bisect_left(self.bounds, value)
        counts[bucket] += 1
        counts[-1] += value
        if trace_id:
            kept = self.exemplars.get(labels)
            if kept is None:
                kept = self.exemplars[labels] = {}
            kept[bucket] = (trace_id, value, time.time())

    def observe_many(self, labels: Labels, values: Sequence[float]) -> None:
        """``observe`` each of ``values`` (no exemplars): one lookup of the
        series for a whole batch's members."""
        counts = self.values.get(labels)
        if counts is None:
            counts = self.values[labels] = [0.0] * (len(self.bounds) + 2)
        bounds = self.bounds
        for value in values:
            counts[bisect_left(bounds, value)] += 1
        counts[-1] += sum(values)

    def family(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        for labels, counts in list(self.values.items()):
            counts = list(counts)
            kept = dict(self.exemplars.get(labels, {}))
            running = 0.0
            buckets: list[tuple[str, float] | tuple[str, float, Exemplar]] = []
            for index, (bound, count) in enumerate(
                zip((*self.bounds, float("inf")), counts[:-1], strict=True)
            ):
                running += count
                if index in kept:
                    trace_id, value, at = kept[index]
                    buckets.append(
                        (_le(bound), running, Exemplar({"trace_id": trace_id}, value, at))
                    )
                else:
                    buckets.append((_le(bound), running))
            family.add_metric(labels, buckets, counts[-1])
        return family


def _le(bound: float) -> str:
    text: str = floatToGoString(bound)  # type: ignore[no-untyped-call]
    return text


def families(series: Sequence[CounterSeries | HistogramSeries]) -> Iterator[Metric]:
    for item in series:
        yield item.family()
