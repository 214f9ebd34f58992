"""The tensor codec: KServe v2 protobuf messages <-> the scheduler's numpy types.

Protobuf stops here. Inputs sent in ``raw_input_contents`` become numpy views
of the received bytes (no copy); typed ``contents`` are converted once.
BYTES tensors use the KServe framing: each element is a 4-byte little-endian
length followed by that many bytes. Every malformed tensor is rejected with
InvalidArgument and a message that names the tensor and what is wrong.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from gateway.api.inference import grpc_service_pb2 as pb
from scheduler.errors import InvalidArgument, Unimplemented
from scheduler.request import InferResult, Parameters
from scheduler.spec import DataType, ModelSpec, Tensor

#: Which typed ``contents`` field carries each datatype (FP16/BF16 have none).
_CONTENTS_FIELD: dict[DataType, str] = {
    DataType.BOOL: "bool_contents",
    DataType.INT8: "int_contents",
    DataType.INT16: "int_contents",
    DataType.INT32: "int_contents",
    DataType.INT64: "int64_contents",
    DataType.UINT8: "uint_contents",
    DataType.UINT16: "uint_contents",
    DataType.UINT32: "uint_contents",
    DataType.UINT64: "uint64_contents",
    DataType.FP32: "fp32_contents",
    DataType.FP64: "fp64_contents",
    DataType.BYTES: "bytes_contents",
}
_LENGTH = struct.Struct("<I")


def parse_datatype(name: str, tensor: str) -> DataType:
    try:
        return DataType(name)
    except ValueError:
        valid = ", ".join(t.value for t in DataType)
        raise InvalidArgument(
            f"tensor '{tensor}' has unknown datatype {name!r}; use one of {valid}"
        ) from None


def decode_bytes(buffer: bytes, count: int, tensor: str) -> Tensor:
    """Split a KServe BYTES buffer into ``count`` elements, checking the framing."""
    items = np.empty(count, dtype=np.object_)
    view = memoryview(buffer)
    offset = 0
    for index in range(count):
        if offset + 4 > len(view):
            raise InvalidArgument(
                f"BYTES input '{tensor}' is truncated: element {index} of {count} has no "
                f"4-byte length prefix (offset {offset}, {len(view) - offset} bytes left)"
            )
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidArgument(
                f"BYTES input '{tensor}' is truncated: element {index} declares {length} "
                f"bytes but only {len(view) - offset} remain"
            )
        items[index] = bytes(view[offset : offset + length])
        offset += length
    if offset != len(view):
        raise InvalidArgument(
            f"BYTES input '{tensor}' has {len(view) - offset} bytes after its {count} elements; "
            "the shape and the data disagree"
        )
    return items


def encode_bytes(array: Tensor) -> bytes:
    """Frame a BYTES tensor (other elements are sent as their UTF-8 text)."""
    parts: list[bytes] = []
    for item in array.reshape(-1):
        # Anything not bytes is sent as its text, as tritonclient does.
        data = item if isinstance(item, bytes) else str(item).encode()
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def _shape(dims: Iterable[int], tensor: str) -> tuple[int, ...]:
    shape = tuple(int(d) for d in dims)
    if any(d < 0 for d in shape):
        raise InvalidArgument(
            f"tensor '{tensor}' has shape {list(shape)}; a request's dimensions must be >= 0"
        )
    return shape


def decode_tensor(tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None) -> Tensor:
    """One input tensor as a numpy array, from raw bytes or typed contents."""
    datatype = parse_datatype(tensor.datatype, tensor.name)
    shape = _shape(tensor.shape, tensor.name)
    count = math.prod(shape)
    if "shared_memory_region" in tensor.parameters:
        raise Unimplemented(
            f"input '{tensor.name}' uses shared memory, which a network gateway cannot read; "
            "send the tensor in raw_input_contents"
        )
    if raw is not None:
        if datatype is DataType.BYTES:
            return decode_bytes(raw, count, tensor.name).reshape(shape)
        expected = count * (datatype.item_size or 0)
        if len(raw) != expected:
            raise InvalidArgument(
                f"input '{tensor.name}' has {len(raw)} bytes of raw data, but shape "
                f"{list(shape)} of {datatype.value} needs {expected}"
            )
        return np.frombuffer(raw, dtype=datatype.numpy_dtype).reshape(shape)
    field = _CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidArgument(
            f"input '{tensor.name}' is {datatype.value}, which has no typed contents field; "
            "send it in raw_input_contents"
        )
    values: Sequence[Any] = getattr(tensor.contents, field)
    if len(values) != count:
        raise InvalidArgument(
            f"input '{tensor.name}' has {len(values)} elements in contents.{field}, but shape "
            f"{list(shape)} needs {count}"
        )
    if datatype is DataType.BYTES:
        items = np.empty(count, dtype=np.object_)
        items[:] = list(values)
        return items.reshape(shape)
    dtype = datatype.numpy_dtype
    if dtype.kind in "iu" and count:
        # The protobuf fields are wider than INT8/16 and UINT8/16; numpy 1.x
        # would wrap an out-of-range value silently instead of failing.
        info = np.iinfo(dtype)
        low, high = min(values), max(values)
        if low < info.min or high > info.max:
            raise InvalidArgument(
                f"input '{tensor.name}' has a value out of range for {datatype.value} "
                f"[{info.min}, {info.max}]: {low if low < info.min else high}"
            )
    return np.array(values, dtype=dtype).reshape(shape)


def decode_inputs(request: pb.ModelInferRequest) -> dict[str, Tensor]:
    """All inputs of a request, by name."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(
            f"the request has {len(request.inputs)} inputs but {len(raw)} raw_input_contents; "
            "when raw contents are used, every input needs exactly one"
        )
    inputs: dict[str, Tensor] = {}
    for index, tensor in enumerate(request.inputs):
        if tensor.name in inputs:
            raise InvalidArgument(f"input '{tensor.name}' appears more than once")
        if raw and tensor.HasField("contents"):
            raise InvalidArgument(
                f"input '{tensor.name}' has both typed contents and raw_input_contents; "
                "send one or the other"
            )
        inputs[tensor.name] = decode_tensor(tensor, raw[index] if raw else None)
    return inputs


