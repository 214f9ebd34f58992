"""One trace end to end, metrics under load, and the admin service — all real processes.

The gateway (OTLP/gRPC export), a tritonserver in OpenTelemetry trace mode
(OTLP/HTTP JSON export) and the test's own client span all report to one real
collector, ``rotel``, whose printed spans the test reads back.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from opentelemetry import propagate
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from gateway.api.gateway.admin.v1 import admin_pb2 as admin_pb
from gateway.api.gateway.admin.v1 import admin_pb2_grpc as admin_grpc
from gateway.api.inference import grpc_service_pb2 as pb
from gateway.api.inference import grpc_service_pb2_grpc as pb_grpc
from tests.collector import Collector, Span, start_collector
from tests.support.gateway import GatewayProcess, start_gateway
from tests.support.traced_calls import (
    BACKEND_SPAN,
    MODEL,
    int64_request,
    samples,
    scrape,
    trailing,
    triton_trace_args,
)
from tests.support.triton import MODEL_REPOSITORY, TritonProcess, start_triton

TOKEN = "s3cret-admin-token"
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Stack:
    collector: Collector
    triton: TritonProcess
    gateway: GatewayProcess
    metrics_url: str
    admin_address: str

    @property
    def backend_id(self) -> str:
        return f"triton@{self.triton.grpc_url}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("observability")
    with (
        start_collector(workdir) as collector,
        start_triton(MODEL_REPOSITORY, workdir, extra_args=triton_trace_args(collector)) as triton,
    ):
        env = {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.grpc_endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_SERVICE_NAME": "gateway-under-test",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "GATEWAY_ADMIN_TOKEN": TOKEN,
        }
        args = [
            *("--triton", triton.grpc_url, "--no-cpu-models"),
            *("--metrics-port", "0", "--metrics-port-file", str(workdir / "metrics.port")),
            *("--admin-port", "0", "--admin-port-file", str(workdir / "admin.port")),
        ]
        with start_gateway(workdir, args=args, env=env) as gateway:
            yield Stack(
                collector,
                triton,
                gateway,
                f"http://127.0.0.1:{int((workdir / 'metrics.port').read_text())}/metrics",
                f"127.0.0.1:{int((workdir / 'admin.port').read_text())}",
            )


# -- tracing -----------------------------------------------------------------


def _traced_call(stack: Stack, client: TracerProvider) -> str:
    """One ModelInfer under a client span; its trace id (the reply checked)."""
    values = np.arange(4, dtype=np.int64)[None]
    with (
        grpc.insecure_channel(stack.gateway.address) as channel,
        client.get_tracer("test").start_as_current_span("client-call") as root,
    ):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        reply, call = stub.ModelInfer.with_call(
            int64_request(values), metadata=list(carrier.items()), timeout=10
        )
    trace_id = format(root.get_span_context().trace_id, "032x")
    assert np.frombuffer(reply.raw_output_contents[0], np.int64).tolist() == [1, 2, 3, 4]
    assert trailing(call)["x-trace-id"] == trace_id
    return trace_id


def test_one_trace_from_client_to_triton_compute(stack: Stack) -> None:
    client = TracerProvider(resource=Resource({"service.name": "test-client"}))
    client.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=stack.collector.grpc_endpoint, insecure=True))
    )

    def complete(trace_id: str) -> Callable[[list[Span]], bool]:
        def check(spans: list[Span]) -> bool:
            names = {s.name for s in spans if s.trace_id == trace_id}
            return {"client-call", "batch", BACKEND_SPAN, "InferRequest", "compute"} <= names

        return check

    # Triton (2.51) starts traces of its own for its first traced calls after
    # start-up, ignoring the traceparent: a call whose trace Triton did not
    # join is tried again, a bounded number of times.
    for attempt in range(5):
        trace_id = _traced_call(stack, client)
        try:
            received = stack.collector.wait_for(complete(trace_id), timeout_s=8)
            break
        except TimeoutError:
            if attempt == 4:
                raise
    client.shutdown()
    spans = [s for s in received if s.trace_id == trace_id]

    def one(name: str, service: str | None = None) -> Span:
        found = [s for s in spans if s.name == name and (service is None or s.service == service)]
        assert len(found) == 1, f"{name}: {found}"
        return found[0]

    client_span = one("client-call", "test-client")
    server = one(f"/{pb.DESCRIPTOR.services_by_name['GRPCInferenceService'].full_name}/ModelInfer")
    queue, batch = one("queue"), one("batch")
    placement, backend_call = one("placement"), one(BACKEND_SPAN)
    triton_request = one("InferRequest", "triton-inference-server")
    triton_model = one(MODEL, "triton-inference-server")
    compute = one("compute", "triton-inference-server")

    assert client_span.parent_id == ""
    assert (server.parent_id, server.kind, server.service) == (
        client_span.span_id,
        "SPAN_KIND_SERVER",
        "gateway-under-test",
    )
    assert queue.parent_id == server.span_id
    assert queue.attributes["gateway.model"] == MODEL
    assert batch.parent_id == server.span_id
    assert queue.end_ns == batch.start_ns
    assert batch.attributes["gateway.batch.size"] == "1"
    assert batch.attributes["gateway.model"] == MODEL
    assert batch.attributes["gateway.batch.trigger"]
    assert placement.parent_id == batch.span_id
    assert placement.attributes["gateway.placement.backend"] == stack.backend_id
    assert placement.attributes["gateway.placement.verdict"] == "placed"
    assert "gateway.placement.score_s" in placement.attributes
    assert backend_call.parent_id == batch.span_id
    assert backend_call.kind == "SPAN_KIND_CLIENT"
    assert backend_call.attributes["server.port"] == str(stack.triton.grpc_port)
    assert backend_call.attributes["rpc.grpc.status_code"] == "0"
    assert "gateway.retries" not in backend_call.attributes
    assert triton_request.parent_id == backend_call.span_id  # Triton joined via traceparent
    assert triton_model.parent_id == triton_request.span_id
    assert compute.parent_id == triton_model.span_id


def test_trace_id_comes_back_on_errors_too(stack: Stack) -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with grpc.insecure_channel(stack.gateway.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(
                int64_request(np.zeros((1, 2), np.int64), model="no_such_model"),
                metadata=[("traceparent", traceparent)],
                timeout=10,
            )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert trailing(caught.value)["x-trace-id"] == "0af7651916cd43dd8448eb211c80319c"


def test_health_checks_are_not_traced(stack: Stack) -> None:
    # start_gateway polled grpc.health.v1.Health/Check until SERVING; a traced
    # request since then proves spans were flowing to the collector.
    trace_id = "7c9d1e2f3a4b5c6d7e8f90a1b2c3d4e5"
    with grpc.insecure_channel(stack.gateway.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stub.ServerLive(
            pb.ServerLiveRequest(),
            metadata=[("traceparent", f"00-{trace_id}-b7ad6b7169203331-01")],
            timeout=10,
        )
    spans = stack.collector.wait_for(lambda got: any(s.trace_id == trace_id for s in got))
    assert not [s for s in spans if "grpc.health.v1.Health" in s.name]


def test_unsampled_caller_is_not_traced(stack: Stack) -> None:
    trace_id = "5b8efff798038103d269b633813fc60c"
    with grpc.insecure_channel(stack.gateway.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stub.ModelInfer(
            int64_request(np.arange(2, dtype=np.int64)[None]),
            metadata=[("traceparent", f"00-{trace_id}-eee19b7ec3c1b174-00")],
            timeout=10,
        )
    time.sleep(1.0)  # three export periods of the gateway's span processor
    assert not [
        s
        for s in stack.collector.spans()
        if s.service == "gateway-under-test" and s.trace_id == trace_id
    ]


# -- metrics -----------------------------------------------------------------


def test_metrics_count_a_short_load(stack: Stack) -> None:
    before = samples(scrape(stack.metrics_url))
    ok_requests, bad_requests = 48, 3

    def send(i: int) -> None:
        with grpc.insecure_channel(stack.gateway.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            stub.ModelInfer(int64_request(np.full((1, 3), i, np.int64)), timeout=10)

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(send, i) for i in range(ok_requests)]
        during = scrape(stack.metrics_url)  # the endpoint answers while under load
        for future in futures:
            future.result()
    for _ in range(bad_requests):
        with pytest.raises(grpc.RpcError):
            send_bad(stack)
    with grpc.insecure_channel(stack.gateway.address) as channel, pytest.raises(grpc.RpcError):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stub.ModelInfer(int64_request(np.zeros((9, 1), np.int64)), timeout=10)  # batch of 9 > 8
    after = samples(scrape(stack.metrics_url))
    assert "gateway_requests_total" in during

    def delta(name: str, **labels: str) -> float:
        return after(name, labels) - before(name, labels)

    ok = {"model": MODEL, "code": "OK", "backend": stack.backend_id}
    assert delta("gateway_requests_total", **ok) == ok_requests
    assert delta("gateway_request_duration_seconds_count", **ok) == ok_requests
    not_found = {"model": "unknown", "code": "NOT_FOUND", "backend": "none"}
    assert delta("gateway_requests_total", **not_found) == bad_requests
    invalid = {"model": MODEL, "code": "INVALID_ARGUMENT", "backend": "none"}
    assert delta("gateway_requests_total", **invalid) == 1  # the model is known
    # Batches are batches: a request that ran on its own (nothing queued to
    # merge with) is a backend call, not a batch of one.
    batches = delta("gateway_batch_size_count", model=MODEL)
    batched_rows = delta("gateway_batch_size_sum", model=MODEL)  # one row each
    alone = ok_requests - batched_rows
    assert batches <= batched_rows <= ok_requests
    assert delta("gateway_queue_wait_seconds_count", model=MODEL) == batched_rows
    calls = {"backend": stack.backend_id, "model": MODEL, "code": "OK"}
    assert delta("gateway_backend_calls_total", **calls) == batches + alone
    placed = {"model": MODEL, "verdict": "placed", "backend": stack.backend_id}
    assert delta("gateway_placement_decisions_total", **placed) == batches + alone
    assert after("gateway_backend_up", {"backend": stack.backend_id, "tier": "accelerator"}) == 1
    assert after("gateway_backend_in_flight", {"backend": stack.backend_id}) == 0
    cpu = {"device": "cpu:local", "kind": "cpu", "source": "cpu", "host": "local"}
    assert after("gateway_device_telemetry_age_seconds", cpu) >= 0
    assert "gateway_device_telemetry_age_seconds{" in during


def test_latency_histograms_carry_trace_ids_as_exemplars(stack: Stack) -> None:
    traceparent = "00-6e0c63257de34c92bf9efcd03927272e-00f067aa0ba902b7-01"
    with grpc.insecure_channel(stack.gateway.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stub.ModelInfer(
            int64_request(np.arange(2, dtype=np.int64)[None]),
            metadata=[("traceparent", traceparent)],
            timeout=10,
        )
    plain = scrape(stack.metrics_url)
    assert "trace_id" not in plain  # the classic text format has no exemplars
    request = urllib.request.Request(
        stack.metrics_url, headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        text = response.read().decode()
    lines = [line for line in text.splitlines() if "6e0c63257de34c92bf9efcd03927272e" in line]
    assert any(line.startswith("gateway_request_duration_seconds_bucket{") for line in lines)


def send_bad(stack: Stack) -> None:
    with grpc.insecure_channel(stack.gateway.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stub.ModelInfer(
            int64_request(np.zeros((1, 1), np.int64), model="no_such_model"), timeout=10
        )


def test_promtool_check_metrics_is_clean(stack: Stack) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        message = "promtool is not installed (make tools, or apt-get install prometheus)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    text = scrape(stack.metrics_url)
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""


# -- admin -------------------------------------------------------------------


def _admin(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "gateway", "admin", "--target", stack.admin_address, *args]
    env = {**os.environ, "GATEWAY_ADMIN_TOKEN": TOKEN}
    return subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=ROOT, env=env)


def test_admin_needs_the_token(stack: Stack) -> None:
    with grpc.insecure_channel(stack.admin_address) as channel:
        stub = admin_grpc.AdminServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ListBackends(admin_pb.ListBackendsRequest(), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        wrong = (("authorization", "Bearer wrong"),)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ListBackends(admin_pb.ListBackendsRequest(), metadata=wrong, timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        good = (("authorization", f"Bearer {TOKEN}"),)
        reply = stub.ListBackends(admin_pb.ListBackendsRequest(), metadata=good, timeout=5)
    assert [b.id for b in reply.backends] == [stack.backend_id]


def test_admin_cli_views(stack: Stack) -> None:
    send_ok(stack)
    backends = _admin(stack, "backends")
    assert backends.returncode == 0, backends.stderr
    assert stack.backend_id in backends.stdout and "closed" in backends.stdout
    row = next(line for line in backends.stdout.splitlines() if line.startswith(stack.backend_id))
    assert "static" in row and MODEL in row  # origin and models
    devices = _admin(stack, "devices")
    assert devices.returncode == 0 and "cpu:local" in devices.stdout
    queues = _admin(stack, "queues")
    assert queues.returncode == 0 and MODEL in queues.stdout
    decisions = _admin(stack, "--json", "decisions", "--limit", "3")
    assert decisions.returncode == 0, decisions.stderr
    assert '"verdict": "placed"' in decisions.stdout
    assert f"{stack.backend_id} predicted" in decisions.stdout  # the reason


def send_ok(stack: Stack) -> None:
    with grpc.insecure_channel(stack.gateway.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stub.ModelInfer(int64_request(np.arange(2, dtype=np.int64)[None]), timeout=10)


def test_drain_and_undrain_a_backend(stack: Stack) -> None:
    drained = _admin(stack, "drain", stack.backend_id)
    assert drained.returncode == 0, drained.stderr
    assert "drained" in drained.stdout
    try:
        with pytest.raises(grpc.RpcError) as caught:
            send_ok(stack)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        undrained = _admin(stack, "undrain", stack.backend_id)
    assert undrained.returncode == 0, undrained.stderr
    send_ok(stack)
    unknown = _admin(stack, "drain", "no-such-backend")
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr
