"""Decoupled streaming through the gateway vs straight to Triton (issue 13's proof).

The model is ``repeat`` (tests/models/stateful): one request asks for
``--responses`` responses, ``--delay-ms`` apart, on a ModelStreamInfer stream.
For each concurrency (1, 16, 64 streams open at once) and each target:

* ghz drives the load (``$GHZ``, else ``../shared/tools/ghz``): one ghz call is
  one stream carrying one request, so responses/s = OK streams x responses per
  stream / wall time. ghz times whole streams, not the first response.
* Time to first response (TTFR) comes from a small tritonclient stream driver
  (threads, one stream each) at 1 and 16 streams, run alone after ghz, and from
  the gateway's own ``gateway_stream_first_response_seconds`` histogram over the
  ghz run (its p50/p99 are Prometheus-style bucket estimates).
* The gateway's CPU is utime+stime from /proc over the ghz run, per response.

Without ghz the tritonclient driver also measures throughput, and says so.
Every run is bounded by a duration; the whole benchmark takes about 3 minutes.

    python -m loadtests.stream_bench            # writes loadtests/results/stream.{md,json}
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import queue
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

from loadtests import stream_stats as stats
from loadtests.suite.load import find_ghz
from tests.support.gateway import start_gateway
from tests.support.triton import start_triton

ROOT = Path(__file__).resolve().parents[1]
REPOSITORY = ROOT / "tests" / "models" / "stateful"
RESULTS = ROOT / "loadtests" / "results"
HISTOGRAM = "gateway_stream_first_response_seconds"
MODEL = "repeat"


def _request_json(responses: int, delay_ms: int) -> dict[str, Any]:
    def raw(array: np.ndarray) -> str:
        return base64.b64encode(array.astype("<i4").tobytes()).decode()

    return {
        "model_name": MODEL,
        "inputs": [
            {"name": "IN", "datatype": "INT32", "shape": [responses]},
            {"name": "DELAY_MS", "datatype": "INT32", "shape": [1]},
        ],
        "raw_input_contents": [raw(np.arange(responses)), raw(np.array([delay_ms]))],
    }


def run_ghz(
    ghz: str, address: str, concurrency: int, duration_s: float, request: Path
) -> dict[str, Any]:
    command = [
        ghz, "--insecure",
        "--proto", str(ROOT / "protos/inference/grpc_service.proto"),
        "--import-paths", str(ROOT / "protos"),
        "--call", "inference.GRPCInferenceService/ModelStreamInfer",
        "-d", f"@{request}",
        "-c", str(concurrency), "-z", f"{duration_s:g}s", "--duration-stop", "wait",
        "--timeout", "30s", "-O", "json", address,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration_s + 60)
    if done.returncode != 0 and not done.stdout.strip():
        raise RuntimeError(f"ghz failed: {done.stderr.strip()}")
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def _inputs(responses: int, delay_ms: int) -> list[grpcclient.InferInput]:
    data = grpcclient.InferInput("IN", [responses], "INT32")
    data.set_data_from_numpy(np.arange(responses, dtype=np.int32))
    delay = grpcclient.InferInput("DELAY_MS", [1], "INT32")
    delay.set_data_from_numpy(np.array([delay_ms], dtype=np.int32))
    return [data, delay]


def drive_streams(
    url: str, concurrency: int, responses: int, delay_ms: int, duration_s: float
) -> dict[str, Any]:
    """tritonclient streams, one per thread, each sending one request at a time
    until ``duration_s``; records each request's time to first response."""
    ttfr_s: list[float] = []
    counts: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + duration_s

    def worker(index: int) -> None:
        client = grpcclient.InferenceServerClient(url)
        arrived: queue.Queue[tuple[float, object]] = queue.Queue()
        client.start_stream(
            callback=lambda result, error: arrived.put((time.perf_counter(), error))
        )
        inputs, mine, got = _inputs(responses, delay_ms), [], 0
        try:
            while time.monotonic() < stop_at:
                sent = time.perf_counter()
                client.async_stream_infer(MODEL, inputs, request_id=f"{index}-{got}")
                for k in range(responses):
                    at, error = arrived.get(timeout=30)
                    if error is not None:
                        raise RuntimeError(str(error))
                    if k == 0:
                        mine.append(at - sent)
                got += responses
        except Exception as exc:  # reported in the results, not fatal
            with lock:
                errors.append(repr(exc))
        finally:
            client.stop_stream()
            client.close()
        with lock:
            ttfr_s.extend(mine)
            counts.append(got)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=duration_s + 60)
    wall_s = time.perf_counter() - started
    return {
        "responses": sum(counts),
        "responses_per_s": sum(counts) / wall_s,
        "ttfr_p50_s": stats.percentile(ttfr_s, 0.5),
        "ttfr_p99_s": stats.percentile(ttfr_s, 0.99),
        "requests": len(ttfr_s),
        "errors": errors[:3],
    }


def _cpu_s(pid: int) -> float:
    """utime+stime of ``pid`` and its child processes (gateway workers), seconds."""
    ticks = float(os.sysconf("SC_CLK_TCK"))
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            line = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(line.rsplit(")", 1)[1].split()[1])
        if int(entry.name) == pid or ppid == pid:
            total += stats.proc_cpu_seconds(line, ticks)
    return total


def _scrape(url: str) -> stats.Buckets:
    with urllib.request.urlopen(url, timeout=5) as response:
        return stats.histogram_buckets(response.read().decode(), HISTOGRAM)


