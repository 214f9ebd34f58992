"""gateway.codec against the generated KServe v2 messages."""

from __future__ import annotations

import struct
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from gateway import codec
from gateway.api.inference import grpc_service_pb2 as pb
from scheduler.errors import InvalidArgument, Unimplemented
from scheduler.request import InferResult
from scheduler.spec import DataType, ModelSpec, TensorSpec

# One sample per datatype, with the extremes that break naive codecs.
SAMPLES: dict[DataType, np.ndarray] = {
    DataType.BOOL: np.array([[True, False, True], [False, False, True]]),
    DataType.UINT8: np.array([0, 1, 255], dtype=np.uint8),
    DataType.UINT16: np.array([0, 65535], dtype=np.uint16),
    DataType.UINT32: np.array([0, 2**32 - 1], dtype=np.uint32),
    DataType.UINT64: np.array([[0, 2**63], [2**63 - 1, 2**64 - 1]], dtype=np.uint64),
    DataType.INT8: np.array([-128, 0, 127], dtype=np.int8),
    DataType.INT16: np.array([-(2**15), 2**15 - 1], dtype=np.int16),
    DataType.INT32: np.array([-(2**31), 2**31 - 1], dtype=np.int32),
    DataType.INT64: np.array([-(2**63), -1, 2**63 - 1], dtype=np.int64),
    DataType.FP16: np.array([0.0, -1.5, 65504.0, np.inf, np.nan], dtype=np.float16),
    DataType.FP32: np.array([[1.5, -0.0], [np.finfo(np.float32).max, np.nan]], dtype=np.float32),
    DataType.FP64: np.array([np.pi, -np.inf, 5e-324], dtype=np.float64),
    DataType.BF16: np.array([1.0, -2.5, 3.0e38, np.nan], dtype=ml_dtypes.bfloat16),
    DataType.BYTES: np.array([b"", b"\xff\xfe\x00bin", "h\u00e9llo"], dtype=np.object_),
}


def _utf8(array: np.ndarray) -> list[bytes]:
    return [x.encode() if isinstance(x, str) else bytes(x) for x in array.reshape(-1)]


def _raw(array: np.ndarray, datatype: DataType) -> bytes:
    return codec.encode_bytes(array) if datatype is DataType.BYTES else array.tobytes()


def _request(*tensors: tuple[str, str, list[int]], raw: list[bytes] | None = None):
    request = pb.ModelInferRequest(model_name="m")
    for name, datatype, shape in tensors:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
    request.raw_input_contents.extend(raw or [])
    return request


def _spec(outputs: dict[str, DataType]) -> ModelSpec:
    return ModelSpec(
        name="m", inputs=(), outputs=tuple(TensorSpec(n, t, (-1,)) for n, t in outputs.items())
    )


def _encode(result: InferResult, spec: ModelSpec) -> pb.ModelInferResponse:
    return pb.ModelInferResponse.FromString(codec.encode_response(result, spec))


def _decode_output(response: pb.ModelInferResponse, index: int) -> np.ndarray:
    out = response.outputs[index]
    datatype = DataType(out.datatype)
    raw = response.raw_output_contents[index]
    if datatype is DataType.BYTES:
        return codec.decode_bytes(raw, int(np.prod(out.shape)), out.name).reshape(out.shape)
    return np.frombuffer(raw, dtype=datatype.numpy_dtype).reshape(out.shape)


@pytest.mark.parametrize("datatype", list(DataType), ids=lambda t: t.value)
def test_raw_round_trip_every_datatype(datatype: DataType) -> None:
    array = SAMPLES[datatype]
    request = _request(("x", datatype.value, list(array.shape)), raw=[_raw(array, datatype)])
    decoded = codec.decode_inputs(request)["x"]
    assert decoded.shape == array.shape
    assert decoded.dtype == datatype.numpy_dtype
    if datatype is DataType.BYTES:
        assert decoded.tolist() == [b"", b"\xff\xfe\x00bin", "h\u00e9llo".encode()]
    else:
        assert decoded.tobytes() == array.tobytes()  # bit-exact, NaN payloads included

    result = InferResult(model_name="m", model_version="1", outputs={"y": decoded}, id="r1")
    response = _encode(result, _spec({"y": datatype}))
    assert (response.model_name, response.model_version, response.id) == ("m", "1", "r1")
    assert response.outputs[0].datatype == datatype.value
    assert list(response.outputs[0].shape) == list(array.shape)
    assert response.raw_output_contents[0] == _raw(decoded, datatype)
    back = _decode_output(response, 0)
    if datatype is DataType.BYTES:
        assert _utf8(back) == _utf8(array)
    else:
        assert back.tobytes() == array.tobytes()


