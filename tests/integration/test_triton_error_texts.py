"""Each bad request goes to a real Triton and through the gateway: the status
code must be the same, and the gateway's message must start with Triton's.

What is compared of Triton's message (``triton_core``): Triton's leading
``[request id: ...] `` is dropped (the gateway does not add it), and so is the
``NOTE: ...`` Triton appends to some messages, where the gateway puts its own
detail instead. The rest, with any final full stop, must be the gateway's prefix.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from gateway.api.inference import grpc_service_pb2 as pb
from gateway.api.inference import grpc_service_pb2_grpc as pb_grpc
from tests.support.gateway import GatewayProcess
from tests.support.triton import TritonProcess

_REQUEST_ID = re.compile(r"^\[request id: [^\]]*\] ")


def triton_core(message: str) -> str:
    """The part of Triton's message the gateway must begin with."""
    core = _REQUEST_ID.sub("", message)
    core = core.split(" NOTE:", 1)[0]
    return core.rstrip().removesuffix(".")


def test_triton_core() -> None:
    assert triton_core("[request id: <id_unknown>] expected 2 inputs. Please go.") == (
        "expected 2 inputs. Please go"
    )
    assert triton_core("unexpected shape. Expected [-1,16], got [1,8]. NOTE: Setting x") == (
        "unexpected shape. Expected [-1,16], got [1,8]"
    )


def _tensor(
    name: str, array: np.ndarray, datatype: str
) -> tuple[pb.ModelInferRequest.InferInputTensor, bytes]:
    return (
        pb.ModelInferRequest.InferInputTensor(
            name=name, datatype=datatype, shape=list(array.shape)
        ),
        array.tobytes(),
    )


def _fp32(
    name: str, rows: int, width: int = 16
) -> tuple[pb.ModelInferRequest.InferInputTensor, bytes]:
    return _tensor(name, np.ones((rows, width), np.float32), "FP32")


def _request(*tensors: tuple[pb.ModelInferRequest.InferInputTensor, bytes]) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        model_name="add_sub",
        inputs=[t for t, _ in tensors],
        raw_input_contents=[r for _, r in tensors],
    )


CASES = {
    "wrong-input-name": _request(_fp32("INPUT0", 1), _fp32("NOPE", 1)),
    "missing-input": _request(_fp32("INPUT0", 1)),
    "wrong-shape": _request(_fp32("INPUT0", 1), _fp32("INPUT1", 1, width=8)),
    "wrong-datatype": _request(
        _fp32("INPUT0", 1), _tensor("INPUT1", np.ones((1, 16), np.float64), "FP64")
    ),
    "batch-too-big": _request(_fp32("INPUT0", 9), _fp32("INPUT1", 9)),
    "unknown-model": pb.ModelInferRequest(model_name="no_such_model"),
    "unknown-version": pb.ModelInferRequest(model_name="add_sub", model_version="7"),
}


@pytest.fixture(scope="module")
def stubs(
    gateway: GatewayProcess, triton: TritonProcess
) -> Iterator[tuple[pb_grpc.GRPCInferenceServiceStub, pb_grpc.GRPCInferenceServiceStub]]:
    with (
        grpc.insecure_channel(gateway.address) as via,
        grpc.insecure_channel(triton.grpc_url) as direct,
    ):
        yield pb_grpc.GRPCInferenceServiceStub(via), pb_grpc.GRPCInferenceServiceStub(direct)


def _error(stub: pb_grpc.GRPCInferenceServiceStub, request: pb.ModelInferRequest) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=10)
    return info.value


@pytest.mark.parametrize("case", list(CASES))
def test_gateway_message_starts_with_tritons(
    stubs: tuple[pb_grpc.GRPCInferenceServiceStub, pb_grpc.GRPCInferenceServiceStub], case: str
) -> None:
    via, direct = stubs
    theirs = _error(direct, CASES[case])
    ours = _error(via, CASES[case])
    assert ours.code() == theirs.code(), (ours.details(), theirs.details())
    core = triton_core(theirs.details() or "")
    assert core, theirs.details()
    assert (ours.details() or "").startswith(core), (
        f"\n triton:  {theirs.details()}\n gateway: {ours.details()}"
    )
