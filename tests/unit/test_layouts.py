"""gateway.layouts: request layouts decoded once, by their bytes, per generation."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.api.inference import grpc_service_pb2 as pb
from gateway.layouts import Layouts
from scheduler import kserve_wire as wire
from scheduler.errors import InvalidArgument, ModelNotFound
from scheduler.spec import DataType, ModelSpec, TensorSpec

SPEC = ModelSpec(
    "m",
    inputs=(TensorSpec("X", DataType.FP32, (-1, 2)), TensorSpec("S", DataType.BYTES, (-1, 1))),
    outputs=(TensorSpec("Y", DataType.FP32, (-1, 2)),),
    max_batch_size=4,
)
ROWS = np.arange(4, dtype=np.float32).reshape(2, 2)
TEXT = b"\x01\x00\x00\x00a\x02\x00\x00\x00bc"


class Resolver:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, name: str, version: str) -> ModelSpec:
        self.calls += 1
        if name != "m":
            raise ModelNotFound(f"unknown model '{name}'")
        return SPEC


def _request(request_id: str = "r", x: np.ndarray = ROWS) -> bytes:
    request = pb.ModelInferRequest(model_name="m", id=request_id)
    request.inputs.add(name="X", datatype="FP32", shape=list(x.shape))
    request.inputs.add(name="S", datatype="BYTES", shape=[2, 1])
    request.raw_input_contents.extend([x.tobytes(), TEXT])
    request.outputs.add(name="Y")
    request.parameters["priority"].int64_param = 2
    return request.SerializeToString()


def test_a_layout_is_decoded_once_whatever_the_ids_and_tensors() -> None:
    layouts, resolve = Layouts(), Resolver()
    for i in range(5):
        data = _request(f"id-{i}", ROWS + i)
        key, identifier, raw = wire.split_request(data)
        layout = layouts.get(key, 1, resolve)
        tensors = layout.tensors(raw)
        assert identifier.decode() == f"id-{i}"
        np.testing.assert_array_equal(tensors["X"], ROWS + i)
        assert np.shares_memory(tensors["X"], np.frombuffer(data, np.uint8))
        assert tensors["S"].tolist() == [[b"a"], [b"bc"]]
    assert resolve.calls == 1 and len(layouts) == 1
    assert (layout.outputs, layout.priority) == (("Y",), 2)


def test_a_new_generation_decodes_again() -> None:
    layouts, resolve = Layouts(), Resolver()
    key, _, _ = wire.split_request(_request())
    layouts.get(key, 1, resolve)
    layouts.get(key, 2, resolve)
    assert resolve.calls == 2


def test_each_request_still_has_its_sizes_checked() -> None:
    layouts = Layouts()
    key, _, raw = wire.split_request(_request())
    layout = layouts.get(key, 1, Resolver())
    with pytest.raises(InvalidArgument, match="needs 16"):
        layout.tensors([raw[0][:-1], raw[1]])
    with pytest.raises(InvalidArgument, match="2 inputs but 1 raw_input_contents"):
        layout.tensors(raw[:1])
    with pytest.raises(InvalidArgument, match="BYTES input 'S'"):
        layout.tensors([raw[0], b"\x05\x00\x00\x00ab"])


def test_invalid_layouts_are_refused_every_time_and_not_kept() -> None:
    layouts, resolve = Layouts(), Resolver()
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="X", datatype="FP32", shape=[2, 3])  # the model wants [-1, 2]
    request.inputs.add(name="S", datatype="BYTES", shape=[2, 1])
    key = request.SerializeToString()
    for _ in range(2):
        with pytest.raises(InvalidArgument, match="shape"):
            layouts.get(key, 1, resolve)
    assert len(layouts) == 0 and resolve.calls == 2
    with pytest.raises(ModelNotFound):
        layouts.get(pb.ModelInferRequest(model_name="nope").SerializeToString(), 1, resolve)


def test_typed_contents_are_never_kept_and_the_table_is_bounded() -> None:
    layouts = Layouts(max_entries=2)
    typed = pb.ModelInferRequest(model_name="m")
    tensor = typed.inputs.add(name="X", datatype="FP32", shape=[1, 2])
    tensor.contents.fp32_contents.extend([1.0, 2.0])
    typed.inputs.add(name="S", datatype="BYTES", shape=[1, 1]).contents.bytes_contents.append(b"x")
    assert layouts.get(typed.SerializeToString(), 1, Resolver()).typed
    assert len(layouts) == 0
    for version in ("", "1", ""):
        key, _, _ = wire.split_request(
            _request() + pb.ModelInferRequest(model_version=version).SerializeToString()
        )
        layouts.get(key, 1, Resolver())
        assert len(layouts) <= 2
