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
import functools
import shutil
import tempfile
from pathlib import Path

from loadtests.callgrind_load import (
    GATEWAY_ENV,
    Load,
    count_per_request,
    gateway_command,
    tools_missing,
)
from loadtests.tracing_overhead import ROOT, on_env
from tests.collector import start_collector
from tests.support.triton import MODEL_REPOSITORY, start_triton


def measure_one(
    label: str, tree: Path, env: dict[str, str], args: argparse.Namespace, work: Path
) -> dict[str, float]:
    command = functools.partial(gateway_command, args.triton)
    load = Load(args.requests, args.concurrency)
    counted = count_per_request(
        label, command, {**GATEWAY_ENV, **env}, cwd=tree, work=work, load=load
    )
    return {
        "main_per_request": counted.main_per_request,
        "all_per_request": counted.all_per_request,
        "errors": counted.errors,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=800)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--baseline", type=Path, help="another checkout, traced in the same run")
    parser.add_argument("--keep", type=Path, help="copy callgrind's files here")
    args = parser.parse_args()
    if missing := tools_missing():
        raise SystemExit(missing)
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