def bench(args: argparse.Namespace) -> dict[str, Any]:
    found = find_ghz()
    ghz = str(found) if found else None
    driver = "ghz" if ghz else "tritonclient stream driver (ghz not found)"
    print(f"throughput driver: {driver}", flush=True)
    rows: list[dict[str, float]] = []
    raw: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        request = work / "request.json"
        request.write_text(json.dumps(_request_json(args.responses, args.delay_ms)))
        with start_triton(REPOSITORY, work / "triton") as triton:
            metrics_port = work / "metrics.port"
            gw_args = ["--triton", triton.grpc_url, "--no-cpu-models", "--metrics-port", "0",
                       "--metrics-port-file", str(metrics_port)]  # fmt: skip
            with start_gateway(work / "gw", args=gw_args) as gateway:
                metrics = f"http://127.0.0.1:{int(metrics_port.read_text())}/metrics"
                targets = {"direct": triton.grpc_url, "gateway": gateway.address}
                drive_streams(gateway.address, 4, args.responses, args.delay_ms, 2.0)  # warm-up
                for concurrency in args.concurrency:
                    row: dict[str, float] = {"concurrency": concurrency}
                    entry: dict[str, Any] = {"concurrency": concurrency}
                    for name, address in targets.items():
                        before_hist, before_cpu = _scrape(metrics), _cpu_s(gateway.pid)
                        if ghz:
                            report = run_ghz(ghz, address, concurrency, args.duration_s, request)
                            summary = stats.ghz_summary(report, args.responses)
                            entry[f"{name}_ghz"] = summary | {
                                "errors": report.get("errorDistribution") or {}
                            }
                            responses = summary["streams_ok"] * args.responses
                            row[f"{name}_rps"] = summary["responses_per_s"]
                        else:
                            result = drive_streams(address, concurrency, args.responses,
                                                   args.delay_ms, args.duration_s)  # fmt: skip
                            entry[f"{name}_driver"] = result
                            responses = result["responses"]
                            row[f"{name}_rps"] = result["responses_per_s"]
                        if name == "gateway":
                            cpu_s = _cpu_s(gateway.pid) - before_cpu
                            row["gateway_cpu_s_per_response"] = cpu_s / max(responses, 1)
                            delta = stats.bucket_delta(before_hist, _scrape(metrics))
                            row["hist_p50_s"] = stats.histogram_quantile(delta, 0.5)
                            row["hist_p99_s"] = stats.histogram_quantile(delta, 0.99)
                        print(
                            f"c={concurrency} {name}: {row[f'{name}_rps']:,.0f} responses/s",
                            flush=True,
                        )
                    for name, address in targets.items():
                        nan = float("nan")
                        if concurrency in args.ttfr_concurrency:
                            ttfr = drive_streams(address, concurrency, args.responses,
                                                 args.delay_ms, args.ttfr_duration_s)  # fmt: skip
                            entry[f"{name}_ttfr_driver"] = ttfr
                            row[f"ttfr_p50_{name}_s"] = ttfr["ttfr_p50_s"]
                            row[f"ttfr_p99_{name}_s"] = ttfr["ttfr_p99_s"]
                        else:
                            row[f"ttfr_p50_{name}_s"] = row[f"ttfr_p99_{name}_s"] = nan
                    rows.append(row)
                    raw.append(entry | {"row": row})
    return {"driver": driver, "ghz": ghz, "rows": rows, "runs": raw}


def _write(result: dict[str, Any], args: argparse.Namespace, out: Path) -> None:
    command = "python -m loadtests.stream_bench " + " ".join(args.argv)
    result |= {
        "command": command.strip(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "responses_per_stream": args.responses,
        "delay_ms": args.delay_ms,
        "duration_s": args.duration_s,
    }
    out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    text = [
        "# Decoupled streaming: gateway vs direct Triton\n",
        f"`{result['command']}` — model `repeat` (Python backend), {args.responses} responses "
        f"per stream, {args.delay_ms} ms apart; {args.duration_s:g} s per run. Throughput "
        f"driver: {result['driver']}. Machine: {result['machine']}, **shared with the "
        "Tritons, the gateway and the load generators**: every process competes for the same "
        "2 cores, so absolute numbers are low and the ratio is the figure to read.\n",
        stats.markdown_table(result["rows"]),
        "\n* resp/s: OK streams x responses per stream / wall time (ghz counts streams, "
        "not messages). Direct and gateway runs use the same Triton, one after the other.\n"
        "* TTFR p50/p99 direct / gateway: the tritonclient stream driver (Python threads, "
        f"one stream each, run alone after ghz; at {' and '.join(map(str, args.ttfr_concurrency))} "
        "streams only), send to first "
        "response. Python client threads inflate it at 16 streams on both sides alike.\n"
        "* Gateway histogram TTFR: `gateway_stream_first_response_seconds` over the ghz run, "
        "bucket estimates (Prometheus `histogram_quantile` style): the gateway's own view, "
        "request received to first response sent.\n"
        "* Gateway CPU: utime+stime of the gateway process (and any child) from /proc over "
        "the ghz run, divided by responses delivered.\n",
    ]
    out.with_suffix(".md").write_text("\n".join(text))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--ttfr-concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--responses", type=int, default=50)
    parser.add_argument("--delay-ms", type=int, default=2)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--ttfr-duration-s", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "stream.md")
    args = parser.parse_args(argv)
    args.argv = argv if argv is not None else sys.argv[1:]
    result = bench(args)
    _write(result, args, args.out)
    print(stats.markdown_table(result["rows"]))


if __name__ == "__main__":
    main()
