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
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
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

    def observe(self, labels: Labels, value: float) -> None:
        counts = self.values.get(labels)
        if counts is None:
            counts = self.values[labels] = [0.0] * (len(self.bounds) + 2)
        counts[bisect_left(self.bounds, value)] += 1
        counts[-1] += value

    def family(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        for labels, counts in list(self.values.items()):
            counts = list(counts)
            running = 0.0
            buckets = []
            for bound, count in zip((*self.bounds, float("inf")), counts[:-1], strict=True):
                running += count
                buckets.append((_le(bound), running))
            family.add_metric(labels, buckets, counts[-1])
        return family


def _le(bound: float) -> str:
    text: str = floatToGoString(bound)  # type: ignore[no-untyped-call]
    return text


def families(series: Sequence[CounterSeries | HistogramSeries]) -> Iterator[Metric]:
    for item in series:
        yield item.family()
