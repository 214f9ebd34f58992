"""Issue 9, items 2 and 4: faults stay local. A caller's short deadline does not
eject a healthy Triton, and a hung Triton (SIGSTOP) is ejected quickly, its
stuck calls retried elsewhere, so callers see no failures."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from gateway.api.inference import grpc_service_pb2 as pb
from gateway.api.inference import grpc_service_pb2_grpc as pb_grpc
from tests.support.gateway import GatewayStartError, start_gateway
from tests.support.triton import MODEL_REPOSITORY, TritonProcess, start_triton

SLOW_MS = 300


@pytest.fixture(scope="module")
def slow_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonProcess]:
    env = {"GPU_SIM_FIXED_MS": str(SLOW_MS), "GPU_SIM_PER_ITEM_MS": "0"}
    with start_triton(MODEL_REPOSITORY, tmp_path_factory.mktemp("slow"), env=env) as server:
        yield server


@pytest.fixture
def second_triton(tmp_path: Path) -> Iterator[TritonProcess]:
    """A Triton of this test's own, to be SIGSTOPped."""
    with start_triton(MODEL_REPOSITORY, tmp_path / "second") as server:
        yield server


def _request(value: float) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        model_name="gpu_sim",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="INPUT", datatype="FP32", shape=[1, 4])],
        raw_input_contents=[np.full((1, 4), value, np.float32).tobytes()],
    )


def test_short_caller_deadlines_do_not_eject_a_healthy_backend(
    slow_triton: TritonProcess, tmp_path: Path
) -> None:
    """Item 4: before, five calls with a deadline shorter than the model's
    time opened the breaker, and the next caller got UNAVAILABLE."""
    with (
        start_gateway(tmp_path, args=["--triton", slow_triton.grpc_url, "--no-cpu-models"]) as gw,
        grpc.insecure_channel(gw.address) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for value in range(8):
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(_request(value), timeout=SLOW_MS / 1000 / 3)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        reply = stub.ModelInfer(_request(21.0))  # no deadline at all
        assert np.frombuffer(reply.raw_output_contents[0], np.float32).tolist() == [42.0] * 4
        assert "ejected" not in gw.log()


def test_a_hung_backend_is_ejected_and_its_calls_go_elsewhere(
    triton: TritonProcess, second_triton: TritonProcess, tmp_path: Path
) -> None:
    """Item 2: with one of two Tritons SIGSTOPped under load, callers with
    5 s deadlines keep being served (before: throughput fell to almost nothing
    for 5-7 s and stuck calls waited out their deadlines)."""
    args = ["--triton", triton.grpc_url, "--triton", second_triton.grpc_url, "--no-cpu-models"]
    env = {"GATEWAY_BATCHING_LAYER": "none", "GATEWAY_HEALTH_INTERVAL_S": "0.5"}
    outcomes: list[tuple[float, str]] = []
    lock = threading.Lock()
    stop = threading.Event()
    with (
        start_gateway(tmp_path, args=args, env=env) as gw,
        grpc.insecure_channel(gw.address) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        def caller(index: int) -> None:
            while not stop.is_set():
                try:
                    stub.ModelInfer(_request(float(index)), timeout=5)
                    code = "OK"
                except grpc.RpcError as exc:
                    code = exc.code().name
                with lock:
                    outcomes.append((time.monotonic(), code))

        with ThreadPoolExecutor(8) as pool:
            for index in range(8):
                pool.submit(caller, index)
            time.sleep(1.5)  # both serve, and the gateway learns their service times
            stopped_at = time.monotonic()
            os.killpg(second_triton.pid, signal.SIGSTOP)
            try:
                time.sleep(4.0)
            finally:
                stop.set()
                os.killpg(second_triton.pid, signal.SIGCONT)
        log = gw.log()
    failures = [code for _, code in outcomes if code != "OK"]
    assert not failures, failures[:10]
    after = [t - stopped_at for t, _ in outcomes if t > stopped_at]
    # Served all along: every second after the stop has answers (no stall until
    # a 5 s deadline or a 5 s probe timeout).
    for second in range(1, 4):
        assert any(second <= t < second + 1 for t in after), (second, len(after))
    assert "ejected" in log


def test_a_burst_that_fits_its_deadline_is_served(
    slow_triton: TritonProcess, tmp_path: Path
) -> None:
    """Item 3: with only one-row samples, a 40-request burst was predicted at
    rows x the one-row time (64 x 800 ms = 51 s) and refused DEADLINE_EXCEEDED."""
    with (
        start_gateway(tmp_path, args=["--triton", slow_triton.grpc_url, "--no-cpu-models"]) as gw,
        grpc.insecure_channel(gw.address) as channel,
        ThreadPoolExecutor(40) as pool,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stub.ModelInfer(_request(0.0), timeout=10)  # one row: the only sample
        deadline_s = 40 * SLOW_MS / 1000 / 2  # linear: 64 x 300 ms = 19 s > 6 s
        replies = list(
            pool.map(lambda v: stub.ModelInfer(_request(v), timeout=deadline_s), range(40))
        )
    for value, reply in enumerate(replies):
        assert np.frombuffer(reply.raw_output_contents[0], np.float32).tolist() == [2.0 * value] * 4


def test_two_endpoints_to_one_address(triton: TritonProcess, tmp_path: Path) -> None:
    """Item 12: the same address twice is a configuration error, not a
    traceback; a DNS name resolving to a listed address is served once."""
    twice = ["--triton", triton.grpc_url, "--triton", triton.grpc_url, "--no-cpu-models"]
    with pytest.raises(GatewayStartError) as info:
        start_gateway(tmp_path / "twice", args=twice)
    assert "listed more than once" in str(info.value)
    assert "Traceback" not in str(info.value)
    port = triton.grpc_url.rpartition(":")[2]
    both = ["--triton", triton.grpc_url, "--triton", f"dns:///localhost:{port}", "--no-cpu-models"]
    with (
        start_gateway(tmp_path / "dns", args=both) as gw,
        grpc.insecure_channel(gw.address) as channel,
    ):
        reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(_request(1.0), timeout=10)
        assert np.frombuffer(reply.raw_output_contents[0], np.float32).tolist() == [2.0] * 4
        assert "Traceback" not in gw.log()


def test_requests_held_are_bounded_in_bytes(slow_triton: TritonProcess, tmp_path: Path) -> None:
    """The gateway holds at most ``max_bytes_in_flight`` of requests; past it,
    RESOURCE_EXHAUSTED with a retry hint, not memory that grows."""
    big = pb.ModelInferRequest(
        model_name="gpu_sim",
        inputs=[
            pb.ModelInferRequest.InferInputTensor(name="INPUT", datatype="FP32", shape=[1, 10000])
        ],
        raw_input_contents=[np.ones((1, 10000), np.float32).tobytes()],
    )
    args = ["--triton", slow_triton.grpc_url, "--no-cpu-models"]
    env = {"GATEWAY_MAX_BYTES_IN_FLIGHT": "100000", "GATEWAY_BATCHING_LAYER": "none"}
    with (
        start_gateway(tmp_path, args=args, env=env) as gw,
        grpc.insecure_channel(gw.address) as channel,
        ThreadPoolExecutor(4) as pool,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        def call(_: int) -> str:
            try:
                stub.ModelInfer(big, timeout=20)
            except grpc.RpcError as exc:
                return exc.code().name
            return "OK"

        codes = list(pool.map(call, range(4)))
    assert "OK" in codes and "RESOURCE_EXHAUSTED" in codes, codes
