"""gateway.metric_series: the same exposition as prometheus_client's own metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.registry import Collector

from gateway.metric_series import CounterSeries, HistogramSeries, families

BOUNDS = (0.001, 0.01, 0.1, 1.0)
VALUES = [0.0005, 0.001, 0.002, 0.05, 0.1, 0.5, 2.0, 7.5, 0.01]


class _Ours(Collector):
    def __init__(self, *series: CounterSeries | HistogramSeries) -> None:
        self.series = series

    def collect(self):  # type: ignore[no-untyped-def]
        return families(self.series)


def test_counters_and_histograms_expose_as_prometheus_client_does() -> None:
    theirs = CollectorRegistry()
    counter = Counter("calls", "Calls.", ["model", "code"], registry=theirs)
    histogram = Histogram("took_seconds", "Took.", ["model"], buckets=BOUNDS, registry=theirs)
    ours_counter = CounterSeries("calls", "Calls.", ["model", "code"])
    ours_histogram = HistogramSeries("took_seconds", "Took.", ["model"], BOUNDS)
    for i, value in enumerate(VALUES):
        model = "a" if i % 3 else "b"
        counter.labels(model, "OK").inc()
        ours_counter.inc((model, "OK"))
        histogram.labels(model).observe(value)
        ours_histogram.observe((model,), value)
    ours = CollectorRegistry()
    ours.register(_Ours(ours_counter, ours_histogram))

    def lines(registry: CollectorRegistry) -> list[str]:
        text = generate_latest(registry).decode()  # ours has no _created series
        return sorted(line for line in text.splitlines() if "_created" not in line)

    assert lines(ours) == lines(theirs)
