"""Issue 9, item 9: a SIGTERM under load loses nothing. Health turns
NOT_SERVING at once, the gateway keeps serving for ``drain_delay_s``, and
every request is answered OK or UNAVAILABLE (retryable), never CANCELLED."""

from __future__ import annotations

import queue
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.api.inference import grpc_service_pb2 as pb
from gateway.api.inference import grpc_service_pb2_grpc as pb_grpc
from tests.support.gateway import start_gateway

DRAIN_DELAY_S = 1.0


def _request() -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        model_name="text_upper",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="TEXT", datatype="BYTES", shape=[1, 1])],
        raw_input_contents=[struct.pack("<I", 2) + b"ok"],
    )


def test_sigterm_under_load_loses_nothing(tmp_path: Path) -> None:
    env = {"GATEWAY_DRAIN_DELAY_S": str(DRAIN_DELAY_S), "GATEWAY_NVML": "false"}
    gw = start_gateway(tmp_path, env=env)
    codes: Counter[str] = Counter()
    ok_after_term = 0
    lock = threading.Lock()
    stop = threading.Event()
    termed_at: list[float] = []

    def caller() -> None:
        nonlocal ok_after_term
        # A channel per caller: each sees the listener go on its own.
        with grpc.insecure_channel(gw.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            while not stop.is_set():
                try:
                    stub.ModelInfer(_request(), timeout=5)
                    code = "OK"
                except grpc.RpcError as exc:
                    code = exc.code().name
                with lock:
                    codes[code] += 1
                    if code == "OK" and termed_at and time.monotonic() > termed_at[0] + 0.1:
                        ok_after_term += 1
                if code != "OK":
                    time.sleep(0.3)  # a retry policy's back-off (gRPC's starts near this)

    with grpc.insecure_channel(gw.address) as health_channel:
        health = health_pb2_grpc.HealthStub(health_channel)
        threads = [threading.Thread(target=caller) for _ in range(6)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(0.5)
            termed_at.append(time.monotonic())
            gw.process.terminate()  # SIGTERM
            time.sleep(0.2)
            status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert gw.process.wait(DRAIN_DELAY_S + 20) == 0, gw.log()
            time.sleep(0.3)  # callers see the closed listener
        finally:
            stop.set()
            for thread in threads:
                thread.join(10)
            gw.kill()
    assert codes["OK"] > 0
    assert ok_after_term > 0, "served on during the drain delay"
    assert set(codes) <= {"OK", "UNAVAILABLE"}, codes


def test_an_open_stream_ends_unavailable_at_shutdown(tmp_path: Path) -> None:
    gw = start_gateway(tmp_path, env={"GATEWAY_NVML": "false"})
    outbox: queue.Queue[bytes | None] = queue.Queue()

    def messages() -> Iterator[bytes]:
        while (item := outbox.get(timeout=20)) is not None:
            yield item

    try:
        with grpc.insecure_channel(gw.address) as channel:
            stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
            replies = stream(messages(), timeout=20)
            outbox.put(_request().SerializeToString())
            first = pb.ModelStreamInferResponse.FromString(next(replies))
            assert not first.error_message
            gw.process.terminate()  # SIGTERM while the stream is open and idle
            with pytest.raises(grpc.RpcError) as info:
                next(replies)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()
            outbox.put(None)
        assert gw.process.wait(20) == 0
    finally:
        gw.kill()
