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


def test_exemplars_carry_trace_ids_in_the_openmetrics_exposition_only() -> None:
    from prometheus_client.openmetrics.exposition import generate_latest as openmetrics
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    series = HistogramSeries("took_seconds", "Took.", ["model"], BOUNDS)
    series.observe(("a",), 0.005, "0af7651916cd43dd8448eb211c80319c")
    series.observe(("a",), 0.006)  # no trace id: the exemplar stays
    series.observe(("a",), 3.0, "4bf92f3577b34da6a3ce929d0e0e4736")
    registry = CollectorRegistry()
    registry.register(_Ours(series))
    assert "trace_id" not in generate_latest(registry).decode()
    (family,) = text_string_to_metric_families(openmetrics(registry).decode())
    exemplars = {s.labels["le"]: s.exemplar for s in family.samples if s.exemplar}
    assert set(exemplars) == {"0.01", "+Inf"}
    assert exemplars["0.01"].labels == {"trace_id": "0af7651916cd43dd8448eb211c80319c"}
    assert exemplars["0.01"].value == 0.005
    assert exemplars["+Inf"].labels == {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"}


def test_observe_many_counts_as_observe_does_one_by_one() -> None:
    one, many = (HistogramSeries("h", "doc", ["m"], [0.1, 1.0]) for _ in range(2))
    values = [0.0, 0.05, 0.1, 0.5, 2.0, 7.5]
    for value in values:
        one.observe(("a",), value)
    many.observe_many(("a",), values)
    assert many.values == one.values
