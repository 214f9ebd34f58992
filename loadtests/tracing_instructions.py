"""Machine instructions per ModelInfer request of the gateway, tracing off vs on, under callgrind.

    python -m loadtests.tracing_instructions [--requests 800] [--concurrency 8]
        [--baseline ../main] [--keep DIR]

CPU time per request on a shared machine moves by tens of percent between
rounds; the instructions a request costs move by a few. This starts one
``tritonserver`` and one ``rotel`` collector, then one gateway at a time
(``python -m gateway serve``, as a user starts it) under valgrind's callgrind
with instrumentation off: tracing off, tracing on (100 % sampled, OTLP to the
collector), and with ``--baseline`` another checkout's gateway, tracing on.
Each is warmed with 200 ghz calls; then callgrind counts (``callgrind_control
-i on``) while ``ghz`` sends ``--requests`` calls at ``--concurrency``, and the
gateway stops. Reported per request: instructions (callgrind's ``Ir``) of the
event loop's thread (the one that bounds throughput at saturation) and of all
the gateway's threads (the span export process is not counted). Under
callgrind the gateway runs some 50 times slower, so its batches are those of
that pace, and its timed work (the 100 ms sender of span records, health
probes) counts for more than at full speed. Needs ``valgrind`` and ghz.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadtests.suite.load import find_ghz
from loadtests.tracing_overhead import ROOT, on_env, run_ghz
from tests.collector import start_collector
from tests.support.triton import MODEL_REPOSITORY, start_triton

_START_TIMEOUT_S = 300


def totals(out: Path) -> tuple[int, int]:
    """Instructions of the main thread and of all threads, from callgrind's
    per-thread files ``out-01``, ``out-02``, ... (``--separate-threads``)."""
    main = every = 0
    for part in sorted(out.parent.glob(f"{out.name}-*")):
        for line in part.read_text(errors="replace").splitlines():
            if line.startswith("totals:"):
                count = int(line.split()[1])
                every += count
                main += count if part.name.endswith("-01") else 0
                break
    return main, every


def measure_one(
    label: str, tree: Path, env: dict[str, str], args: argparse.Namespace, work: Path
) -> dict[str, float]:
    ghz = str(find_ghz())
    port_file = work / f"{label}.port"
    out = work / f"{label}.cg"
    command = [
        "valgrind", "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes",
        f"--callgrind-out-file={out}", sys.executable, "-m", "gateway", "serve",
        "--host", "127.0.0.1", "--port", "0", "--port-file", str(port_file),
        "--triton", args.triton, "--no-cpu-models", "--log-level", "WARNING",
    ]  # fmt: skip
    # A health probe is slow under callgrind: one that timed out would mark the
    # Triton down, and its requests would fail instead of being counted.
    env = {**os.environ, "GATEWAY_PROBE_TIMEOUT_S": "30", **env}
    with (work / f"{label}.log").open("wb") as log:
        process = subprocess.Popen(command, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not (port_file.exists() and port_file.read_text().strip()):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{label}: the gateway did not start (log in {work})")
            time.sleep(0.5)
        address = f"127.0.0.1:{port_file.read_text().strip()}"
        run_ghz(ghz, address, 200, args.concurrency)  # warm: channels, layouts, estimates
        control = ["callgrind_control", "-i"]
        subprocess.run([*control, "on", str(process.pid)], check=True, capture_output=True)
        result = run_ghz(ghz, address, args.requests, args.concurrency)
        subprocess.run([*control, "off", str(process.pid)], check=True, capture_output=True)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(120)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    main, every = totals(out)
    return {
        "main_per_request": main / args.requests,
        "all_per_request": every / args.requests,
        "errors": result["errors"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=800)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--baseline", type=Path, help="another checkout, traced in the same run")
    parser.add_argument("--keep", type=Path, help="copy callgrind's files here")
    args = parser.parse_args()
    if shutil.which("valgrind") is None or find_ghz() is None:
        raise SystemExit("needs valgrind and ghz ($GHZ, PATH or ../shared/tools/ghz)")
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with (
            start_collector(work / "rotel", print_spans=False) as collector,
            start_triton(MODEL_REPOSITORY, work / "triton") as triton,
        ):
            args.triton = triton.grpc_url
            traced = on_env(collector.grpc_endpoint)
            runs = [("off", ROOT, {"OTEL_TRACES_EXPORTER": "none"}), ("on", ROOT, traced)]
            if args.baseline is not None:
                runs.append(("on, baseline tree", args.baseline.resolve(), traced))
            for label, tree, env in runs:
                name = f"{label.split(',')[0]}{len(results)}"
                results[label] = measure_one(name, tree, env, args, work)
                print(f"{label}: {results[label]}", flush=True)
        if args.keep is not None:
            skip = shutil.ignore_patterns("rotel", "triton")
            shutil.copytree(work, args.keep, dirs_exist_ok=True, ignore=skip)
    off = results["off"]
    print(f"instructions per request ({args.requests} calls at concurrency {args.concurrency}):")
    for label, row in results.items():
        main_up = row["main_per_request"] / off["main_per_request"] - 1
        all_up = row["all_per_request"] / off["all_per_request"] - 1
        print(
            f"  {label}: event loop's thread {row['main_per_request']:,.0f} ({main_up:+.1%}), "
            f"all threads {row['all_per_request']:,.0f} ({all_up:+.1%}), errors {row['errors']:.0f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
