"""The real half of ``loadtests.sim_vs_real``: servers, gateway and load.

Two tritonservers serving ``gpu_sim`` at two speeds and the gateway's CPU
pool serving its twin (``tests.support.cpu_sim``), driven through the gateway
by the project's open-loop load generator. Besides latencies and each
backend's share of the answered requests (the gateway's own
``gateway_requests_total`` by backend), a run records what the live
scheduler saw: each backend's mean call time as the gateway timed it
(``gateway_backend_call_duration_seconds``), and the service time its
estimator holds for each backend
(``gateway_backend_service_time_seconds``, batches of one), sampled every
second during the load, since that figure, not the configured device
cost, is what the policy compares with the time left; and, from each Triton
server's own trace, how long it held each call and how soon it started the
next one queued (``loadtests.triton_trace``).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import statistics
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families

from loadtests.loadgen import fp32_inputs, run_load
from loadtests.triton_trace import per_call, trace_args
from tests.support.gateway import start_gateway
from tests.support.triton import MODEL_REPOSITORY, start_triton


@dataclass(frozen=True)
class FleetMs:
    """Each device's cost per batch, ``fixed + per_row * rows`` ms; the CPU pool's threads."""

    fast: tuple[float, float] = (40.0, 1.0)
    slow: tuple[float, float] = (80.0, 2.0)
    cpu: tuple[float, float] = (50.0, 4.0)
    cpu_workers: int = 2

    def describe(self) -> str:
        return (
            f"tritonserver fast ({self.fast[0]:g} ms + {self.fast[1]:g} ms/row), tritonserver "
            f"slow ({self.slow[0]:g} ms + {self.slow[1]:g} ms/row), gateway CPU pool "
            f"({self.cpu[0]:g} ms + {self.cpu[1]:g} ms/row, {self.cpu_workers} threads)"
        )


def _env(fixed_ms: float, row_ms: float, prefix: str) -> dict[str, str]:
    return {f"{prefix}_FIXED_MS": str(fixed_ms), f"{prefix}_PER_ITEM_MS": str(row_ms)}


def _stats(url: str) -> tuple[int, int, float, float]:
    """The server's counts so far: rows, executions, queue and compute seconds
    summed over its requests (each request of a batch counts the batch's)."""
    model = grpcclient.InferenceServerClient(url).get_inference_statistics("gpu_sim")
    m = model.model_stats[0]
    s = m.inference_stats
    compute = s.compute_input.ns + s.compute_infer.ns + s.compute_output.ns
    return int(m.inference_count), int(m.execution_count), s.queue.ns / 1e9, compute / 1e9


def _server_view(url: str, before: tuple[int, int, float, float]) -> dict[str, float]:
    """What a server saw since ``before``: rows a batch, queue and compute ms a request."""
    rows, runs, queue_s, compute_s = (a - b for a, b in zip(_stats(url), before, strict=True))
    return {
        "rows_per_batch": rows / max(1, runs),
        "queue_ms": queue_s / max(1, rows) * 1e3,
        "compute_ms": compute_s / max(1, rows) * 1e3,
    }


def _cpu_s(pid: int) -> float:
    """A process's utime + stime so far, seconds (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_probe(address: str, pid: int, rate: float, idle_cpu_per_s: float) -> tuple[float, float]:
    """Gateway and load-generator CPU ms per request over a 3 s load at ``rate``."""
    inputs = fp32_inputs("INPUT", (1, 8))
    began, gw0, me0 = time.perf_counter(), _cpu_s(pid), time.process_time()
    result = asyncio.run(
        run_load(address, "gpu_sim", inputs, concurrency=256, duration_s=3.0, rate=rate)
    )
    took = time.perf_counter() - began
    count = max(1, result.count)
    gateway = max(0.0, _cpu_s(pid) - gw0 - idle_cpu_per_s * took)
    return gateway / count * 1e3, (time.process_time() - me0) / count * 1e3


def _samples(metrics_url: str, prefix: str, model: str) -> list[tuple[str, dict[str, str], float]]:
    """The gateway's samples for ``model`` whose name starts with ``prefix``,
    now: (sample name, labels, value). By sample name, not family name: the
    parser files a counter's ``_total`` samples under either, depending on
    how its TYPE line is written."""
    with urllib.request.urlopen(metrics_url, timeout=5) as reply:
        text = reply.read().decode()
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith(prefix) and sample.labels.get("model") == model
    ]


def _served_by_backend(metrics_url: str, model: str) -> dict[str, float]:
    """Requests the gateway answered OK so far, by backend (``gateway_requests_total``)."""
    served: dict[str, float] = {}
    for _, labels, value in _samples(metrics_url, "gateway_requests_total", model):
        if labels.get("code") == "OK":
            backend = labels.get("backend", "")
            served[backend] = served.get(backend, 0.0) + value
    return served


def _learnt_service_s(metrics_url: str, model: str) -> dict[str, float]:
    """The estimator's service time for a batch of one, by backend, now."""
    return {
        labels["backend"]: value
        for _, labels, value in _samples(metrics_url, "gateway_backend_service_time_seconds", model)
        if labels.get("batch_bucket") == "1"
    }


def _calls(metrics_url: str, model: str) -> dict[str, tuple[float, float]]:
    """Backend calls so far, by backend: seconds in all, and how many
    (``gateway_backend_call_duration_seconds``, as the gateway timed them)."""
    calls: dict[str, tuple[float, float]] = {}
    for name, labels, value in _samples(
        metrics_url, "gateway_backend_call_duration_seconds_", model
    ):
        total, count = calls.get(labels["backend"], (0.0, 0.0))
        if name.endswith("_sum"):
            calls[labels["backend"]] = (total + value, count)
        elif name.endswith("_count"):
            calls[labels["backend"]] = (total, count + value)
    return calls


class LearntSampler(threading.Thread):
    """Reads the gateway's learnt service times every ``every_s`` until
    stopped; ``stop`` returns each backend's median over the samples. A
    median over the run, not the value at its end: the estimator is an EWMA
    that moves with the last few calls, and the policy used every value it
    held. It runs in the load generator's process, one scrape a second."""

    def __init__(self, metrics_url: str, model: str, every_s: float = 1.0) -> None:
        super().__init__(daemon=True)
        self._url, self._model, self._every_s = metrics_url, model, every_s
        self._stop_event = threading.Event()
        self.samples: dict[str, list[float]] = {}

    def run(self) -> None:
        while not self._stop_event.wait(self._every_s):
            for backend, value in _learnt_service_s(self._url, self._model).items():
                self.samples.setdefault(backend, []).append(value)

    def stop(self) -> dict[str, float]:
        self._stop_event.set()
        self.join()
        return {k: statistics.median(v) for k, v in self.samples.items() if v}


def real_run(
    rate: float,
    duration_s: float,
    fleet: FleetMs,
    *,
    deadline_s: float = 10.0,
    poisson_seed: int | None = None,
    cpu_probe_rate: float = 0.0,
) -> dict[str, object]:
    """Gateway and servers up, a warm-up, then ``rate`` req/s for ``duration_s``
    (Poisson with ``poisson_seed``, each call with ``deadline_s``); with
    ``cpu_probe_rate``, then a 3 s load at that rate to measure CPU per request."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with (
            start_triton(
                MODEL_REPOSITORY,
                work / "fast",
                env=_env(*fleet.fast, "GPU_SIM"),
                extra_args=trace_args(work / "fast.trace.json"),
            ) as fast,
            start_triton(
                MODEL_REPOSITORY,
                work / "slow",
                env=_env(*fleet.slow, "GPU_SIM"),
                extra_args=trace_args(work / "slow.trace.json"),
            ) as slow,
        ):
            metrics = {t.grpc_url: t.metrics_url for t in (fast, slow)}
            port_file = work / "metrics.port"
            with start_gateway(
                work / "gw",
                args=[
                    *("--triton", fast.grpc_url, "--triton", slow.grpc_url),
                    *("--cpu-model", "tests.support.cpu_sim:gpu_sim"),
                ],
                env={
                    **_env(*fleet.cpu, "CPU_SIM"),
                    "GATEWAY_CPU_WORKERS": str(fleet.cpu_workers),
                    "GATEWAY_TRITON_METRICS_URLS": json.dumps(metrics),
                    "GATEWAY_METRICS_PORT": "0",
                    "GATEWAY_METRICS_PORT_FILE": str(port_file),
                },
            ) as gateway:
                up_at = time.perf_counter()  # its dispatcher's timers started before this
                while not port_file.exists() or not port_file.read_text().strip():
                    time.sleep(0.05)  # written as the metrics server starts
                metrics_url = f"http://127.0.0.1:{int(port_file.read_text())}/metrics"
                names = {f"triton@{fast.grpc_url}": "fast", f"triton@{slow.grpc_url}": "slow"}
                inputs = fp32_inputs("INPUT", (1, 8))
                quiet_from, quiet_cpu = time.perf_counter(), _cpu_s(gateway.pid)
                time.sleep(2.0)  # what the gateway burns with no requests (telemetry, timers)
                idle_cpu_per_s = (_cpu_s(gateway.pid) - quiet_cpu) / (
                    time.perf_counter() - quiet_from
                )
                # Warm-up: the gateway learns service times, as the simulator's seeds say.
                asyncio.run(
                    run_load(gateway.address, "gpu_sim", inputs, concurrency=4, duration_s=2)
                )
                before = _served_by_backend(metrics_url, "gpu_sim")
                calls_before = _calls(metrics_url, "gpu_sim")
                counts = {"fast": _stats(fast.grpc_url), "slow": _stats(slow.grpc_url)}
                at_start = _learnt_service_s(metrics_url, "gpu_sim")
                sampler = LearntSampler(metrics_url, "gpu_sim")
                sampler.start()
                began, gw0, me0 = time.perf_counter(), _cpu_s(gateway.pid), time.process_time()
                result = asyncio.run(
                    run_load(
                        gateway.address,
                        "gpu_sim",
                        inputs,
                        concurrency=256,
                        duration_s=duration_s,
                        rate=rate,
                        timeout_s=deadline_s,
                        poisson_seed=poisson_seed,
                    )
                )
                took = time.perf_counter() - began
                gateway_cpu = _cpu_s(gateway.pid) - gw0 - idle_cpu_per_s * took
                client_cpu = time.process_time() - me0
                learnt = {
                    names.get(backend, "cpu"): seconds
                    for backend, seconds in sampler.stop().items()
                }
                after = _served_by_backend(metrics_url, "gpu_sim")
                call_ms: dict[str, float] = {}
                for backend, (total, count) in _calls(metrics_url, "gpu_sim").items():
                    old_total, old_count = calls_before.get(backend, (0.0, 0.0))
                    if count > old_count:
                        mean_ms = (total - old_total) / (count - old_count) * 1e3
                        call_ms[names.get(backend, "cpu")] = mean_ms
                served = {"fast": 0.0, "slow": 0.0, "cpu": 0.0}
                for backend, value in after.items():
                    name = names.get(backend, "cpu")  # the gateway's CPU pool otherwise
                    served[name] += value - before.get(backend, 0.0)
                servers = {
                    "fast": _server_view(fast.grpc_url, counts["fast"]),
                    "slow": _server_view(slow.grpc_url, counts["slow"]),
                }
                probe = (math.nan, math.nan)
                if cpu_probe_rate > 0:
                    probe = _cpu_probe(gateway.address, gateway.pid, cpu_probe_rate, idle_cpu_per_s)
        # The servers have stopped and written their traces: each call of the load.
        traced = {
            name: per_call(work / f"{name}.trace.json", began, began + took)
            for name in ("fast", "slow")
            if (work / f"{name}.trace.json").exists()
        }
    total = max(1.0, sum(served.values()))
    return {
        "requests": result.count,
        "ok": result.ok,
        "statuses": dict(result.statuses),
        "p50_ms": result.percentile_ms(50),
        "p99_ms": result.percentile_ms(99),
        "share": {k: v / total for k, v in served.items()},
        "gateway_cpu_ms_per_request": max(0.0, gateway_cpu) / max(1, result.count) * 1e3,
        "client_cpu_ms_per_request": client_cpu / max(1, result.count) * 1e3,
        "gateway_idle_cpu_per_s": idle_cpu_per_s,
        "servers": servers,
        "learnt_service_ms": {k: v * 1e3 for k, v in learnt.items()},
        # Triton's own trace, per call (``loadtests.triton_trace.per_call``).
        "triton_calls": traced,
        # The estimator's state as the load began (after the warm-up).
        "learnt_at_start_ms": {names.get(b, "cpu"): v * 1e3 for b, v in at_start.items()},
        "call_ms": call_ms,
        "probe_rate": cpu_probe_rate,
        "probe_gateway_cpu_ms_per_request": probe[0],
        "probe_client_cpu_ms_per_request": probe[1],
        "latencies_ms": [x * 1e3 for x in result.latencies_s],
        "sent_at_s": result.sent_at_s,
        # When the load began, from the gateway's start: its estimator's
        # stale sweeps fall at whole ``stale_estimate_s`` from there.
        "gateway_up_s": began - up_at,
    }