def decode_parameters(params: Any) -> dict[str, bool | int | float | str]:
    """A protobuf ``map<string, InferParameter>`` as plain Python values."""
    decoded: dict[str, bool | int | float | str] = {}
    for key, value in params.items():
        choice = value.WhichOneof("parameter_choice")
        if choice is None:
            raise InvalidArgument(f"parameter '{key}' has no value")
        decoded[key] = getattr(value, choice)
    return decoded


def encode_parameters(target: Any, params: Parameters) -> None:
    for key, value in params.items():
        slot = target[key]
        if isinstance(value, bool):
            slot.bool_param = value
        elif isinstance(value, int):
            if value >= 2**63:  # only uint64 can hold it
                slot.uint64_param = value
            else:
                slot.int64_param = value
        elif isinstance(value, float):
            slot.double_param = value
        else:
            slot.string_param = str(value)


def encode_response(result: InferResult, spec: ModelSpec) -> pb.ModelInferResponse:
    """The response message, outputs as raw contents in the model's output order."""
    response = pb.ModelInferResponse(
        model_name=result.model_name, model_version=result.model_version, id=result.id
    )
    if result.parameters:
        encode_parameters(response.parameters, result.parameters)
    for name, array in result.outputs.items():
        declared = spec.output(name)
        datatype = declared.datatype if declared else DataType.of_array(array)
        output = response.outputs.add(name=name, datatype=datatype.value)
        output.shape.extend(array.shape)
        if datatype is DataType.BYTES:
            response.raw_output_contents.append(encode_bytes(array))
        else:
            array = np.ascontiguousarray(array, dtype=datatype.numpy_dtype)
            response.raw_output_contents.append(array.tobytes())
    return response
