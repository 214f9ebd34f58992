"""Bad requests get the right status and a message a caller can act on, and the
gateway keeps serving afterwards."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from gateway.api.inference import grpc_service_pb2 as pb
from gateway.api.inference import grpc_service_pb2_grpc as pb_grpc
from tests.support.gateway import GatewayProcess, start_gateway
from tests.support.triton import TritonProcess


@pytest.fixture(scope="module")
def stub(gateway: GatewayProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(gateway.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def _fp32(
    name: str, shape: list[int], raw: bytes
) -> tuple[pb.ModelInferRequest.InferInputTensor, bytes]:
    return pb.ModelInferRequest.InferInputTensor(name=name, datatype="FP32", shape=shape), raw


def _request(
    model: str, *tensors: tuple[pb.ModelInferRequest.InferInputTensor, bytes]
) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        model_name=model, inputs=[t for t, _ in tensors], raw_input_contents=[r for _, r in tensors]
    )


def _fails(stub: pb_grpc.GRPCInferenceServiceStub, request: pb.ModelInferRequest) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=10)
    return info.value


GOOD_ROW = np.ones(16, np.float32).tobytes()


@pytest.mark.parametrize(
    ("request_", "code", "words"),
    [
        pytest.param(
            _request("add_sub", _fp32("INPUT0", [1, 16], GOOD_ROW)),
            grpc.StatusCode.INVALID_ARGUMENT,
            ["expected 2 inputs but got 1 inputs", "['INPUT1']"],
            id="missing-input",
        ),
        pytest.param(
            _request(
                "add_sub",
                _fp32("INPUT0", [1, 16], GOOD_ROW[:-4]),
                _fp32("INPUT1", [1, 16], GOOD_ROW),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            ["INPUT0", "60 bytes", "needs 64"],
            id="raw-size-mismatch",
        ),
        pytest.param(
            _request(
                "add_sub",
                _fp32("INPUT0", [1, 8], GOOD_ROW[:32]),
                _fp32("INPUT1", [1, 8], GOOD_ROW[:32]),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            ["Expected [-1,16], got [1,8]"],
            id="wrong-shape",
        ),
        pytest.param(
            _request(
                "add_sub",
                _fp32("INPUT0", [9, 16], GOOD_ROW * 9),
                _fp32("INPUT1", [9, 16], GOOD_ROW * 9),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            ["batch-size must be <= 8 for 'add_sub'", "is 9"],
            id="batch-too-large",
        ),
        pytest.param(
            _request(
                "add_sub",
                _fp32("INPUT0", [1, 16], GOOD_ROW),
                _fp32("INPUT1", [1, 16], GOOD_ROW),
                _fp32("EXTRA", [1], b"\0" * 4),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            ["unexpected inference input 'EXTRA'"],
            id="unknown-input",
        ),
        pytest.param(
            pb.ModelInferRequest(
                model_name="bytes_echo",
                inputs=[
                    pb.ModelInferRequest.InferInputTensor(
                        name="INPUT", datatype="BYTES", shape=[1, 2]
                    )
                ],
                raw_input_contents=[struct.pack("<I", 3) + b"abc" + struct.pack("<I", 10) + b"abc"],
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            ["truncated", "element 1", "10"],
            id="truncated-bytes",
        ),
        pytest.param(
            _request("no_such_model", _fp32("INPUT0", [1, 16], GOOD_ROW)),
            grpc.StatusCode.NOT_FOUND,
            ["Request for unknown model: 'no_such_model' is not found", "add_sub"],
            id="unknown-model",
        ),
        pytest.param(
            pb.ModelInferRequest(model_name="add_sub", model_version="7"),
            grpc.StatusCode.NOT_FOUND,
            ["Request for unknown model: 'add_sub' version 7 is not found", "versions: 1"],
            id="unknown-version",
        ),
        pytest.param(
            pb.ModelInferRequest(
                model_name="add_sub",
                inputs=[
                    pb.ModelInferRequest.InferInputTensor(name="INPUT0", datatype="FP8", shape=[1])
                ],
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            ["unknown datatype", "FP8"],
            id="unknown-datatype",
        ),
        pytest.param(
            _request(
                "add_sub", _fp32("INPUT0", [1, 16], GOOD_ROW), _fp32("INPUT1", [1, 16], GOOD_ROW)
            ).__class__(
                model_name="add_sub",
                outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="NOPE")],
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            ["no output named", "NOPE"],
            id="unknown-output",
        ),
    ],
)
def test_bad_request_status_and_message(
    stub: pb_grpc.GRPCInferenceServiceStub,
    request_: pb.ModelInferRequest,
    code: grpc.StatusCode,
    words: list[str],
) -> None:
    error = _fails(stub, request_)
    assert error.code() == code, error.details()
    for word in words:
        assert word in error.details(), error.details()
    # ...and the gateway still serves.
    ok = stub.ModelInfer(
        _request("add_sub", _fp32("INPUT0", [1, 16], GOOD_ROW), _fp32("INPUT1", [1, 16], GOOD_ROW)),
        timeout=10,
    )
    assert np.frombuffer(ok.raw_output_contents[0], np.float32).tolist() == [2.0] * 16


def test_wrong_dtype_through_tritonclient(gateway: GatewayProcess) -> None:
    client = grpcclient.InferenceServerClient(gateway.address)
    tensors = []
    for name in ("INPUT0", "INPUT1"):
        tensor = grpcclient.InferInput(name, [1, 16], "INT32")
        tensor.set_data_from_numpy(np.ones((1, 16), np.int32))
        tensors.append(tensor)
    with pytest.raises(InferenceServerException) as info:
        client.infer("add_sub", tensors)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "data-type is 'INT32', but model 'add_sub' expects 'FP32'" in info.value.message()


def test_unimplemented_rpcs_say_why(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.SystemSharedMemoryRegister(pb.SystemSharedMemoryRegisterRequest(name="r"), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "raw_input_contents" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="x"), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_oversize_message_is_refused_and_service_continues(
    triton: TritonProcess, tmp_path: Path
) -> None:
    limit = 256 * 1024
    with start_gateway(
        tmp_path, args=["--triton", triton.grpc_url], env={"GATEWAY_MAX_MESSAGE_BYTES": str(limit)}
    ) as gw:
        client = grpcclient.InferenceServerClient(gw.address)
        big = grpcclient.InferInput("INPUT", [1, limit // 8 + 1], "INT64")
        big.set_data_from_numpy(np.zeros((1, limit // 8 + 1), np.int64))
        with pytest.raises(InferenceServerException) as info:
            client.infer("int64_offset", [big])
        assert info.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        small = grpcclient.InferInput("INPUT", [1, 4], "INT64")
        small.set_data_from_numpy(np.arange(4, dtype=np.int64)[None])
        assert client.infer("int64_offset", [small]).as_numpy("OUTPUT").tolist() == [[1, 2, 3, 4]]


def test_garbage_bytes_are_invalid_argument_and_a_stream_goes_on(gateway: GatewayProcess) -> None:
    good = _request(
        "add_sub", _fp32("INPUT0", [1, 16], GOOD_ROW), _fp32("INPUT1", [1, 16], GOOD_ROW)
    )
    good.id = "first"
    later = pb.ModelInferRequest()
    later.CopyFrom(good)
    later.id = "after"
    garbage = b"\xff\xff\xff\xff"
    method = "/inference.GRPCInferenceService/"
    with grpc.insecure_channel(gateway.address) as channel:
        unary = channel.unary_unary(method + "ModelInfer")  # bytes in, bytes out
        with pytest.raises(grpc.RpcError) as info:
            unary(garbage, timeout=10)
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid inference.ModelInferRequest" in (info.value.details() or "")
        stream = channel.stream_stream(method + "ModelStreamInfer")
        sent = [good.SerializeToString(), garbage, later.SerializeToString()]
        replies = [
            pb.ModelStreamInferResponse.FromString(r) for r in stream(iter(sent), timeout=10)
        ]
    errors = [r.error_message for r in replies if r.error_message]
    assert len(replies) == 3 and len(errors) == 1
    assert "not a valid inference.ModelInferRequest" in errors[0]
    assert sorted(r.infer_response.id for r in replies if not r.error_message) == ["after", "first"]
