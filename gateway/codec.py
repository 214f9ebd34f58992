"""The tensor codec: KServe v2 protobuf messages <-> the scheduler's numpy types.

Protobuf stops here. ``ModelInfer`` requests arrive as bytes, which can go on
to a backend unchanged. Their ``raw_input_contents`` are cut out of the message
(``scheduler.kserve_wire``) and only the rest is parsed, so those inputs
become numpy views of the received bytes, never copied (``gateway.layouts``
remembers the parsed rest). Typed ``contents`` are converted once. BYTES tensors use the KServe
framing: each element is a 4-byte little-endian length followed by that many
bytes. Every malformed tensor is rejected with InvalidArgument and a message
that names the tensor and what is wrong.

Responses are written as bytes too: a backend's encoded response is returned
as it came, and decoded outputs are appended to the encoded small fields with
one copy of their data (``encode_response``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from gateway.api.inference import grpc_service_pb2 as pb
from scheduler import kserve_wire as wire
from scheduler.errors import InvalidArgument, Unimplemented
from scheduler.kserve_wire import decode_bytes, encode_bytes
from scheduler.request import InferResult, Parameters
from scheduler.spec import DataType, ModelSpec, Tensor

__all__ = [
    "DEFAULT_LIMITS",
    "ResponseHeaders",
    "TensorLimits",
    "decode_bytes",
    "decode_inputs",
    "decode_parameters",
    "decode_request",
    "decode_tensor",
    "encode_bytes",
    "encode_parameters",
    "encode_response",
    "parse_datatype",
    "stream_error",
    "stream_response",
]

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


NO_SHARED_MEMORY = (  # .format(kind=...)
    "the gateway does not support {kind} shared memory: it forwards tensors over the "
    "network to remote servers, so a region in this host's memory cannot be read there; "
    "send tensors in raw_input_contents instead"
)


_DATATYPES: dict[str, DataType] = {t.value: t for t in DataType}
_ITEM_SIZE: dict[DataType, int] = {t: t.item_size or 0 for t in DataType}


def _name(tensor: str) -> str:
    """A tensor name as a status message may echo it (a caller's long name must
    not push the message past gRPC's metadata limit)."""
    return tensor if len(tensor) <= 64 else tensor[:61] + "..."


def parse_datatype(name: str, tensor: str) -> DataType:
    datatype = _DATATYPES.get(name)
    if datatype is None:
        valid = ", ".join(_DATATYPES)
        raise InvalidArgument(
            f"tensor '{_name(tensor)}' has unknown datatype {_name(name)!r}; use one of {valid}"
        ) from None
    return datatype


@dataclass(frozen=True, slots=True)
class TensorLimits:
    """What one input tensor may declare, checked on its shape alone (arithmetic,
    before any data is read or allocated): at most ``max_dims`` dimensions and
    ``max_elements`` elements (each dimension too, so a zero-sized tensor cannot
    declare a dimension numpy would overflow on)."""

    max_dims: int = 32
    max_elements: int = 1 << 28


DEFAULT_LIMITS = TensorLimits()


def tensor_shape(
    dims: Iterable[int], tensor: str, limits: TensorLimits = DEFAULT_LIMITS
) -> tuple[int, ...]:
    shape = tuple(dims)
    if len(shape) > limits.max_dims:
        raise InvalidArgument(
            f"tensor '{_name(tensor)}' has {len(shape)} dimensions; "
            f"at most {limits.max_dims} are allowed"
        )
    if shape:
        if min(shape) < 0:
            raise InvalidArgument(
                f"tensor '{_name(tensor)}' has shape {list(shape)}; "
                "a request's dimensions must be >= 0"
            )
        # Python integers: the product is exact, whatever the caller declared.
        if max(shape) > limits.max_elements or math.prod(shape) > limits.max_elements:
            raise InvalidArgument(
                f"tensor '{_name(tensor)}' has shape {list(shape)}, more than the "
                f"{limits.max_elements} elements a tensor may have here"
            )
    return shape


def decode_request(data: bytes) -> tuple[pb.ModelInferRequest, Sequence[Any]]:
    """A ``ModelInferRequest`` parsed without its raw contents, and views of
    those into ``data`` (no copy).

    Bytes that are not such a message are INVALID_ARGUMENT, like any other
    malformed request (gRPC would answer a failed deserialisation with a
    bare INTERNAL).
    """
    try:
        header, raw = wire.split_raw(data, wire.RAW_INPUT_FIELD)
        return pb.ModelInferRequest.FromString(header), raw
    except (wire.WireError, DecodeError) as exc:
        raise InvalidArgument(
            f"the request is not a valid inference.ModelInferRequest message: {exc}"
        ) from None


def decode_tensor(
    tensor: pb.ModelInferRequest.InferInputTensor,
    raw: Any | None,
    limits: TensorLimits = DEFAULT_LIMITS,
) -> Tensor:
    """One input tensor as a numpy array, from raw bytes or typed contents."""
    name = tensor.name
    datatype = parse_datatype(tensor.datatype, name)
    shape = tensor_shape(tensor.shape, name, limits)
    count = math.prod(shape)
    if tensor.parameters and "shared_memory_region" in tensor.parameters:
        raise Unimplemented(
            f"input '{name}' uses shared memory, which a network gateway cannot read; "
            "send the tensor in raw_input_contents"
        )
    if raw is not None:
        if datatype is DataType.BYTES:
            return decode_bytes(raw, count, name).reshape(shape)
        expected = count * _ITEM_SIZE[datatype]
        size = len(raw)
        if size != expected:
            raise InvalidArgument(
                f"input '{name}' has {size} bytes of raw data, but shape "
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


def decode_inputs(
    request: pb.ModelInferRequest,
    raw: Sequence[Any] | None = None,
    limits: TensorLimits = DEFAULT_LIMITS,
) -> dict[str, Tensor]:
    """All inputs of a request, by name; ``raw`` are its raw contents as
    ``decode_request`` cut them out (default: the message's own field)."""
    if raw is None:
        raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(
            f"the request has {len(request.inputs)} inputs but {len(raw)} raw_input_contents; "
            "when raw contents are used, every input needs exactly one"
        )
    inputs: dict[str, Tensor] = {}
    for index, tensor in enumerate(request.inputs):
        name = tensor.name
        if name in inputs:
            raise InvalidArgument(f"input '{name}' appears more than once")
        if raw:
            if tensor.HasField("contents"):
                raise InvalidArgument(
                    f"input '{name}' has both typed contents and raw_input_contents; "
                    "send one or the other"
                )
            inputs[name] = decode_tensor(tensor, raw[index], limits)
        else:
            inputs[name] = decode_tensor(tensor, None, limits)
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
        wire.set_parameter(target[key], value)


@dataclass(frozen=True, slots=True)
class _Plan:
    """How to encode responses of one layout: the encoded header (model,
    version, outputs' names, datatypes and shapes) and, per output, the
    numpy dtype its data must have (None: BYTES, framed per response) and the
    tag and length that precede its raw contents (None for BYTES); ``size``:
    the encoded bytes of all that and the contents (None with a BYTES output),
    and ``stream``, the tag and length that wrap a response of that size
    (without an id) in a ``ModelStreamInferResponse``."""

    header: bytes
    dtypes: tuple[np.dtype[Any] | None, ...]
    prefixes: tuple[bytes | None, ...]
    size: int | None
    stream: bytes


class ResponseHeaders:
    """Response encoding plans, remembered per layout of the outputs.

    Requests of one model come back with few distinct layouts (one per batch
    size, mostly), so after the first of each, a response is its header, its
    id and its tensors joined, with no protobuf message built. Holds at most
    ``max_entries``; when full it starts over.
    """

    def __init__(self, max_entries: int = 4096) -> None:
        self._max_entries = max_entries
        self._plans: dict[tuple[Any, ...], _Plan] = {}

    def plan(self, result: InferResult, spec: ModelSpec) -> _Plan:
        outputs = result.outputs
        key = (
            result.model_name,
            result.model_version,
            *[(name, array.dtype, array.shape) for name, array in outputs.items()],
        )
        plan = self._plans.get(key)
        if plan is None:
            plan = _make_plan(result, spec)
            if len(self._plans) >= self._max_entries:
                self._plans.clear()
            self._plans[key] = plan
        return plan


def _make_plan(result: InferResult, spec: ModelSpec) -> _Plan:
    response = pb.ModelInferResponse(
        model_name=result.model_name, model_version=result.model_version
    )
    dtypes: list[np.dtype[Any] | None] = []
    prefixes: list[bytes | None] = []
    size: int | None = 0
    for name, array in result.outputs.items():
        declared = spec.output(name)
        datatype = declared.datatype if declared else DataType.of_array(array)
        response.outputs.add(name=name, datatype=datatype.value, shape=array.shape)
        if datatype is DataType.BYTES:
            dtypes.append(None)
            prefixes.append(None)
            size = None
        else:
            nbytes = array.size * _ITEM_SIZE[datatype]
            dtypes.append(datatype.numpy_dtype)
            prefixes.append(prefix := wire.field_prefix(wire.RAW_OUTPUT_FIELD, nbytes))
            size = None if size is None else size + len(prefix) + nbytes
    header = response.SerializeToString()
    total = None if size is None else size + len(header)
    stream = b"" if total is None else wire.field_prefix(wire.STREAM_RESPONSE_FIELD, total)
    return _Plan(header, tuple(dtypes), tuple(prefixes), total, stream)


def encode_response(
    result: InferResult,
    spec: ModelSpec,
    headers: ResponseHeaders | None = None,
    *,
    stream: bool = False,
) -> bytes:
    """The encoded ``ModelInferResponse``: the backend's own when it sent one,
    else the outputs as raw contents, in the order the result holds them,
    each tensor copied once (into the joined message). ``stream``: as the
    ``ModelStreamInferResponse`` that carries it, its size known from the plan
    beforehand, so the tensors are still copied once."""
    if result.wire is not None or result.parameters:  # the latter rare: a whole message
        encoded = _encode_with_parameters(result, spec) if result.wire is None else result.wire
        return stream_response(encoded) if stream else encoded
    plan = (headers or ResponseHeaders(1)).plan(result, spec)
    size = plan.size
    parts: list[Any] = [plan.stream if stream else b"", plan.header]  # the wrapper first
    if result.id:
        identifier = result.id.encode()
        parts.append(tag := wire.field_prefix(_ID_FIELD, len(identifier)))
        parts.append(identifier)
        if stream and size is not None:  # the wrapper's length grows with the id
            size += len(tag) + len(identifier)
            parts[0] = wire.field_prefix(wire.STREAM_RESPONSE_FIELD, size)
    for array, dtype, prefix in zip(
        result.outputs.values(), plan.dtypes, plan.prefixes, strict=True
    ):
        if dtype is None:
            data = encode_bytes(array)
            parts.append(wire.field_prefix(wire.RAW_OUTPUT_FIELD, len(data)))
            parts.append(data)
            continue
        parts.append(prefix)
        if array.dtype == dtype and array.flags.c_contiguous and dtype.kind != "V":
            parts.append(array.data)  # a view: the join below is the one copy
        else:
            parts.append(wire.as_buffer(array.astype(dtype, copy=False)))
    encoded = b"".join(parts)
    return stream_response(encoded) if stream and size is None else encoded


def _encode_with_parameters(result: InferResult, spec: ModelSpec) -> bytes:
    response = pb.ModelInferResponse(
        model_name=result.model_name, model_version=result.model_version, id=result.id
    )
    encode_parameters(response.parameters, result.parameters)
    contents: list[Any] = []
    for name, array in result.outputs.items():
        declared = spec.output(name)
        datatype = declared.datatype if declared else DataType.of_array(array)
        response.outputs.add(name=name, datatype=datatype.value, shape=array.shape)
        if datatype is DataType.BYTES:
            contents.append(encode_bytes(array))
        else:
            contents.append(wire.as_buffer(array.astype(datatype.numpy_dtype, copy=False)))
    return wire.join_raw(response.SerializeToString(), wire.RAW_OUTPUT_FIELD, contents)


_ID_FIELD = wire.ID_FIELD


def stream_response(encoded: bytes) -> bytes:
    """A ``ModelStreamInferResponse`` carrying an encoded ``ModelInferResponse``."""
    return wire.wrap(wire.STREAM_RESPONSE_FIELD, encoded)


def stream_error(request: pb.ModelInferRequest | None, message: str) -> bytes:
    """A ``ModelStreamInferResponse`` that reports one request's failure."""
    response = pb.ModelStreamInferResponse(error_message=message)
    if request is not None:
        response.infer_response.model_name = request.model_name
        response.infer_response.model_version = request.model_version
        response.infer_response.id = request.id
    return response.SerializeToString()
