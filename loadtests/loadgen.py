"""The project's load generator: closed-loop or open-loop load with the
unmodified tritonclient (asyncio gRPC), bounded in count and time, with a
ghz-compatible JSON summary and a one-line progress display.

    python -m loadtests.loadgen --target 127.0.0.1:8001 --model gpu_sim \\
        --concurrency 64 --duration 10 [--rate 500] [--shape 1,16] [--json out.json]

Closed loop (default): ``concurrency`` callers each send the next request as
soon as the previous one ends. Open loop (``--rate``): requests start on a
fixed schedule whatever the latency, at most ``concurrency`` in flight (the
rest are counted as ``dropped``), which shows queueing that closed loops hide.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException


@dataclass
class LoadResult:
    """What one load run saw. Latencies in seconds, per finished request."""

    concurrency: int
    duration_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    #: When each request was sent, seconds from the start (open loop only),
    #: so a simulator can replay the very same arrivals.
    sent_at_s: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    dropped: int = 0

    @property
    def count(self) -> int:
        return sum(self.statuses.values())

    @property
    def ok(self) -> int:
        return self.statuses["OK"]

    @property
    def rps(self) -> float:
        return self.ok / self.duration_s if self.duration_s else 0.0

    def percentile_ms(self, p: float) -> float:
        return float(np.percentile(self.latencies_s, p) * 1e3) if self.latencies_s else float("nan")

    def ghz(self) -> dict[str, Any]:
        """The summary in ghz's JSON shape (durations in ns), for shared tooling."""
        lat = np.array(self.latencies_s or [0.0]) * 1e9
        return {
            "count": self.count,
            "total": int(self.duration_s * 1e9),
            "average": int(lat.mean()),
            "fastest": int(lat.min()),
            "slowest": int(lat.max()),
            "rps": self.count / self.duration_s if self.duration_s else 0.0,
            "latencyDistribution": [
                {"percentage": p, "latency": int(np.percentile(lat, p))}
                for p in (10, 25, 50, 75, 90, 95, 99)
            ],
            "statusCodeDistribution": dict(self.statuses),
            "errorDistribution": dict(self.errors),
        }


def fp32_inputs(name: str, shape: tuple[int, ...]) -> Callable[[], list[grpcclient.InferInput]]:
    data = np.random.default_rng(0).standard_normal(shape).astype(np.float32)

    def make() -> list[grpcclient.InferInput]:
        tensor = grpcclient.InferInput(name, list(shape), "FP32")
        tensor.set_data_from_numpy(data)
        return [tensor]

    return make


async def run_load(
    target: str,
    model: str,
    make_inputs: Callable[[], list[grpcclient.InferInput]],
    *,
    concurrency: int,
    duration_s: float,
    max_requests: int | None = None,
    rate: float | None = None,
    timeout_s: float = 10.0,
    parameters: dict[str, Any] | None = None,
    progress: bool = False,
    poisson_seed: int | None = None,
) -> LoadResult:
    """Send load for ``duration_s`` (and at most ``max_requests``), then wait
    for what is in flight (each call bounded by ``timeout_s``). With ``rate``
    and ``poisson_seed``, the gaps between requests are exponential (Poisson
    arrivals) instead of fixed."""
    result = LoadResult(concurrency)
    sent = 0
    start = time.perf_counter()
    stop_at = start + duration_s
    async with aioclient.InferenceServerClient(target) as client:

        async def one(inputs: list[grpcclient.InferInput]) -> None:
            began = time.perf_counter()
            try:
                await client.infer(model, inputs, client_timeout=timeout_s, parameters=parameters)
            except InferenceServerException as exc:
                status = str(exc.status() or "UNKNOWN").removeprefix("StatusCode.")
                result.statuses[status] += 1
                result.errors[f"{status}: {(exc.message() or '')[:80]}"] += 1
                return
            result.statuses["OK"] += 1
            result.latencies_s.append(time.perf_counter() - began)

        def more() -> bool:
            return time.perf_counter() < stop_at and (max_requests is None or sent < max_requests)

        async def caller() -> None:
            nonlocal sent
            inputs = make_inputs()
            while more():
                sent += 1
                await one(inputs)

        async def scheduler() -> None:
            nonlocal sent
            slots = asyncio.Semaphore(concurrency)
            tasks: set[asyncio.Task[None]] = set()
            interval = 1.0 / (rate or 1.0)
            gaps = None if poisson_seed is None else np.random.default_rng(poisson_seed)
            inputs = make_inputs()
            next_at = time.perf_counter()
            while more():
                next_at += interval if gaps is None else gaps.exponential(interval)
                if slots.locked():
                    result.dropped += 1
                else:
                    await slots.acquire()
                    sent += 1
                    result.sent_at_s.append(time.perf_counter() - start)
                    task = asyncio.create_task(one(inputs))
                    task.add_done_callback(lambda t: (slots.release(), tasks.discard(t)))
                    tasks.add(task)
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            await asyncio.gather(*tasks)

        async def show() -> None:
            while True:
                await asyncio.sleep(0.5)
                done = result.count
                elapsed = time.perf_counter() - start
                sys.stderr.write(
                    f"\r{elapsed:5.1f}/{duration_s:.0f} s  {done} done  "
                    f"{done / elapsed:8.1f} req/s  errors {done - result.ok}   "
                )

        shower = asyncio.create_task(show()) if progress else None
        if rate:
            await scheduler()
        else:
            await asyncio.gather(*(caller() for _ in range(concurrency)))
        if shower is not None:
            shower.cancel()
            sys.stderr.write("\n")
    result.duration_s = time.perf_counter() - start
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--input", default="INPUT", help="FP32 input tensor name")
    parser.add_argument("--shape", default="1,16", help="input shape, e.g. 1,16")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--requests", type=int, default=None, help="stop after this many")
    parser.add_argument("--rate", type=float, default=None, help="open loop: requests/s")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--json", help="write the ghz-compatible summary here")
    args = parser.parse_args()
    shape = tuple(int(d) for d in args.shape.split(","))
    result = asyncio.run(
        run_load(
            args.target,
            args.model,
            fp32_inputs(args.input, shape),
            concurrency=args.concurrency,
            duration_s=args.duration,
            max_requests=args.requests,
            rate=args.rate,
            timeout_s=args.timeout,
            progress=sys.stderr.isatty(),
        )
    )
    summary = result.ghz()
    if args.json:
        with open(args.json, "w") as out:
            json.dump(summary, out, indent=2)
    print(
        f"{result.count} requests in {result.duration_s:.2f} s: {result.rps:.1f} ok/s, "
        f"p50 {result.percentile_ms(50):.2f} ms, p99 {result.percentile_ms(99):.2f} ms, "
        f"statuses {dict(result.statuses)}, dropped {result.dropped}"
    )


if __name__ == "__main__":
    main()
