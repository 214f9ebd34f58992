"""Decoded request layouts, remembered by their encoded bytes.

A caller sends the same model, version, tensor names, datatypes, shapes,
requested outputs and parameters over and over; only the tensors and the
``id`` change. Parsing those small fields and validating them against the
model costs more than everything else the gateway does for a request (each
protobuf field access builds Python objects), so ``Layouts`` does it once per
distinct layout: the request is cut into its ``id``, its raw contents and the
rest (``kserve_wire.split_request``), and the rest, as bytes, is the key of
the decoded, validated ``Layout``. A repeated layout then costs one
dictionary lookup plus a size check per tensor.

A layout is valid for the scheduler ``generation`` it was checked in; when
the fleet's models change, it is decoded again. Only layouts whose tensors
travel in ``raw_input_contents`` are kept (typed ``contents`` are part of the
key and differ per request), none that failed, and at most ``max_entries``
(when full, the table starts over).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from gateway import codec
from gateway.api.inference import grpc_service_pb2 as pb
from scheduler.errors import InvalidArgument, Unimplemented
from scheduler.request import Parameters
from scheduler.spec import DataType, ModelSpec, Tensor
from scheduler.validation import validate_inputs, validate_requested_outputs


@dataclass(frozen=True, slots=True)
class InputLayout:
    """One input as the layout declares it; ``nbytes`` is None for BYTES."""

    name: str
    datatype: DataType
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    count: int
    nbytes: int | None


@dataclass(frozen=True, slots=True)
class Layout:
    """A request's small fields, decoded and checked against ``spec``."""

    spec: ModelSpec
    version: str
    inputs: tuple[InputLayout, ...]
    outputs: tuple[str, ...]
    parameters: Parameters
    priority: int
    generation: int
    #: Inputs sent in typed ``contents`` (decoded per request, never remembered).
    typed: bool = False
    #: The response's tensor bytes, where the model's config fixes its outputs'
    #: shapes (0: not known); a batch is capped by its responses too.
    reply_bytes: int = 0
    #: The ``timeout`` parameter (µs, checked by ``scheduling_parameters``); 0: none.
    timeout_us: int = 0

    def tensors(self, raw: Sequence[Any]) -> dict[str, Tensor]:
        """The inputs as numpy views of ``raw``, after checking their sizes."""
        if len(raw) != len(self.inputs):
            raise InvalidArgument(
                f"the request has {len(self.inputs)} inputs but {len(raw)} raw_input_contents; "
                "when raw contents are used, every input needs exactly one"
            )
        tensors: dict[str, Tensor] = {}
        for item, buffer in zip(self.inputs, raw, strict=True):
            if item.nbytes is None:
                tensors[item.name] = codec.decode_bytes(buffer, item.count, item.name).reshape(
                    item.shape
                )
                continue
            if len(buffer) != item.nbytes:
                raise InvalidArgument(
                    f"input '{item.name}' has {len(buffer)} bytes of raw data, but shape "
                    f"{list(item.shape)} of {item.datatype.value} needs {item.nbytes}"
                )
            # One call where ``frombuffer`` and ``reshape`` make two: a view all the same.
            tensors[item.name] = np.ndarray(item.shape, item.dtype, buffer)
        return tensors


class Layouts:
    """The table of known layouts (see the module docstring)."""

    def __init__(
        self,
        max_entries: int = 1024,
        max_key_bytes: int = 4096,
        limits: codec.TensorLimits = codec.DEFAULT_LIMITS,
    ) -> None:
        self._max_entries = max_entries
        self._max_key_bytes = max_key_bytes
        self.limits = limits
        self._table: dict[bytes, Layout] = {}

    def __len__(self) -> int:
        return len(self._table)

    def get(
        self,
        key: bytes,
        generation: int,
        resolve: Callable[[str, str], ModelSpec],
    ) -> Layout:
        """The layout of ``key`` (a request without its id and raw contents),
        decoded and validated now unless known for this generation."""
        layout = self._table.get(key)
        if layout is not None and layout.generation == generation:
            return layout
        try:
            request = pb.ModelInferRequest.FromString(key)
        except Exception as exc:  # protobuf's DecodeError
            raise InvalidArgument(
                f"the request is not a valid inference.ModelInferRequest message: {exc}"
            ) from None
        layout = _decode(request, generation, resolve, self.limits)
        # A sequence's steps differ in their parameters (id, start, end): kept,
        # they would crowd the other layouts out of the table.
        if len(key) <= self._max_key_bytes and not layout.typed and not layout.spec.sequence:
            if len(self._table) >= self._max_entries:
                self._table.clear()
            self._table[key] = layout
        return layout


