"""Checks a decoded request against its model's spec, with messages a caller can act on."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from scheduler.errors import InvalidArgument
from scheduler.spec import DataType, ModelSpec, Tensor


def _fmt(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def validate_inputs(spec: ModelSpec, inputs: Mapping[str, Tensor]) -> None:
    """Raise InvalidArgument unless ``inputs`` match the model's inputs exactly.

    Names, datatypes and shapes (``-1`` is a wildcard) are checked, and for a
    batching model every input must agree on a batch size within
    ``max_batch_size``. The common case, a valid request, takes one pass with
    no allocation; anything else goes to the thorough check that words the error.
    """
    if len(inputs) == len(spec.inputs):
        batch = -1
        for tensor in spec.inputs:
            array = inputs.get(tensor.name)
            if array is None or array.dtype != tensor.dtype:
                break
            shape = array.shape
            if len(shape) != len(tensor.shape):
                break
            if not all(want in (-1, got) for want, got in zip(tensor.shape, shape, strict=True)):
                break
            if spec.max_batch_size > 0:
                if batch == -1:
                    batch = shape[0]
                elif shape[0] != batch:
                    break
        else:
            if spec.max_batch_size <= 0 or 0 < batch <= spec.max_batch_size:
                return
    _explain_invalid(spec, inputs)


def _explain_invalid(spec: ModelSpec, inputs: Mapping[str, Tensor]) -> None:
    """The thorough check: raises InvalidArgument saying what is wrong."""
    unexpected = sorted(set(inputs) - {t.name for t in spec.inputs})
    if unexpected:
        raise InvalidArgument(
            f"model '{spec.name}' has no input named {', '.join(map(repr, unexpected))}; "
            f"its inputs are {', '.join(repr(t.name) for t in spec.inputs)}"
        )
    missing = [t.name for t in spec.inputs if t.name not in inputs]
    if missing:
        raise InvalidArgument(
            f"model '{spec.name}' expects input {', '.join(map(repr, missing))} "
            f"but the request does not carry it"
        )
    batch_sizes: set[int] = set()
    for tensor in spec.inputs:
        array = inputs[tensor.name]
        try:
            got = DataType.of_array(array).value
        except ValueError:
            got = f"numpy dtype {array.dtype}"
        if got != tensor.datatype.value:
            raise InvalidArgument(
                f"input '{tensor.name}' of model '{spec.name}' has datatype {got}, "
                f"expected {tensor.datatype.value}"
            )
        if not tensor.accepts_shape(array.shape):
            raise InvalidArgument(
                f"input '{tensor.name}' of model '{spec.name}' has shape {_fmt(array.shape)}, "
                f"expected {_fmt(tensor.shape)} (-1 is any size)"
            )
        if spec.max_batch_size > 0:
            batch_sizes.add(array.shape[0])
    if spec.max_batch_size > 0:
        if len(batch_sizes) > 1:
            raise InvalidArgument(
                f"inputs of model '{spec.name}' disagree on the batch size (first dimension): "
                f"{sorted(batch_sizes)}"
            )
        batch = batch_sizes.pop() if batch_sizes else 0
        if not 0 < batch <= spec.max_batch_size:
            raise InvalidArgument(
                f"batch size {batch} of model '{spec.name}' is outside 1..{spec.max_batch_size}"
            )


def validate_requested_outputs(spec: ModelSpec, names: Sequence[str]) -> None:
    """Raise InvalidArgument for a requested output the model does not have."""
    known = {t.name for t in spec.outputs}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InvalidArgument(
            f"model '{spec.name}' has no output named {', '.join(map(repr, unknown))}; "
            f"its outputs are {', '.join(repr(t.name) for t in spec.outputs)}"
        )
    if len(set(names)) != len(names):
        raise InvalidArgument(f"an output of model '{spec.name}' is requested more than once")
