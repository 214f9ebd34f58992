"""Pure helpers of the streaming benchmark: reading ghz's JSON report, Prometheus
histograms and /proc CPU counters, percentiles, and the results table.

Nothing here starts a process or reads a clock, so tests/unit checks it directly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

#: Cumulative histogram buckets: (upper bound ``le``, observations <= le), ascending.
Buckets = list[tuple[float, float]]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def histogram_buckets(text: str, name: str) -> Buckets:
    """The buckets of histogram ``name`` in Prometheus text, summed over label sets."""
    totals: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{name}_bucket":
                le = float(sample.labels["le"])
                totals[le] = totals.get(le, 0.0) + sample.value
    return sorted(totals.items())


def bucket_delta(before: Buckets, after: Buckets) -> Buckets:
    """Observations made between two scrapes of the same histogram."""
    earlier = dict(before)
    return [(le, count - earlier.get(le, 0.0)) for le, count in after]


def histogram_quantile(buckets: Buckets, q: float) -> float:
    """Prometheus's estimate: linear within the bucket the rank falls in.

    A rank in the ``+Inf`` bucket answers the highest finite bound; no
    observations answer NaN."""
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    rank = q * buckets[-1][1]
    lower_le, lower_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return lower_le
            if count == lower_count:
                return le
            return lower_le + (le - lower_le) * (rank - lower_count) / (count - lower_count)
        lower_le, lower_count = le, count
    return lower_le


def proc_cpu_seconds(stat_line: str, ticks_per_s: float) -> float:
    """utime + stime of one ``/proc/<pid>/stat`` line, in seconds."""
    # The command name is parenthesised and may hold spaces: split after it.
    fields = stat_line.rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / ticks_per_s


def ghz_summary(report: Mapping[str, Any], responses_per_stream: int) -> dict[str, float]:
    """Streams and responses per second of one ghz run (a call is one stream).

    Only calls that ended OK count as responses; ghz's ``total`` is the run's
    wall time in nanoseconds and its latencies are whole-stream times."""
    wall_s = float(report["total"]) / 1e9
    codes: Mapping[str, int] = report.get("statusCodeDistribution") or {}
    ok = int(codes.get("OK", 0))
    latencies = {
        int(entry["percentage"]): float(entry["latency"]) / 1e9
        for entry in report.get("latencyDistribution") or []
    }
    return {
        "streams": float(report["count"]),
        "streams_ok": float(ok),
        "wall_s": wall_s,
        "responses_per_s": ok * responses_per_stream / wall_s if wall_s > 0 else math.nan,
        "stream_p50_s": latencies.get(50, math.nan),
        "stream_p99_s": latencies.get(99, math.nan),
    }


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1e3:.1f}"


def markdown_table(rows: Iterable[Mapping[str, float]]) -> str:
    """One line per concurrency: direct and gateway responses/s, ratio, TTFR, CPU."""
    lines = [
        "| streams | direct resp/s | gateway resp/s | ratio | TTFR p50 direct / gateway (ms) "
        "| TTFR p99 direct / gateway (ms) | gateway histogram TTFR p50 / p99 (ms) "
        "| gateway CPU µs / response |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        direct, via = row["direct_rps"], row["gateway_rps"]
        ratio = via / direct if direct > 0 else math.nan
        cpu_us = row["gateway_cpu_s_per_response"] * 1e6
        lines.append(
            f"| {int(row['concurrency'])} | {direct:,.0f} | {via:,.0f} | {ratio:.2f} "
            f"| {_ms(row['ttfr_p50_direct_s'])} / {_ms(row['ttfr_p50_gateway_s'])} "
            f"| {_ms(row['ttfr_p99_direct_s'])} / {_ms(row['ttfr_p99_gateway_s'])} "
            f"| {_ms(row['hist_p50_s'])} / {_ms(row['hist_p99_s'])} "
            f"| {'-' if math.isnan(cpu_us) else f'{cpu_us:.0f}'} |"
        )
    return "\n".join(lines) + "\n"