def _decode(
    request: pb.ModelInferRequest,
    generation: int,
    resolve: Callable[[str, str], ModelSpec],
    limits: codec.TensorLimits = codec.DEFAULT_LIMITS,
) -> Layout:
    """Everything about a request but its id and tensors, checked against its model."""
    if not request.model_name:
        raise InvalidArgument("model_name is required")
    spec = resolve(request.model_name, request.model_version)
    parameters = codec.decode_parameters(request.parameters) if request.parameters else {}
    for output in request.outputs:
        if "classification" in output.parameters:
            raise Unimplemented(
                f"output '{output.name}' asks for classification, which the gateway does "
                "not offer; request the raw output and classify on the client"
            )
        if "shared_memory_region" in output.parameters:
            raise Unimplemented(codec.NO_SHARED_MEMORY.format(kind="system or CUDA"))
    outputs = tuple(o.name for o in request.outputs)
    validate_requested_outputs(spec, outputs)
    inputs: list[InputLayout] = []
    for tensor in request.inputs:
        datatype = codec.parse_datatype(tensor.datatype, tensor.name)
        shape = codec.tensor_shape(tensor.shape, tensor.name, limits)
        if tensor.parameters and "shared_memory_region" in tensor.parameters:
            raise Unimplemented(
                f"input '{tensor.name}' uses shared memory, which a network gateway cannot "
                "read; send the tensor in raw_input_contents"
            )
        count = math.prod(shape)
        size = None if datatype is DataType.BYTES else count * (datatype.item_size or 0)
        inputs.append(InputLayout(tensor.name, datatype, datatype.numpy_dtype, shape, count, size))
    names = [item.name for item in inputs]
    if len(set(names)) != len(names):
        duplicate = next(n for n in names if names.count(n) > 1)
        raise InvalidArgument(f"input '{duplicate}' appears more than once")
    # Validate the layout against the model with stand-in arrays of the
    # declared shapes and datatypes (no data is read or allocated).
    validate_inputs(spec, {i.name: _stand_in(i) for i in inputs})
    priority = scheduling_parameters(parameters)
    timeout = parameters.get("timeout")  # checked there: None or a whole number >= 0
    row_bytes = spec.output_row_bytes(outputs)
    rows = inputs[0].shape[0] if inputs and inputs[0].shape and spec.max_batch_size > 0 else 0
    return Layout(
        spec=spec,
        version=request.model_version,
        inputs=tuple(inputs),
        outputs=outputs,
        parameters=MappingProxyType(parameters),
        priority=priority,
        generation=generation,
        typed=any(t.HasField("contents") for t in request.inputs),
        reply_bytes=rows * row_bytes if row_bytes else 0,
        timeout_us=timeout if isinstance(timeout, int) else 0,
    )


#: Triton reads ``timeout`` as a signed 64-bit count of microseconds.
_INT64_MAX = (1 << 63) - 1


def scheduling_parameters(parameters: Parameters) -> int:
    """Check the parameters the gateway itself acts on; return the priority.

    ``priority`` must be a whole number >= 0 (0 is the model's default
    level), ``timeout`` a whole number of microseconds that fits Triton's
    int64: anything else (NaN, infinity, a fraction, a string, a uint64 past
    int64) would otherwise fail deep in a batch, as an internal error.
    """
    priority = parameters.get("priority", 0)
    if isinstance(priority, float) and math.isfinite(priority) and priority.is_integer():
        priority = int(priority)
    if isinstance(priority, bool) or not isinstance(priority, int) or priority < 0:
        raise InvalidArgument(
            f"parameter 'priority' is {str(priority)[:32]!r}; it must be a whole number >= 0 "
            "(1 is the highest level; 0 means the model's default)"
        )
    timeout = parameters.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int) or not 0 <= timeout <= _INT64_MAX
    ):
        raise InvalidArgument(
            f"parameter 'timeout' is {str(timeout)[:32]!r}; it must be a whole number of "
            f"microseconds in 0..{_INT64_MAX}"
        )
    return priority


def _stand_in(item: InputLayout) -> Tensor:
    """An array with the input's shape and dtype that holds no memory of its own."""
    return np.lib.stride_tricks.as_strided(
        np.empty(1, item.dtype), shape=item.shape, strides=(0,) * len(item.shape)
    )
