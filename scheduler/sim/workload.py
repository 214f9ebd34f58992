"""Workloads for the simulator: request arrivals per model, generated or replayed.

Generated arrivals are a non-homogeneous Poisson process per model, drawn by
thinning: candidate arrivals at the peak rate, each kept with probability
``rate(t) / peak``. The shapes:

- ``poisson``: a constant rate;
- ``bursty``: on/off — ``burst_factor`` times the mean rate for ``on_s``,
  then quiet for ``off_s`` (the mean over a period stays ``rate_per_s``);
- ``diurnal``: a sine ramp between ``1 - amplitude`` and ``1 + amplitude``
  times the mean over ``period_s`` (a day compressed into seconds).

A recorded trace (CSV with a header, or JSON lines) has per request the
arrival time ``at_s``, ``model``, ``rows`` and ``deadline_ms`` (its SLO,
relative to arrival; empty or absent: the model's own).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]
Shape = Literal["poisson", "bursty", "diurnal"]


@dataclass(frozen=True, slots=True)
class ModelLoad:
    """One model's traffic: mean rate, rows per request, SLO and arrival shape."""

    model: str
    rate_per_s: float
    slo_s: float
    rows: int = 1
    shape: Shape = "poisson"
    burst_factor: float = 4.0
    on_s: float = 0.5
    off_s: float = 1.5
    amplitude: float = 0.8
    period_s: float = 20.0

    def rate_at(self, t: Floats) -> Floats:
        """The instantaneous rate at times ``t`` (an array), requests per second."""
        if self.shape == "poisson":
            return np.full_like(t, self.rate_per_s)
        if self.shape == "bursty":
            period = self.on_s + self.off_s
            peak = self.rate_per_s * period / self.on_s
            return np.where((t % period) < self.on_s, peak, 0.0)
        ramp: Floats = 1.0 + self.amplitude * np.sin(2 * math.pi * t / self.period_s)
        return self.rate_per_s * ramp

    @property
    def peak_rate(self) -> float:
        if self.shape == "bursty":
            return self.rate_per_s * (self.on_s + self.off_s) / self.on_s
        if self.shape == "diurnal":
            return self.rate_per_s * (1.0 + self.amplitude)
        return self.rate_per_s


class Arrival(NamedTuple):
    """One request: when, which model, how many rows, and its SLO (seconds)."""

    at_s: float
    model: str
    rows: int
    slo_s: float


def generate(
    loads: Sequence[ModelLoad],
    duration_s: float,
    seed: int = 0,
    scale: float = 1.0,
    limit: int | None = None,
) -> list[Arrival]:
    """Arrivals of every model over ``duration_s``, in time order; ``scale``
    multiplies every rate (to sweep offered load); ``limit`` keeps only the
    first that many (cut before the records are made)."""
    rng = np.random.default_rng(seed)
    times: list[Floats] = []
    owners: list[npt.NDArray[np.int64]] = []
    for index, load in enumerate(loads):
        peak = load.peak_rate * scale
        if peak <= 0:
            continue
        count = rng.poisson(peak * duration_s)
        t = np.sort(rng.uniform(0.0, duration_s, count))
        keep = rng.uniform(0.0, 1.0, count) * peak < load.rate_at(t) * scale
        times.append(t[keep])
        owners.append(np.full(int(keep.sum()), index))
    if not times:
        return []
    at = np.concatenate(times)
    who = np.concatenate(owners)
    order = np.argsort(at, kind="stable")[:limit]
    picked = who[order]
    # Each field a column picked by model index in numpy, and the records made
    # by ``map`` over ``zip``: no Python loop body (nor the named tuple's
    # ``__new__``, a Python function) per request, a million of them at scale.
    models, rows, slos = (
        np.array([getattr(load, name) for load in loads], dtype=object)[picked].tolist()
        for name in ("model", "rows", "slo_s")
    )
    records = zip(at[order].tolist(), models, rows, slos, strict=True)
    return list(map(tuple.__new__, repeat(Arrival), records))


def read_trace(path: Path, default_slo_s: dict[str, float] | None = None) -> list[Arrival]:
    """Arrivals from a CSV (header ``at_s,model,rows,deadline_ms``) or JSONL file."""
    rows: Iterable[dict[str, object]]
    with path.open() as f:
        if path.suffix in {".jsonl", ".json"}:
            rows = [json.loads(line) for line in f if line.strip()]
        else:
            rows = list(csv.DictReader(f))
    out = []
    for number, row in enumerate(rows, 1):
        try:
            model = str(row["model"])
            deadline = row.get("deadline_ms")
            if deadline in (None, ""):
                slo_s = (default_slo_s or {})[model]
            else:
                slo_s = float(str(deadline)) / 1e3
            out.append(
                Arrival(float(str(row["at_s"])), model, int(str(row.get("rows") or 1)), slo_s)
            )
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{path}:{number}: bad trace record {row!r}: {exc}") from None
    out.sort(key=lambda a: a.at_s)
    return out


def write_trace(path: Path, arrivals: Sequence[Arrival]) -> None:
    """Write arrivals as a trace ``read_trace`` reads (CSV or JSONL by suffix)."""
    with path.open("w", newline="") as f:
        if path.suffix in {".jsonl", ".json"}:
            for a in arrivals:
                record = {"at_s": a.at_s, "model": a.model, "rows": a.rows}
                f.write(json.dumps({**record, "deadline_ms": a.slo_s * 1e3}) + "\n")
        else:
            writer = csv.writer(f)
            writer.writerow(["at_s", "model", "rows", "deadline_ms"])
            for a in arrivals:
                writer.writerow([f"{a.at_s:.6f}", a.model, a.rows, f"{a.slo_s * 1e3:.3f}"])
