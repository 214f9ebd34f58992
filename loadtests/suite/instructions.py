"""Instructions per passthrough request: the gateway beside floor B, under callgrind.

    python -m loadtests.suite.instructions [--requests 1000] [--concurrency 8] [--slowdown 50]
        [--rounds 1] [--idle-s 0] [--baseline ../main] [--keep DIR]

The load-proof form of the suite's first target (gateway CPU per request <= 1.1x
floor B on the passthrough path). One ``tritonserver`` (tests/models/triton)
serves ``add_sub``; in front of it, one at a time and under callgrind
(``loadtests.callgrind_load``): floor B (``loadtests.suite.floors proxy``, the
bare ``grpc.aio`` bytes proxy) and the gateway as the suite starts it
(``--triton`` only, ``add_sub`` not batched, Triton's metrics polled), and with
each ``--baseline`` (repeatable) another checkout's gateway the same way. Each is warmed with
200 ghz calls, then counted over ``--requests`` calls at ``--concurrency``.
Reported per request: instructions of the event loop's thread and of all
threads, and each as a ratio to floor B's.

Under callgrind the gateway runs some 50 times slower than at full speed, so
its timed work (health probes, telemetry polls, model rediscovery) would
weigh some 50 times more per request than it does at full speed: the
gateway's periods (``_PERIODS``) are stretched by ``--slowdown`` (default 50)
so that it weighs about as much as at full speed. With ``--idle-s`` the tool
also counts that long a stretch with no load and reports the counts net of
that idle rate over the load's duration (a check that what is left of the
timed work is small; the idle rate is a noisy estimate).
``--rounds`` repeats the whole sequence, alternating the servers.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from gateway.config import Settings
from loadtests.callgrind_load import (
    GATEWAY_ENV,
    Command,
    Counted,
    Load,
    count_per_request,
    gateway_command,
    tools_missing,
)
from loadtests.suite.servers import REPO, gateway_triton_env
from tests.support.triton import MODEL_REPOSITORY, TritonProcess, start_triton


def _floor_b(triton: TritonProcess, slowdown: float) -> tuple[Command, dict[str, str]]:
    def command(port_file: Path) -> list[str]:
        floor = [sys.executable, "-m", "loadtests.suite.floors", "proxy"]
        return [*floor, "--target", triton.grpc_url, "--port-file", str(port_file)]

    return command, {}


#: The gateway's timed work: each period is stretched by ``--slowdown``.
_PERIODS = (
    "health_interval_s",
    "rediscover_interval_s",
    "dns_interval_s",
    "telemetry_interval_s",
    "telemetry_max_age_s",
    "stale_estimate_s",
)


def _gateway(triton: TritonProcess, slowdown: float) -> tuple[Command, dict[str, str]]:
    env = {**gateway_triton_env(triton), **GATEWAY_ENV}
    fields = Settings.model_fields
    for name in _PERIODS:
        env[f"GATEWAY_{name.upper()}"] = str(float(fields[name].default) * slowdown)
    return functools.partial(gateway_command, triton.grpc_url), env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--idle-s", type=float, default=0.0, help="count this long idle")
    parser.add_argument(
        "--slowdown",
        type=float,
        default=50.0,
        help="the gateway's periods are this many times longer",
    )
    parser.add_argument(
        "--baseline", type=Path, action="append", default=[], help="another checkout's gateway"
    )
    parser.add_argument("--keep", type=Path, help="copy callgrind's files and logs here")
    parser.add_argument("--json", type=Path, help="write every count here")
    args = parser.parse_args()
    if missing := tools_missing():
        raise SystemExit(missing)
    load = Load(args.requests, args.concurrency, args.idle_s)
    servers = [("floor B", REPO, _floor_b), ("gateway", REPO, _gateway)]
    for tree in args.baseline:
        servers.append((f"gateway, tree {tree.resolve()}", tree.resolve(), _gateway))
    counts: dict[str, list[Counted]] = {label: [] for label, _, _ in servers}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with start_triton(MODEL_REPOSITORY, work / "triton") as triton:
            for round_ in range(args.rounds):
                for number, (label, tree, how) in enumerate(servers):
                    name = f"server{number}-round{round_}"
                    command, env = how(triton, args.slowdown)
                    counted = count_per_request(name, command, env, cwd=tree, work=work, load=load)
                    counts[label].append(counted)
                    print(f"round {round_} {label}: {counted}", flush=True)
        if args.keep is not None:
            shutil.copytree(
                work, args.keep, dirs_exist_ok=True, ignore=shutil.ignore_patterns("triton")
            )
    if args.json is not None:
        table = {k: [_row(c) for c in v] for k, v in counts.items()}
        args.json.write_text(json.dumps(table, indent=1))
    print(
        f"instructions per request ({args.requests} calls at concurrency {args.concurrency}, "
        f"median of {args.rounds} round(s)):"
    )
    fields = ["main_per_request", "all_per_request"]
    if args.idle_s > 0:
        fields = ["net_main_per_request", "net_all_per_request", *fields]
    floor = {name: _median(counts["floor B"], name) for name in fields}
    for label, rows in counts.items():
        print(f"  {label} (errors {sum(c.errors for c in rows):.0f}):")
        for name in fields:
            value = _median(rows, name)
            print(f"    {_WORDS[name]}: {value:,.0f} ({value / floor[name]:.2f}x floor B)")
        if args.idle_s > 0:
            idle = _median(rows, "idle_main_per_s"), _median(rows, "idle_all_per_s")
            print(f"    idle, per second: event loop's thread {idle[0]:,.0f}, all {idle[1]:,.0f}")
    return 0


def _row(counted: Counted) -> dict[str, float]:
    fields = {**vars(counted)}
    fields["net_main_per_request"] = counted.net_main_per_request
    fields["net_all_per_request"] = counted.net_all_per_request
    return fields


_WORDS = {
    "net_main_per_request": "event loop's thread, net of idle",
    "net_all_per_request": "all threads, net of idle",
    "main_per_request": "event loop's thread",
    "all_per_request": "all threads",
}


def _median(rows: list[Counted], field: str) -> float:
    return statistics.median(float(getattr(c, field)) for c in rows)


if __name__ == "__main__":
    raise SystemExit(main())
