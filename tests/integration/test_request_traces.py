"""Each request's own trace explains its latency, batched or not; every answer names its trace.

Real processes: a tritonserver in OpenTelemetry mode, the gateway exporting
OTLP, and ``rotel`` collecting both. Sixteen concurrent callers make the
gateway batch ``int64_offset``; for each request the test rebuilds its trace
and measures how much of its server span is covered by named spans below it.
Coverage is structural (which spans exist, how they nest, whether they leave
holes), so it is asserted; no duration is.
"""

from __future__ import annotations

import statistics
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import numpy as np
import pytest

from gateway.api.inference import grpc_service_pb2 as pb
from gateway.api.inference import grpc_service_pb2_grpc as pb_grpc
from tests.collector import Collector, Span, start_collector
from tests.support.gateway import GatewayProcess, start_gateway
from tests.support.traced_calls import (
    BACKEND_SPAN,
    int64_request,
    trailing,
    triton_trace_args,
)
from tests.support.triton import MODEL_REPOSITORY, TritonProcess, start_triton

SERVICE = "gateway-under-test"
SERVER_SPAN = "/inference.GRPCInferenceService/ModelInfer"

CALLERS, PER_CALLER = 16, 5


@dataclass
class Traced:
    collector: Collector
    triton: TritonProcess
    gateway: GatewayProcess


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traced]:
    workdir = tmp_path_factory.mktemp("request-traces")
    with (
        start_collector(workdir) as collector,
        start_triton(MODEL_REPOSITORY, workdir, extra_args=triton_trace_args(collector)) as triton,
    ):
        env = {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.grpc_endpoint,
            "OTEL_SERVICE_NAME": SERVICE,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        args = ["--triton", triton.grpc_url, "--no-cpu-models"]
        with start_gateway(workdir, args=args, env=env) as gateway:
            yield Traced(collector, triton, gateway)


def covered_fraction(server: Span, spans: list[Span]) -> float:
    """The share of ``server``'s time covered by spans that descend from it."""
    children: dict[str, list[Span]] = {}
    for span in spans:
        children.setdefault(span.parent_id, []).append(span)
    below: list[Span] = []
    todo = list(children.get(server.span_id, []))
    while todo:
        span = todo.pop()
        below.append(span)
        todo.extend(children.get(span.span_id, []))
    intervals = sorted(
        (max(s.start_ns, server.start_ns), min(s.end_ns, server.end_ns)) for s in below
    )
    covered, reach = 0, server.start_ns
    for start, end in intervals:
        if end > reach:
            covered += end - max(start, reach)
            reach = end
    return covered / max(server.end_ns - server.start_ns, 1)


def test_a_batched_requests_own_trace_covers_its_server_time(traced: Traced) -> None:
    def call(i: int) -> list[str]:
        ids = []
        with grpc.insecure_channel(traced.gateway.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for j in range(PER_CALLER):
                values = np.full((1, 4), i * PER_CALLER + j, np.int64)
                _, rpc = stub.ModelInfer.with_call(int64_request(values), timeout=30)
                ids.append(trailing(rpc)["x-trace-id"])
        return ids

    with ThreadPoolExecutor(CALLERS) as pool:
        trace_ids = {t for ids in pool.map(call, range(CALLERS)) for t in ids}
    assert len(trace_ids) == CALLERS * PER_CALLER

    def by_trace(spans: list[Span]) -> dict[str, list[Span]]:
        found: dict[str, list[Span]] = {}
        for span in spans:
            if span.trace_id in trace_ids:
                found.setdefault(span.trace_id, []).append(span)
        return found

    def complete(spans: list[Span]) -> bool:
        found = by_trace(spans)
        if len(found) < len(trace_ids) or not all(
            {SERVER_SPAN, "queue", "batch", "placement", BACKEND_SPAN} <= {s.name for s in own}
            for own in found.values()
        ):
            return False
        # Triton exports on its own schedule: wait for its span of each real call.
        calls = [s for s in spans if s.name == BACKEND_SPAN and not s.links]
        return len(calls) <= len([s for s in spans if s.name == "InferRequest"])

    traces = by_trace(traced.collector.wait_for(complete, timeout_s=30))
    everything = {s.span_id: s for s in traced.collector.spans()}
    # Triton (2.51) starts traces of its own for its first traced calls after
    # start-up, traceparent or not (seen with tritonclient alone too): Triton's
    # spans are checked where it joined.
    joined = {s.parent_id for s in everything.values() if s.name == "InferRequest"}
    real_calls = [s for s in everything.values() if s.name == BACKEND_SPAN and not s.links]
    joined_calls = len(joined & {s.span_id for s in real_calls})
    assert joined_calls >= 1, f"Triton joined none of {len(real_calls)} calls"
    fractions = []
    for own in traces.values():
        gateway = [s for s in own if s.service == SERVICE]

        def one(name: str, spans: list[Span] = gateway) -> Span:
            (found,) = [s for s in spans if s.name == name]
            return found

        server, queue, batch = one(SERVER_SPAN), one("queue"), one("batch")
        placement, backend = one("placement"), one(BACKEND_SPAN)
        assert queue.parent_id == batch.parent_id == server.span_id
        assert placement.parent_id == backend.parent_id == batch.span_id
        assert backend.kind == "SPAN_KIND_CLIENT"
        assert backend.attributes["rpc.system"] == "grpc"
        assert backend.attributes["rpc.method"] == "ModelInfer"
        assert backend.attributes["server.port"] == str(traced.triton.grpc_port)
        assert backend.attributes["gateway.backend.id"] == f"triton@{traced.triton.grpc_url}"
        assert queue.end_ns == batch.start_ns  # the wait ends where the batch begins
        # Triton's spans: under this request's backend call, or one link away.
        real = backend
        if backend.links:  # a copy: the real call is in the leader's trace
            (link,) = backend.links
            real = everything[link[1]]
            assert (real.name, real.start_ns, real.end_ns) == (
                BACKEND_SPAN,
                backend.start_ns,
                backend.end_ns,
            )
            assert everything[batch.links[0][1]].span_id == real.parent_id  # leader's batch
        if real.span_id in joined:
            (triton,) = [s for s in everything.values() if s.parent_id == real.span_id]
            assert (triton.name, triton.service) == ("InferRequest", "triton-inference-server")
        if int(batch.attributes["gateway.batch.size"]) > 1:
            fractions.append(covered_fraction(server, own))

    assert len(fractions) >= len(traces) // 2, "most requests should have been batched"
    # What is left uncovered is the handler's own work before the first span
    # and after the batch (encoding the answer), tens of microseconds; a stall
    # of the event loop's thread there (the span exporter's thread holding the
    # GIL, another process on a busy machine) can widen it for a few requests.
    summary = f"coverage of {len(fractions)} batched requests: " + ", ".join(
        f"{f:.3f}" for f in sorted(fractions)[:5]
    )
    assert statistics.median(fractions) >= 0.95, summary
    assert sum(f >= 0.95 for f in fractions) >= 0.9 * len(fractions), summary


LIMIT = 256 * 1024  # max_message_bytes of the untraced gateway
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER = [("traceparent", f"00-{CALLER_TRACE}-00f067aa0ba902b7-01")]


def _answers(address: str) -> dict[str, dict[str, str]]:
    """The trailing metadata of one answer (or error) per kind of rpc."""
    found: dict[str, dict[str, str]] = {}
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        _, rpc = stub.ModelMetadata.with_call(
            pb.ModelMetadataRequest(name="int64_offset"), metadata=CALLER, timeout=10
        )
        found["ModelMetadata"] = trailing(rpc)
        calls = {
            "ModelConfig": lambda: stub.ModelConfig(
                pb.ModelConfigRequest(name="no_such_model"), metadata=CALLER, timeout=10
            ),
            "SystemSharedMemoryStatus": lambda: stub.SystemSharedMemoryStatus(
                pb.SystemSharedMemoryStatusRequest(), metadata=CALLER, timeout=10
            ),
            "ModelInfer": lambda: stub.ModelInfer(
                int64_request(np.zeros((1, 2), np.int64), model="no_such_model"),
                metadata=CALLER,
                timeout=10,
            ),
        }
        for name, call in calls.items():
            with pytest.raises(grpc.RpcError) as caught:
                call()
            found[name] = trailing(caught.value)
    return found


def test_every_answer_names_its_trace(traced: Traced) -> None:
    for rpc, trailer in _answers(traced.gateway.address).items():
        assert trailer.get("x-trace-id") == CALLER_TRACE, rpc  # the caller's trace, joined


def test_with_tracing_off_answers_echo_the_callers_trace(
    traced: Traced, tmp_path_factory: pytest.TempPathFactory
) -> None:
    workdir = tmp_path_factory.mktemp("untraced")
    args = [
        *("--triton", traced.triton.grpc_url, "--no-cpu-models"),
        *("--metrics-port", "0", "--metrics-port-file", str(workdir / "metrics.port")),
    ]
    env = {"OTEL_TRACES_EXPORTER": "none", "GATEWAY_MAX_MESSAGE_BYTES": str(LIMIT)}
    with start_gateway(workdir, args=args, env=env) as gateway:
        for rpc, trailer in _answers(gateway.address).items():
            assert trailer.get("x-trace-id") == CALLER_TRACE, rpc
        with grpc.insecure_channel(gateway.address) as channel:  # no traceparent: no id
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            _, rpc = stub.ModelInfer.with_call(
                int64_request(np.zeros((1, 2), np.int64)), timeout=10
            )
            assert "x-trace-id" not in trailing(rpc)
            # gRPC itself refuses a message over the limit; it is still counted.
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelInfer(int64_request(np.zeros((1, LIMIT // 8 + 1), np.int64)), timeout=10)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        url = f"http://127.0.0.1:{int((workdir / 'metrics.port').read_text())}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            scraped = response.read().decode()
        log = gateway.log()
    assert "gateway_requests_refused_total 1.0" in scraped
    # The failed inference left a line that leads to the caller's trace.
    assert "code=NOT_FOUND backend=none" in log and f"trace_id={CALLER_TRACE}" in log
