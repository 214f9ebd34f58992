"""loadtests.stream_stats: the streaming benchmark's parsing and summaries."""

from __future__ import annotations

import math

import pytest

from loadtests import stream_stats as stats

METRICS = """\
# HELP gateway_stream_first_response_seconds first response
# TYPE gateway_stream_first_response_seconds histogram
gateway_stream_first_response_seconds_bucket{model="a",le="0.01"} 2.0
gateway_stream_first_response_seconds_bucket{model="a",le="0.1"} 4.0
gateway_stream_first_response_seconds_bucket{model="a",le="+Inf"} 4.0
gateway_stream_first_response_seconds_bucket{model="b",le="0.01"} 0.0
gateway_stream_first_response_seconds_bucket{model="b",le="0.1"} 4.0
gateway_stream_first_response_seconds_bucket{model="b",le="+Inf"} 6.0
gateway_stream_first_response_seconds_count{model="a"} 4.0
gateway_stream_first_response_seconds_sum{model="a"} 0.1
"""


def test_histogram_buckets_sum_label_sets() -> None:
    buckets = stats.histogram_buckets(METRICS, "gateway_stream_first_response_seconds")
    assert buckets == [(0.01, 2.0), (0.1, 8.0), (math.inf, 10.0)]


def test_bucket_delta_and_quantile() -> None:
    before = [(0.01, 2.0), (0.1, 2.0), (math.inf, 2.0)]
    after = [(0.01, 2.0), (0.1, 6.0), (math.inf, 7.0)]
    delta = stats.bucket_delta(before, after)
    assert delta == [(0.01, 0.0), (0.1, 4.0), (math.inf, 5.0)]
    assert stats.histogram_quantile(delta, 0.4) == pytest.approx(0.01 + 0.09 * 0.5)
    assert stats.histogram_quantile(delta, 0.99) == 0.1  # in +Inf: the highest finite bound
    assert math.isnan(stats.histogram_quantile([(0.1, 0.0), (math.inf, 0.0)], 0.5))


def test_percentile() -> None:
    assert stats.percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert stats.percentile([1.0, 2.0], 0.99) == pytest.approx(1.99)
    assert math.isnan(stats.percentile([], 0.5))


def test_proc_cpu_seconds_handles_spaces_in_the_name() -> None:
    line = "42 (python gw) S 1 42 42 0 -1 4194304 10 0 0 0 250 50 0 0 20 0 3 0 100"
    assert stats.proc_cpu_seconds(line, 100.0) == 3.0


def test_ghz_summary_counts_ok_streams_only() -> None:
    report = {
        "count": 12,
        "total": 2_000_000_000,
        "statusCodeDistribution": {"OK": 10, "Unavailable": 2},
        "latencyDistribution": [
            {"percentage": 50, "latency": 100_000_000},
            {"percentage": 99, "latency": 300_000_000},
        ],
    }
    summary = stats.ghz_summary(report, responses_per_stream=50)
    assert summary["responses_per_s"] == 250.0
    assert summary["stream_p50_s"] == 0.1 and summary["stream_p99_s"] == 0.3


def test_markdown_table_row() -> None:
    row = {
        "concurrency": 16,
        "direct_rps": 2000.0,
        "gateway_rps": 1000.0,
        "ttfr_p50_direct_s": 0.004,
        "ttfr_p50_gateway_s": 0.006,
        "ttfr_p99_direct_s": math.nan,
        "ttfr_p99_gateway_s": 0.02,
        "hist_p50_s": 0.005,
        "hist_p99_s": 0.01,
        "gateway_cpu_s_per_response": 0.0003,
    }
    line = stats.markdown_table([row]).splitlines()[-1]
    assert line == "| 16 | 2,000 | 1,000 | 0.50 | 4.0 / 6.0 | - / 20.0 | 5.0 / 10.0 | 300 |"
