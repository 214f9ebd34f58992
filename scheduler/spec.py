"""What a model looks like: datatypes, tensor specs and model specs.

These are the scheduler's own plain types. The gateway builds them from (and
renders them into) KServe v2 metadata and Triton model configs; backends
report them from discovery; nothing here knows protobuf.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import ml_dtypes
import numpy as np
import numpy.typing as npt


class DataType(enum.Enum):
    """The KServe v2 tensor datatypes, with their numpy equivalents.

    BYTES tensors are numpy object arrays of ``bytes``; BF16 uses
    ``ml_dtypes.bfloat16`` (as tritonclient does), so every datatype decodes
    from raw little-endian bytes without a copy.
    """

    BOOL = "BOOL"
    UINT8 = "UINT8"
    UINT16 = "UINT16"
    UINT32 = "UINT32"
    UINT64 = "UINT64"
    INT8 = "INT8"
    INT16 = "INT16"
    INT32 = "INT32"
    INT64 = "INT64"
    FP16 = "FP16"
    FP32 = "FP32"
    FP64 = "FP64"
    BF16 = "BF16"
    BYTES = "BYTES"

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        return _NUMPY[self]

    @property
    def item_size(self) -> int | None:
        """Bytes per element, or None for BYTES (variable length)."""
        return None if self is DataType.BYTES else _NUMPY[self].itemsize

    @classmethod
    def parse(cls, name: str) -> DataType:
        try:
            return cls(name)
        except ValueError:
            # Triton's model config spells them TYPE_FP32, TYPE_STRING, ...
            alias = {"STRING": "BYTES"}.get(name.removeprefix("TYPE_"), name.removeprefix("TYPE_"))
            try:
                return cls(alias)
            except ValueError:
                valid = ", ".join(m.value for m in cls)
                raise ValueError(f"unknown datatype {name!r}; expected one of {valid}") from None

    @classmethod
    def of_array(cls, array: npt.NDArray[Any]) -> DataType:
        """The datatype a numpy array carries (object arrays are BYTES)."""
        try:
            return _FROM_NUMPY[array.dtype]
        except KeyError:
            raise ValueError(f"numpy dtype {array.dtype} has no KServe datatype") from None


_NUMPY: dict[DataType, np.dtype[Any]] = {
    DataType.BOOL: np.dtype(np.bool_),
    DataType.UINT8: np.dtype("<u1"),
    DataType.UINT16: np.dtype("<u2"),
    DataType.UINT32: np.dtype("<u4"),
    DataType.UINT64: np.dtype("<u8"),
    DataType.INT8: np.dtype("<i1"),
    DataType.INT16: np.dtype("<i2"),
    DataType.INT32: np.dtype("<i4"),
    DataType.INT64: np.dtype("<i8"),
    DataType.FP16: np.dtype("<f2"),
    DataType.FP32: np.dtype("<f4"),
    DataType.FP64: np.dtype("<f8"),
    DataType.BF16: np.dtype(ml_dtypes.bfloat16),
    DataType.BYTES: np.dtype(np.object_),
}
_FROM_NUMPY: dict[np.dtype[Any], DataType] = {dt: t for t, dt in _NUMPY.items()}

#: A tensor: a numpy array of any datatype (BYTES tensors are object arrays).
Tensor = npt.NDArray[Any]


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output of a model.

    ``shape`` is the full shape a request carries, batch dimension included
    (as in KServe model metadata); ``-1`` matches any size.
    """

    name: str
    datatype: DataType
    shape: tuple[int, ...]
    #: ``datatype.numpy_dtype``, looked up once (validation reads it per request).
    dtype: np.dtype[Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", self.datatype.numpy_dtype)

    def accepts_shape(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.shape) and all(
            want == -1 or want == got for want, got in zip(self.shape, shape, strict=True)
        )


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Everything the gateway and scheduler need to know about one model.

    ``max_batch_size`` follows Triton: 0 means the model does not batch, and
    its shapes have no batch dimension; > 0 means the first dimension of
    every tensor is the batch, at most that large. ``config`` holds the
    backend's native model configuration (Triton's config as JSON) when it
    has one, so the gateway can answer ModelConfig faithfully.

    Two properties of that config change how requests travel, and are read
    from it once, here: ``sequence`` (Triton's ``sequence_batching``: the
    model keeps state per sequence id inside one server, so a sequence's
    requests stay on one backend and are never merged by the gateway) and
    ``decoupled`` (``model_transaction_policy { decoupled: true }``: a request
    may have any number of responses, so it is served by streaming only).
    ``stateful`` is either one: the request path's single test for both.
    """

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    versions: tuple[str, ...] = ("1",)
    platform: str = ""
    max_batch_size: int = 0
    config: Mapping[str, Any] = field(default_factory=dict)
    sequence: bool = field(init=False, repr=False, compare=False)
    decoupled: bool = field(init=False, repr=False, compare=False)
    stateful: bool = field(init=False, repr=False, compare=False)
    #: How long a sequence may sit idle before the backend forgets it (Triton's
    #: ``max_sequence_idle_microseconds``, 1 s when the config leaves it out).
    max_sequence_idle_s: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        config = self.config or {}
        batching = config.get("sequence_batching")
        policy = config.get("model_transaction_policy") or {}
        decoupled = bool(policy.get("decoupled", False)) if isinstance(policy, Mapping) else False
        idle_us = 1_000_000
        if isinstance(batching, Mapping) and batching.get("max_sequence_idle_microseconds"):
            idle_us = int(batching["max_sequence_idle_microseconds"])  # JSON: uint64 as text
        object.__setattr__(self, "sequence", batching is not None)
        object.__setattr__(self, "decoupled", decoupled)
        object.__setattr__(self, "stateful", batching is not None or decoupled)
        object.__setattr__(self, "max_sequence_idle_s", idle_us / 1e6)

    def input(self, name: str) -> TensorSpec | None:
        return next((t for t in self.inputs if t.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((t for t in self.outputs if t.name == name), None)

    def has_version(self, version: str) -> bool:
        return not version or version in self.versions

    def output_row_bytes(self, names: Sequence[str] = ()) -> int | None:
        """Bytes a batch row of the outputs ``names`` (all outputs when empty)
        takes in a response; None where the config leaves it open (a BYTES
        output, or a dimension past the batch one that is -1). Read once per
        request layout, so that a batch is capped by its response too."""
        if self.max_batch_size <= 0:
            return None
        total = 0
        for output in self.outputs:
            if names and output.name not in names:
                continue
            dims = output.shape[1:]
            item = output.datatype.item_size
            if item is None or any(d < 0 for d in dims):
                return None
            total += item * math.prod(dims)
        return total

    def same_signature(self, other: ModelSpec) -> bool:
        """Whether two backends' copies of a model are interchangeable."""
        return (
            self.inputs == other.inputs
            and self.outputs == other.outputs
            and self.max_batch_size == other.max_batch_size
        )
