"""The Triton backend's inference hop, against a real gRPC server that records
what arrives (the wire format is the point here; tests/integration drive a real
tritonserver)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import pytest

from gateway.api.inference import grpc_service_pb2 as pb
from scheduler.backends.triton import TritonBackend
from scheduler.clock import MonotonicClock
from scheduler.errors import BackendError, BackendUnavailable, MessageTooLarge
from scheduler.spec import DataType, ModelSpec, TensorSpec

SPEC = ModelSpec(
    "m",
    inputs=(TensorSpec("X", DataType.FP32, (-1, 3)), TensorSpec("S", DataType.BYTES, (-1, 1))),
    outputs=(TensorSpec("Y", DataType.FP32, (-1, 3)),),
    max_batch_size=8,
)


@dataclass
class Recorder:
    requests: list[bytes] = field(default_factory=list)
    metadata: list[dict[str, str]] = field(default_factory=list)
    reply: bytes = b""
    abort: grpc.StatusCode | None = None


@contextlib.asynccontextmanager
async def recording_server() -> AsyncIterator[tuple[str, Recorder]]:
    recorder = Recorder()

    async def infer(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        recorder.requests.append(request)
        recorder.metadata.append({k: str(v) for k, v in context.invocation_metadata() or ()})
        if recorder.abort is not None:
            await context.abort(recorder.abort, "queue is full")
        return recorder.reply

    handler = grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService",
        {"ModelInfer": grpc.unary_unary_rpc_method_handler(infer)},
    )
    grpc_server = grpc.aio.server()
    grpc_server.add_generic_rpc_handlers((handler,))
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    try:
        yield f"127.0.0.1:{port}", recorder
    finally:
        await grpc_server.stop(0)


def _reply(values: np.ndarray) -> bytes:
    response = pb.ModelInferResponse(model_name="m", model_version="1", id="r")
    response.outputs.add(name="Y", datatype="FP32", shape=list(values.shape))
    response.raw_output_contents.append(values.tobytes())
    return response.SerializeToString()


async def test_an_encoded_request_is_forwarded_with_the_time_left() -> None:
    async with recording_server() as (url, recorder):
        await _forward_with_deadline(url, recorder)


async def _forward_with_deadline(url: str, recorder: Recorder) -> None:
    recorder.reply = _reply(np.zeros((1, 3), np.float32))
    request = pb.ModelInferRequest(model_name="m", id="r")
    request.parameters["timeout"].int64_param = 60_000_000  # the caller's: 60 s
    request.parameters["custom"].string_param = "kept"
    backend = TritonBackend(url)
    try:
        deadline = MonotonicClock().now() + 2.0
        answer = await backend.infer_wire(
            SPEC, request.SerializeToString(), deadline=deadline, trace_context={"traceparent": "t"}
        )
    finally:
        await backend.aclose()
    assert answer == recorder.reply  # the server's bytes, unchanged
    sent = pb.ModelInferRequest.FromString(recorder.requests[0])
    assert sent.id == "r" and sent.parameters["custom"].string_param == "kept"
    assert 1_000_000 < sent.parameters["timeout"].int64_param <= 2_000_000  # the deadline's
    assert recorder.metadata[0]["traceparent"] == "t"


async def test_a_batch_is_encoded_once_and_decoded_as_views() -> None:
    async with recording_server() as (url, recorder):
        await _batch(url, recorder)


async def _batch(url: str, recorder: Recorder) -> None:
    out = np.arange(6, dtype=np.float32).reshape(2, 3)
    recorder.reply = _reply(out)
    x = np.ones((2, 3), np.float32)
    s = np.array([[b"a"], [b"bc"]], dtype=np.object_)
    backend = TritonBackend(url)
    try:
        outputs = await backend.infer(
            SPEC, {"X": x, "S": s}, outputs=("Y",), parameters={"priority": 2, "flag": True}
        )
    finally:
        await backend.aclose()
    np.testing.assert_array_equal(outputs["Y"], out)
    assert not outputs["Y"].flags.owndata  # a view of the response bytes
    sent = pb.ModelInferRequest.FromString(recorder.requests[0])
    assert [(t.name, t.datatype, list(t.shape)) for t in sent.inputs] == [
        ("X", "FP32", [2, 3]),
        ("S", "BYTES", [2, 1]),
    ]
    assert sent.raw_input_contents[0] == x.tobytes()
    assert sent.raw_input_contents[1] == b"\x01\x00\x00\x00a\x02\x00\x00\x00bc"
    assert [o.name for o in sent.outputs] == ["Y"]
    assert sent.parameters["priority"].uint64_param == 2
    assert sent.parameters["flag"].bool_param is True
    assert "timeout" not in sent.parameters  # no deadline, no timeout


@pytest.mark.parametrize(
    ("code", "error", "retryable"),
    [
        (grpc.StatusCode.UNAVAILABLE, BackendUnavailable, True),
        (grpc.StatusCode.INTERNAL, BackendError, False),
    ],
)
async def test_statuses_become_our_errors(
    code: grpc.StatusCode, error: type, retryable: bool
) -> None:
    async with recording_server() as (url, recorder):
        recorder.abort = code
        backend = TritonBackend(url)
        try:
            with pytest.raises(error) as info:
                request = pb.ModelInferRequest(model_name="m").SerializeToString()
                await backend.infer_wire(SPEC, request)
        finally:
            await backend.aclose()
    assert info.value.retryable is retryable
    assert "queue is full" in info.value.message


async def test_an_unreadable_response_is_a_backend_error() -> None:
    async with recording_server() as (url, recorder):
        recorder.reply = b"\xff\xff"
        backend = TritonBackend(url)
        try:
            with pytest.raises(BackendError, match="unreadable response"):
                await backend.infer(SPEC, {"X": np.ones((1, 3), np.float32)})
        finally:
            await backend.aclose()


async def test_a_message_over_the_channel_limit_names_the_sizes_and_the_setting() -> None:
    async with recording_server() as (url, recorder):
        backend = TritonBackend(url, max_message_bytes=1024)
        request = pb.ModelInferRequest(model_name="m", raw_input_contents=[bytes(2048)])
        recorder.reply = _reply(np.zeros(512, np.float32))  # 2 KiB back
        try:
            with pytest.raises(MessageTooLarge) as sent:
                await backend.infer_wire(SPEC, request.SerializeToString())
            with pytest.raises(MessageTooLarge) as received:
                await backend.infer(SPEC, {"X": np.ones((1, 3), np.float32)})
        finally:
            await backend.aclose()
    assert not recorder.requests[1:]  # the large request never left the gateway
    for info in (sent, received):
        assert info.value.code == "INVALID_ARGUMENT" and not info.value.retryable
        assert "max_message_bytes" in info.value.message
        assert "vs. 1024)" in info.value.message, info.value.message
