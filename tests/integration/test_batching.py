"""Dynamic batching in the gateway against a real Triton model shaped like a GPU
(fixed cost per call): merging across callers, queue limits, timeouts, priority."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from gateway.api.inference import grpc_service_pb2 as pb
from gateway.api.inference import grpc_service_pb2_grpc as pb_grpc
from tests.support.gateway import GatewayProcess, start_gateway
from tests.support.triton import MODEL_REPOSITORY, TritonProcess, start_triton

SLOW_MS = 150


@pytest.fixture(scope="module")
def slow_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonProcess]:
    env = {"GPU_SIM_FIXED_MS": str(SLOW_MS), "GPU_SIM_PER_ITEM_MS": "0"}
    with start_triton(MODEL_REPOSITORY, tmp_path_factory.mktemp("batching"), env=env) as server:
        yield server


def _gateway(triton: TritonProcess, workdir: Path, batching: dict[str, object]) -> GatewayProcess:
    return start_gateway(
        workdir,
        args=["--triton", triton.grpc_url, "--no-cpu-models"],
        env={"GATEWAY_BATCHING": json.dumps({"gpu_sim": batching})},
    )


def _request(value: float, **params: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(
        model_name="gpu_sim",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="INPUT", datatype="FP32", shape=[1, 4])],
        raw_input_contents=[np.full((1, 4), value, np.float32).tobytes()],
    )
    for key, number in params.items():
        request.parameters[key].int64_param = number
    return request


def _stats(triton: TritonProcess) -> tuple[int, int]:
    stats = grpcclient.InferenceServerClient(triton.grpc_url).get_inference_statistics("gpu_sim")
    return int(stats.model_stats[0].inference_count), int(stats.model_stats[0].execution_count)


def test_concurrent_callers_are_merged_and_answered_exactly(
    slow_triton: TritonProcess, tmp_path: Path
) -> None:
    rows0, calls0 = _stats(slow_triton)
    with (
        _gateway(slow_triton, tmp_path, {"max_queue_delay_microseconds": 20000}) as gw,
        grpc.insecure_channel(gw.address) as channel,
        ThreadPoolExecutor(48) as pool,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        replies = list(pool.map(lambda v: stub.ModelInfer(_request(v), timeout=20), range(48)))
    for value, reply in enumerate(replies):
        assert np.frombuffer(reply.raw_output_contents[0], np.float32).tolist() == [2.0 * value] * 4
    rows, calls = _stats(slow_triton)
    assert rows - rows0 == 48
    assert calls - calls0 <= 12, "48 callers should share a handful of backend calls"


def test_full_queue_is_refused_with_a_retry_hint(
    slow_triton: TritonProcess, tmp_path: Path
) -> None:
    policy = {"max_batch_size": 1, "default_queue_policy": {"max_queue_size": 2}}
    codes: list[grpc.StatusCode] = []
    hints: list[str] = []
    lock = threading.Lock()
    with (
        _gateway(slow_triton, tmp_path, policy) as gw,
        grpc.insecure_channel(gw.address) as channel,
        ThreadPoolExecutor(16) as pool,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        def call(value: int) -> None:
            try:
                stub.ModelInfer(_request(value), timeout=20)
                code = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                code = exc.code()
                hint = dict(exc.trailing_metadata() or ()).get("grpc-retry-pushback-ms")
                with lock:
                    hints.append(str(hint))
                    assert "queue" in exc.details(), exc.details()
            with lock:
                codes.append(code)

        list(pool.map(call, range(16)))
        assert stub.ModelInfer(_request(1), timeout=20).raw_output_contents  # still serving
    refused = codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert refused >= 8 and codes.count(grpc.StatusCode.OK) >= 2, codes
    assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert all(h.isdigit() and int(h) > 0 for h in hints), hints


def test_timeout_parameter_expires_in_queue_as_deadline_exceeded(
    slow_triton: TritonProcess, tmp_path: Path
) -> None:
    with (
        _gateway(slow_triton, tmp_path, {"max_batch_size": 1}) as gw,
        grpc.insecure_channel(gw.address) as channel,
        ThreadPoolExecutor(8) as pool,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        busy = [pool.submit(stub.ModelInfer, _request(v), timeout=20) for v in range(6)]
        time.sleep(0.05)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(_request(99, timeout=100_000), timeout=20)  # 100 ms, in µs
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, info.value.details()
        assert time.monotonic() - started < 1.0
        assert all(f.result().raw_output_contents for f in busy)


def test_higher_priority_overtakes_a_queue(slow_triton: TritonProcess, tmp_path: Path) -> None:
    policy = {"max_batch_size": 1, "priority_levels": 2, "default_priority_level": 2}
    done: list[str] = []
    lock = threading.Lock()
    with (
        _gateway(slow_triton, tmp_path, policy) as gw,
        grpc.insecure_channel(gw.address) as channel,
        ThreadPoolExecutor(12) as pool,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        def call(tag: str, priority: int) -> None:
            stub.ModelInfer(_request(1, priority=priority), timeout=30)
            with lock:
                done.append(tag)

        futures = [pool.submit(call, f"low{i}", 2) for i in range(8)]
        time.sleep(0.1)  # the low-priority queue has formed behind the busy backend
        futures += [pool.submit(call, f"high{i}", 1) for i in range(2)]
        for future in futures:
            future.result()
    high_at = [done.index(f"high{i}") for i in range(2)]
    assert max(high_at) < 6, done  # ahead of most of the earlier low-priority work


def test_large_requests_are_batched_within_the_message_limit(
    slow_triton: TritonProcess, tmp_path: Path
) -> None:
    # 6 callers of 1.5 MiB each behind a busy backend, under a 4 MiB limit:
    # merged whole (7.5 MiB or more) the batch could not be sent; each
    # sub-batch holds at most 2 of them (3 MiB).
    limit, values = 4 * 1024 * 1024, 393_216  # FP32 values per request: 1.5 MiB
    rows0, calls0 = _stats(slow_triton)

    def large(value: float, count: int = values) -> pb.ModelInferRequest:
        request = _request(value)
        request.inputs[0].shape[:] = [1, count]
        request.raw_input_contents[0] = np.full(count, value, np.float32).tobytes()
        return request

    metrics_port = tmp_path / "metrics.port"
    with (
        start_gateway(
            tmp_path,
            args=[
                *("--triton", slow_triton.grpc_url, "--no-cpu-models"),
                *("--metrics-port", "0", "--metrics-port-file", str(metrics_port)),
            ],
            env={
                "GATEWAY_BATCHING": json.dumps(
                    {"gpu_sim": {"max_queue_delay_microseconds": 200_000}}
                ),
                "GATEWAY_MAX_MESSAGE_BYTES": str(limit),
            },
        ) as gw,
        grpc.insecure_channel(gw.address) as channel,
        ThreadPoolExecutor(6) as pool,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        replies = list(pool.map(lambda v: stub.ModelInfer(large(v), timeout=30), range(6)))
        # Alone, a request just under the limit is served; one over it is refused,
        # by gRPC at the front door, with its size and the limit.
        near = stub.ModelInfer(large(7.0, (limit - 32 * 1024) // 4), timeout=30)
        with pytest.raises(grpc.RpcError) as over:
            stub.ModelInfer(large(8.0, limit // 4 + 1), timeout=30)
        url = f"http://127.0.0.1:{int(metrics_port.read_text())}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            scraped = response.read().decode().splitlines()
    for value, reply in enumerate(replies):
        output = np.frombuffer(reply.raw_output_contents[0], np.float32)
        assert output.shape == (values,) and (output == 2.0 * value).all()
    assert (np.frombuffer(near.raw_output_contents[0], np.float32) == 14.0).all()
    assert over.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"vs. {limit})" in (over.value.details() or ""), over.value.details()
    rows, calls = _stats(slow_triton)
    assert rows - rows0 == 7
    assert 4 <= calls - calls0 <= 6, "some callers share a call, no call holds 3 of them"
    # Each call was sent within the limit the first time: none failed and was split after.
    by_code = [line for line in scraped if line.startswith("gateway_backend_calls_total{")]
    assert by_code and all('code="OK"' in line for line in by_code), by_code
