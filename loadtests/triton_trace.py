"""What a Triton server did with each call, from its own per-request trace.

Triton's trace (``--trace-config mode=triton``, level TIMESTAMPS, every
request) gives each request's timestamps on the host's monotonic clock
(the one ``time.perf_counter`` reads here): when it arrived, queued, and
when the model's ``execute`` began and ended. ``per_call`` reads them for a
time window and says, per call rather than as the server's means, how long
the model held each call (compute) and, for a call that was already queued
when the one before it ended, how long the server took to start it (the
gap): whether the time a call spends outside Triton's queue and compute,
as the gateway measures it, keeps the server from its next call.
"""

from __future__ import annotations

import itertools
import json
import statistics
from pathlib import Path


def trace_args(path: Path) -> list[str]:
    """tritonserver arguments that trace every request's timestamps to ``path``
    (written when the server stops)."""
    settings = (
        "mode=triton",
        f"triton,file={path}",
        "triton,log-frequency=0",
        "rate=1",
        "count=-1",
        "level=TIMESTAMPS",
    )
    return [arg for setting in settings for arg in ("--trace-config", setting)]


def _calls(path: Path) -> list[dict[str, float]]:
    """Each traced request's timestamps (seconds), in the order they ran."""
    found: dict[int, dict[str, float]] = {}
    for entry in json.loads(path.read_text()):
        record = found.setdefault(int(entry["id"]), {})
        for stamp in entry.get("timestamps", ()):
            record[stamp["name"]] = stamp["ns"] / 1e9
    done = [r for r in found.values() if "COMPUTE_START" in r and "COMPUTE_END" in r]
    return sorted(done, key=lambda r: r["COMPUTE_START"])


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[round(q * (len(ordered) - 1))] if ordered else 0.0


def per_call(path: Path, since_s: float, until_s: float) -> dict[str, float]:
    """The calls that arrived in ``[since_s, until_s]``, in ms: compute mean,
    p50 and p99; the queue's mean; the share of calls that were queued when
    the one before them ended, and the mean and p99 of the gap between that
    end and their start. Empty where the trace has no such call."""
    calls = [c for c in _calls(path) if since_s <= c.get("QUEUE_START", 0.0) <= until_s]
    if not calls:
        return {}
    compute = [(c["COMPUTE_END"] - c["COMPUTE_START"]) * 1e3 for c in calls]
    queue = [(c["COMPUTE_START"] - c.get("QUEUE_START", c["COMPUTE_START"])) * 1e3 for c in calls]
    gaps = [
        (b["COMPUTE_START"] - a["COMPUTE_END"]) * 1e3
        for a, b in itertools.pairwise(calls)
        if b.get("QUEUE_START", 0.0) < a["COMPUTE_END"]
    ]
    return {
        "calls": float(len(calls)),
        "compute_ms": statistics.fmean(compute),
        "compute_p50_ms": _quantile(compute, 0.5),
        "compute_p99_ms": _quantile(compute, 0.99),
        "queue_ms": statistics.fmean(queue),
        "queued_share": len(gaps) / len(calls),
        "gap_ms": statistics.fmean(gaps) if gaps else 0.0,
        "gap_p99_ms": _quantile(gaps, 0.99),
    }
