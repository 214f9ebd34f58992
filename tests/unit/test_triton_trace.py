"""Reading a Triton server's per-request trace (``loadtests.triton_trace``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtests.triton_trace import per_call, trace_args


def _entries(request_id: int, **stamps_ms: float) -> list[dict[str, object]]:
    """A request as Triton writes it: a header, then one entry a timestamp."""
    head: dict[str, object] = {"id": request_id, "model_name": "gpu_sim", "model_version": 1}
    return [head] + [
        {"id": request_id, "timestamps": [{"name": name, "ns": int(ms * 1e6)}]}
        for name, ms in stamps_ms.items()
    ]


def test_per_call_reads_compute_queue_and_the_gap_before_a_queued_call(tmp_path: Path) -> None:
    trace = tmp_path / "trace.json"
    trace.write_text(
        json.dumps(
            # 1 runs 1000-1040 ms; 2 queued at 1010, runs 1040.5-1080.5 (a 0.5 ms
            # gap); 3 arrives at 1200 on an idle server; 4 is before the window.
            _entries(1, QUEUE_START=1000, COMPUTE_START=1000, COMPUTE_END=1040)
            + _entries(2, QUEUE_START=1010, COMPUTE_START=1040.5, COMPUTE_END=1080.5)
            + _entries(3, QUEUE_START=1200, COMPUTE_START=1200, COMPUTE_END=1242)
            + _entries(4, QUEUE_START=500, COMPUTE_START=500, COMPUTE_END=540)
        )
    )
    got = per_call(trace, 0.9, 1.3)
    assert got["calls"] == 3
    assert got["compute_ms"] == pytest.approx((40 + 40 + 42) / 3)
    assert got["queue_ms"] == pytest.approx(30.5 / 3)
    assert got["queued_share"] == pytest.approx(1 / 3)
    assert got["gap_ms"] == pytest.approx(0.5)
    assert per_call(trace, 2.0, 3.0) == {}


def test_trace_args_trace_every_request_to_the_file(tmp_path: Path) -> None:
    args = trace_args(tmp_path / "t.json")
    assert args[::2] == ["--trace-config"] * 6
    assert f"triton,file={tmp_path / 't.json'}" in args and "rate=1" in args
