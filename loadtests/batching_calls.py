"""Python function calls per batched request, counted in process: a figure load cannot blur.

    python -m loadtests.batching_calls [--requests 5000] [--top 40]

CPU time per request on a shared 2-core machine moves by tens of percent from one
run to the next; the number of Python calls a request costs does not.  This starts
the suite's ``tritonserver`` (``gpu_sim``: 2 ms + 20 us per row, max batch 64), builds
the gateway in this process with a 2 ms queue delay (as the suite's batching route),
and sends ``ModelInfer`` through the servicer, 256 callers at a time, with a context
that carries a 30 s deadline as ghz's calls do; gRPC's own server is left out.  After
a warm-up it counts, with ``sys.setprofile``, every Python function call and every
call into C, and prints the calls per request, the share made in ``scheduler/``, and
the most frequent ones.  To compare with another tree, copy this file into that
tree's ``loadtests/`` and run it there with ``python -m`` (this venv's Python).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

from gateway.config import load_settings
from gateway.server import GatewayServer
from gateway.servicer import InferenceServicer
from loadtests.suite.payloads import GPU_SIM
from loadtests.suite.servers import GPU_COST
from tests.support.triton import MODEL_REPOSITORY, start_triton

CALLERS = 256


class _Context:
    """What the servicer reads of a gRPC context: no metadata, a 30 s deadline."""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def time_remaining(self) -> float:
        return 30.0

    def set_trailing_metadata(self, metadata: object) -> None:
        pass

    async def abort(self, code: object, details: str = "") -> None:
        raise SystemExit(f"a request failed ({code}: {details}): its calls would not count")


async def _send(servicer: InferenceServicer, requests: int) -> None:
    context: Any = _Context()
    data = GPU_SIM.request_bytes()
    left = requests

    async def caller() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await servicer.ModelInfer(data, context)

    await asyncio.gather(*(caller() for _ in range(CALLERS)))


async def count(url: str, requests: int) -> collections.Counter[tuple[str, str]]:
    # A slow probe on a busy machine must not eject the one backend mid-count.
    settings = load_settings(
        triton_endpoints=[url], cpu_models=[], default_max_queue_delay_us=2000, probe_timeout_s=30
    )
    server = GatewayServer(settings)
    await server.scheduler.start()
    server.servicer.ready = True
    counts: collections.Counter[tuple[str, str]] = collections.Counter()

    def seen(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            code = frame.f_code
            counts["/".join(code.co_filename.split("/")[-2:]), code.co_name] += 1
        elif event == "c_call":
            counts["C", getattr(arg, "__qualname__", repr(arg))] += 1

    try:
        await _send(server.servicer, 3000)  # warm-up: layouts, plans, estimates
        sys.setprofile(seen)
        try:
            await _send(server.servicer, requests)
        finally:
            sys.setprofile(None)
    finally:
        await server.scheduler.aclose()
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        start_triton(MODEL_REPOSITORY, Path(tmp), env=GPU_COST) as triton,
    ):
        counts = asyncio.run(count(triton.grpc_url, args.requests))
    n = args.requests
    total = sum(counts.values())
    scheduler = sum(v for (where, _), v in counts.items() if where.startswith(_SCHEDULER))
    print(f"Python calls per batched request: {total / n:.1f} (in scheduler/: {scheduler / n:.1f})")
    for (where, name), calls in counts.most_common(args.top):
        print(f"{calls / n:8.2f}  {where}  {name}")
    return 0


#: File paths (their last two parts) of the scheduler's modules.
_SCHEDULER = ("batching/", "scheduler/", "backends/", "telemetry/")

if __name__ == "__main__":
    raise SystemExit(main())
