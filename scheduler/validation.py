"""Checks a decoded request against its model's spec, with messages a caller can act on."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from scheduler.errors import InvalidArgument
from scheduler.spec import DataType, ModelSpec, Tensor


def _fmt(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _names(names: Sequence[str]) -> str:
    """A list of names the way Triton prints one: ``['A', 'B']``."""
    return "[" + ", ".join(f"'{n}'" for n in names) + "]"


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
    names = [t.name for t in spec.inputs]
    unexpected = [name for name in inputs if name not in names]
    if unexpected:
        raise InvalidArgument(
            f"unexpected inference input '{unexpected[0]}' for model '{spec.name}'; "
            f"its inputs are {', '.join(map(repr, names))}"
        )
    missing = [name for name in names if name not in inputs]
    if missing:
        got = [name for name in names if name in inputs]
        raise InvalidArgument(
            f"expected {len(names)} inputs but got {len(inputs)} inputs for model "
            f"'{spec.name}'. Got input(s) {_names(got)}, but missing required input(s) "
            f"{_names(missing)}. Please provide all required input(s)."
        )
    batch_sizes: set[int] = set()
    for tensor in spec.inputs:
        array = inputs[tensor.name]
        try:
            got_type = DataType.of_array(array).value
        except ValueError:
            got_type = f"numpy dtype {array.dtype}"
        if got_type != tensor.datatype.value:
            raise InvalidArgument(
                f"inference input '{tensor.name}' data-type is '{got_type}', but model "
                f"'{spec.name}' expects '{tensor.datatype.value}'"
            )
        if not tensor.accepts_shape(array.shape):
            raise InvalidArgument(
                f"unexpected shape for input '{tensor.name}' for model '{spec.name}'. "
                f"Expected {_fmt(tensor.shape)}, got {_fmt(array.shape)}; -1 is any size"
                + (", and dim 0 is the batch" if spec.max_batch_size > 0 else "")
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
        if batch > spec.max_batch_size:
            raise InvalidArgument(
                f"inference request batch-size must be <= {spec.max_batch_size} for "
                f"'{spec.name}'; this request's is {batch}"
            )
        if batch < 1:
            raise InvalidArgument(
                f"inference request batch-size must be >= 1 for '{spec.name}'; "
                f"this request's is {batch}"
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