@pytest.mark.parametrize(
    "datatype", [t for t in DataType if t is not DataType.BYTES], ids=lambda t: t.value
)
def test_raw_decode_is_zero_copy(datatype: DataType) -> None:
    array = SAMPLES[datatype]
    raw = array.tobytes()
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="x", datatype=datatype.value, shape=list(array.shape)
    )
    decoded = codec.decode_tensor(tensor, raw)
    assert np.shares_memory(decoded, np.frombuffer(raw, dtype=np.uint8))
    assert not decoded.flags.owndata
    # Through a whole request too: the array views a bytes object, not a copy of its own.
    request = _request(("x", datatype.value, list(array.shape)), raw=[raw])
    viewed = codec.decode_inputs(request)["x"]
    base = viewed
    while isinstance(base, np.ndarray):
        base = base.base
    assert isinstance(base, bytes) and base == raw


@pytest.mark.parametrize(
    "datatype", [t for t in DataType if t is not DataType.BYTES], ids=lambda t: t.value
)
def test_requests_are_decoded_without_copying_their_tensors(datatype: DataType) -> None:
    array = SAMPLES[datatype]
    request = _request(("x", datatype.value, list(array.shape)), raw=[array.tobytes()])
    request.id = "r1"
    data = request.SerializeToString()
    header, contents = codec.decode_request(data)
    assert not header.raw_input_contents and header.id == "r1"
    decoded = codec.decode_inputs(header, contents)["x"]
    assert np.shares_memory(decoded, np.frombuffer(data, dtype=np.uint8))  # a view of the wire
    assert decoded.tobytes() == array.tobytes()


def test_empty_tensor_round_trips() -> None:
    request = _request(("x", "FP32", [0, 4]), ("s", "BYTES", [0]), raw=[b"", b""])
    decoded = codec.decode_inputs(request)
    assert decoded["x"].shape == (0, 4) and decoded["s"].shape == (0,)


TYPED: list[tuple[DataType, str, list[Any]]] = [
    (DataType.BOOL, "bool_contents", [True, False, True]),
    (DataType.INT8, "int_contents", [-128, 0, 127]),
    (DataType.INT16, "int_contents", [-(2**15), 2**15 - 1]),
    (DataType.INT32, "int_contents", [-(2**31), 2**31 - 1]),
    (DataType.INT64, "int64_contents", [-(2**63), 2**63 - 1]),
    (DataType.UINT8, "uint_contents", [0, 255]),
    (DataType.UINT16, "uint_contents", [0, 65535]),
    (DataType.UINT32, "uint_contents", [0, 2**32 - 1]),
    (DataType.UINT64, "uint64_contents", [0, 2**63, 2**64 - 1]),
    (DataType.FP32, "fp32_contents", [1.5, -2.25, 0.0]),
    (DataType.FP64, "fp64_contents", [np.pi, -1e300]),
    (DataType.BYTES, "bytes_contents", [b"", b"\xff\x00", b"abc"]),
]


@pytest.mark.parametrize(("datatype", "field", "values"), TYPED, ids=[t[0].value for t in TYPED])
def test_typed_contents(datatype: DataType, field: str, values: list[Any]) -> None:
    request = _request(("x", datatype.value, [1, len(values)]))
    getattr(request.inputs[0].contents, field).extend(values)
    decoded = codec.decode_inputs(request)["x"]
    assert decoded.shape == (1, len(values))
    assert decoded.dtype == datatype.numpy_dtype
    assert decoded.reshape(-1).tolist() == values


@pytest.mark.parametrize("datatype", ["FP16", "BF16"])
def test_half_types_in_typed_contents_are_rejected(datatype: str) -> None:
    request = _request(("h", datatype, [1]))
    request.inputs[0].contents.fp32_contents.append(1.0)
    with pytest.raises(InvalidArgument, match="raw_input_contents") as info:
        codec.decode_inputs(request)
    assert "'h'" in info.value.message and datatype in info.value.message


@pytest.mark.filterwarnings("ignore:NumPy will stop allowing:DeprecationWarning")
@pytest.mark.parametrize(
    ("datatype", "field", "value"),
    [
        ("INT8", "int_contents", 300),
        ("UINT8", "uint_contents", 256),
        ("INT16", "int_contents", -40000),
    ],
)
def test_typed_contents_out_of_range_are_rejected(datatype: str, field: str, value: int) -> None:
    request = _request(("x", datatype, [1]))
    getattr(request.inputs[0].contents, field).append(value)
    with pytest.raises(InvalidArgument, match="out of range"):
        codec.decode_inputs(request)


