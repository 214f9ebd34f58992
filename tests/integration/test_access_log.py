"""The access log: a line per request (sampled for OK, always for errors, rate-limited)
with trace id, model, backend, code, and the request's queue and backend times.

Real processes: one tritonserver and two gateways in front of it, each with
tracing off (the trace id in a line is then the caller's ``traceparent``):
one logs every OK request, the other none, at one line a second.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from gateway.api.inference import grpc_service_pb2_grpc as pb_grpc
from tests.support.gateway import GatewayProcess, start_gateway
from tests.support.traced_calls import int64_request
from tests.support.triton import MODEL_REPOSITORY, start_triton

LINE = re.compile(
    r"request model=(?P<model>\S+) code=(?P<code>\S+) backend=(?P<backend>\S+) "
    r"took_ms=(?P<took>[\d.]+) queue_ms=(?P<queue>[\d.]+) backend_ms=(?P<backend_ms>[\d.]+) "
    r"trace_id=(?P<trace>\S+?)(?: \((?P<dropped>\d+) lines dropped by the rate limit before "
    r"this one\))?(?:: (?P<message>.*))?$",
    re.MULTILINE,
)


@dataclass
class Gateways:
    every_ok: GatewayProcess
    errors_only: GatewayProcess


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    workdir = tmp_path_factory.mktemp("access-log")
    with start_triton(MODEL_REPOSITORY, workdir / "triton") as triton:
        args = ["--triton", triton.grpc_url, "--no-cpu-models"]
        off = {"OTEL_TRACES_EXPORTER": "none"}
        with (
            start_gateway(
                workdir / "every-ok",
                args=args,
                env=off
                | {"GATEWAY_REQUEST_LOG_OK_SAMPLE": "1", "GATEWAY_REQUEST_LOG_RATE_PER_S": "1000"},
            ) as every_ok,
            start_gateway(
                workdir / "errors-only",
                args=args,
                env=off | {"GATEWAY_REQUEST_LOG_RATE_PER_S": "1"},  # bursts of 2
            ) as errors_only,
        ):
            yield Gateways(every_ok, errors_only)


def _trace(i: int) -> str:
    return f"{i + 1:032x}"


def _call(address: str, i: int, model: str = "int64_offset") -> grpc.StatusCode:
    traceparent = f"00-{_trace(i)}-{i + 1:016x}-01"
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        try:
            stub.ModelInfer(
                int64_request(np.arange(4, dtype=np.int64)[None], model),
                metadata=[("traceparent", traceparent)],
                timeout=30,
            )
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def _lines(gateway: GatewayProcess, count: int, timeout_s: float = 15) -> list[re.Match[str]]:
    deadline = time.monotonic() + timeout_s
    while True:
        found = list(LINE.finditer(Path(gateway.log_path).read_text(errors="replace")))
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_ok_requests_sampled_in_get_a_line_with_queue_and_backend_times(
    gateways: Gateways,
) -> None:
    calls = 16  # concurrent, so the gateway batches them
    with ThreadPoolExecutor(calls) as pool:
        codes = list(pool.map(lambda i: _call(gateways.every_ok.address, i), range(calls)))
    assert codes == [grpc.StatusCode.OK] * calls
    lines = _lines(gateways.every_ok, calls)
    assert len(lines) == calls
    assert {m["trace"] for m in lines} == {_trace(i) for i in range(calls)}
    for m in lines:
        assert (m["model"], m["code"]) == ("int64_offset", "OK")
        assert m["backend"].startswith("triton")
        took, queue, backend = float(m["took"]), float(m["queue"]), float(m["backend_ms"])
        # Parts of the request's time: each within the whole, the backend call measurable.
        assert backend > 0 and queue + backend <= took


def test_errors_always_get_a_line_ok_requests_unsampled_none_and_the_rate_limit_counts_drops(
    gateways: Gateways,
) -> None:
    gateway = gateways.errors_only
    assert _call(gateway.address, 100) == grpc.StatusCode.OK  # not sampled: no line
    # Ten failures at once against a budget of two lines: the rest are dropped.
    for i in range(10):
        assert _call(gateway.address, 200 + i, model="no_such_model") == grpc.StatusCode.NOT_FOUND
    time.sleep(1.5)  # a token comes back
    assert _call(gateway.address, 300, model="no_such_model") == grpc.StatusCode.NOT_FOUND
    lines = _lines(gateway, 3)
    assert _trace(100) not in {m["trace"] for m in lines}
    assert all(m["code"] == "NOT_FOUND" and m["backend"] == "none" for m in lines)
    assert all(float(m["queue"]) == 0 and float(m["backend_ms"]) == 0 for m in lines)
    assert "no_such_model" in (lines[0]["message"] or "")
    last = lines[-1]
    assert last["trace"] == _trace(300)
    assert int(last["dropped"] or 0) >= 1
    # Each of the eleven failures has a line or is counted as dropped in a later one.
    assert len(lines) + sum(int(m["dropped"] or 0) for m in lines) == 11