def _frame(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


@pytest.mark.parametrize(
    ("datatype", "shape", "raw", "words"),
    [
        ("FP32", [2, 2], b"\0" * 12, ["'x'", "12 bytes", "needs 16", "FP32"]),
        ("INT64", [3], b"\0" * 25, ["25 bytes", "needs 24"]),
        ("BYTES", [2], _frame(b"a"), ["truncated", "2 elements", "length prefixes"]),
        ("BYTES", [2], _frame(b"abcd"), ["truncated", "element 1 of 2", "length prefix"]),
        ("BYTES", [1], b"\x01\x00", ["truncated", "1 elements", "length prefixes"]),
        ("BYTES", [1], struct.pack("<I", 10) + b"abc", ["truncated", "declares 10", "only 3"]),
        ("BYTES", [1], _frame(b"a") + b"zz", ["2 bytes after its 1 elements", "shape"]),
    ],
)
def test_malformed_raw_data(datatype: str, shape: list[int], raw: bytes, words: list[str]) -> None:
    with pytest.raises(InvalidArgument) as info:
        codec.decode_inputs(_request(("x", datatype, shape), raw=[raw]))
    for word in words:
        assert word in info.value.message


def test_typed_count_mismatch() -> None:
    request = _request(("x", "FP32", [2, 2]))
    request.inputs[0].contents.fp32_contents.extend([1.0, 2.0, 3.0])
    with pytest.raises(InvalidArgument, match=r"3 elements in contents.fp32_contents.*needs 4"):
        codec.decode_inputs(request)


def test_unknown_datatype() -> None:
    with pytest.raises(InvalidArgument) as info:
        codec.decode_inputs(_request(("x", "FLOAT32", [1]), raw=[b"\0" * 4]))
    assert "unknown datatype 'FLOAT32'" in info.value.message
    assert "FP32" in info.value.message and "BYTES" in info.value.message


def test_negative_dims() -> None:
    with pytest.raises(InvalidArgument, match=r"shape \[-1, 4\].*>= 0"):
        codec.decode_inputs(_request(("x", "FP32", [-1, 4]), raw=[b""]))


def test_duplicate_input_name() -> None:
    request = _request(("x", "INT32", [1]), ("x", "INT32", [1]), raw=[b"\0" * 4] * 2)
    with pytest.raises(InvalidArgument, match="'x' appears more than once"):
        codec.decode_inputs(request)


def test_raw_and_typed_together() -> None:
    request = _request(("x", "INT32", [1]), raw=[b"\0" * 4])
    request.inputs[0].contents.int_contents.append(1)
    with pytest.raises(InvalidArgument, match="both typed contents and raw_input_contents"):
        codec.decode_inputs(request)


def test_raw_count_differs_from_inputs() -> None:
    request = _request(("a", "INT32", [1]), ("b", "INT32", [1]), raw=[b"\0" * 4])
    with pytest.raises(InvalidArgument, match="2 inputs but 1 raw_input_contents"):
        codec.decode_inputs(request)


def test_shared_memory_is_unimplemented() -> None:
    request = _request(("x", "FP32", [1]))
    request.inputs[0].parameters["shared_memory_region"].string_param = "region0"
    with pytest.raises(Unimplemented) as info:
        codec.decode_inputs(request)
    assert info.value.code == "UNIMPLEMENTED"
    assert "shared memory" in info.value.message and "raw_input_contents" in info.value.message


# value -> the InferParameter field it must travel in
PARAMS: list[tuple[str, bool | int | float | str, str]] = [
    ("flag", True, "bool_param"),
    ("off", False, "bool_param"),
    ("small", -(2**63), "int64_param"),
    ("count", 7, "int64_param"),
    ("big", 2**63, "uint64_param"),
    ("max", 2**64 - 1, "uint64_param"),
    ("ratio", 0.25, "double_param"),
    ("name", "h\u00e9llo", "string_param"),
]


def test_parameters_encode_decode() -> None:
    response = pb.ModelInferResponse()
    codec.encode_parameters(response.parameters, {k: v for k, v, _ in PARAMS})
    kinds = {k: v.WhichOneof("parameter_choice") for k, v in response.parameters.items()}
    assert kinds == {k: kind for k, _, kind in PARAMS}
    decoded = codec.decode_parameters(response.parameters)
    assert decoded == {k: v for k, v, _ in PARAMS}
    assert type(decoded["flag"]) is bool and type(decoded["count"]) is int


def test_parameter_without_value_is_rejected() -> None:
    request = pb.ModelInferRequest()
    request.parameters["empty"].SetInParent()
    with pytest.raises(InvalidArgument, match="parameter 'empty' has no value"):
        codec.decode_parameters(request.parameters)


def test_encode_response_converts_and_infers_datatypes() -> None:
    declared = np.arange(6, dtype=np.float64).reshape(2, 3).T  # not contiguous, wrong dtype
    result = InferResult(
        model_name="m",
        model_version="2",
        outputs={"y": declared, "extra": np.array([1, 2], dtype=np.int16)},
        parameters={"sequence_end": True},
    )
    response = _encode(result, _spec({"y": DataType.FP32}))
    assert [o.name for o in response.outputs] == ["y", "extra"]
    assert response.outputs[0].datatype == "FP32" and list(response.outputs[0].shape) == [3, 2]
    assert _decode_output(response, 0).tolist() == declared.tolist()
    assert response.outputs[1].datatype == "INT16"
    assert _decode_output(response, 1).tolist() == [1, 2]
    assert response.parameters["sequence_end"].bool_param is True


def test_encode_bytes_of_non_bytes_objects_uses_their_text() -> None:
    # tritonclient's serialize_byte_tensor sends str(obj).encode() for non-bytes objects.
    assert codec.encode_bytes(np.array([5], dtype=np.object_)) == _frame(b"5")


def test_random_round_trips_are_inverses() -> None:
    """Seeded property check: raw encode/decode and BYTES framing are inverses."""
    rng = np.random.default_rng(1234)
    fixed = [t for t in DataType if t is not DataType.BYTES]
    for case in range(300):
        shape = tuple(int(d) for d in rng.integers(0, 5, size=rng.integers(0, 4)))
        count = int(np.prod(shape))
        datatype = fixed[case % len(fixed)]
        if datatype is DataType.BOOL:
            raw = rng.integers(0, 2, size=count).astype(np.bool_).tobytes()
        else:
            raw = rng.bytes(count * (datatype.item_size or 0))  # every bit pattern
        tensor = pb.ModelInferRequest.InferInputTensor(
            name="x", datatype=datatype.value, shape=list(shape)
        )
        decoded = codec.decode_tensor(tensor, raw)
        assert decoded.shape == shape, case
        result = InferResult("m", "1", {"y": decoded})
        assert _encode(result, _spec({"y": datatype})).raw_output_contents[0] == raw

        items = [rng.bytes(int(rng.integers(0, 12))) for _ in range(count)]
        array = np.empty(count, dtype=np.object_)
        array[:] = items
        framed = codec.encode_bytes(array.reshape(shape))
        assert len(framed) == 4 * count + sum(map(len, items))
        assert codec.decode_bytes(framed, count, "s").tolist() == items, case


def test_garbage_bytes_are_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match=r"not a valid inference\.ModelInferRequest"):
        codec.decode_request(b"\xff\xff\xff")


def test_encoded_response_is_returned_unchanged() -> None:
    encoded = pb.ModelInferResponse(model_name="m", id="7").SerializeToString()
    result = InferResult(model_name="m", model_version="1", outputs={}, wire=encoded)
    assert codec.encode_response(result, _spec({})) is encoded


def test_stream_responses_wrap_the_encoded_response() -> None:
    encoded = pb.ModelInferResponse(model_name="m", id="7").SerializeToString()
    stream = pb.ModelStreamInferResponse.FromString(codec.stream_response(encoded))
    assert stream.infer_response.id == "7" and not stream.error_message
    header = pb.ModelInferRequest(model_name="m", model_version="2", id="9")
    error = pb.ModelStreamInferResponse.FromString(codec.stream_error(header, "bad"))
    assert error.error_message == "bad"
    assert (error.infer_response.model_name, error.infer_response.id) == ("m", "9")


@pytest.mark.parametrize("request_id", ["", "r-7"])
def test_a_stream_response_is_encoded_in_one_go_as_wrapping_would(request_id: str) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    text = np.array([b"ab", b""], dtype=np.object_)
    cases = [
        (InferResult("m", "1", {"y": x}, request_id), _spec({"y": DataType.FP32})),
        (
            InferResult("m", "1", {"y": x, "s": text}, request_id),
            _spec({"y": DataType.FP32, "s": DataType.BYTES}),
        ),
        (InferResult("m", "1", {"y": x}, request_id, {"p": 1}), _spec({"y": DataType.FP32})),
    ]
    headers = codec.ResponseHeaders()
    for result, spec in cases:
        wrapped = codec.stream_response(codec.encode_response(result, spec, headers))
        assert codec.encode_response(result, spec, headers, stream=True) == wrapped
        stream = pb.ModelStreamInferResponse.FromString(wrapped)
        assert stream.infer_response.id == request_id
