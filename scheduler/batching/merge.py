"""Merging requests' tensors into one batch and splitting the batch's outputs back.

Every batched tensor has the batch as its first dimension, so merging is a
concatenation along axis 0 and splitting is slicing at the running row
offsets. BYTES tensors are numpy object arrays and concatenate the same way;
their elements may differ in length, only the non-batch dimensions must agree,
which is what ``shape_key`` captures. Splitting returns views of the batch's
arrays (no copy); the batch's buffers live as long as any request holds one.

``tensor_bytes`` and ``byte_runs`` cap a batch by size as well as rows: the
executor cuts a batch whose tensors would not fit in one backend message into
consecutive runs that each fit.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from scheduler.errors import BackendError, InvalidArgument
from scheduler.spec import Tensor

#: Per input, in name order: (name, dtype string, non-batch dims).
ShapeKey = tuple[tuple[str, str, tuple[int, ...]], ...]


def shape_key(inputs: Mapping[str, Tensor]) -> ShapeKey:
    """What two requests must share to be merged: input names, dtypes, non-batch dims."""
    return tuple(
        (name, inputs[name].dtype.str, tuple(int(d) for d in inputs[name].shape[1:]))
        for name in sorted(inputs)
    )


def rows_of(inputs: Mapping[str, Tensor]) -> int:
    """The batch size (first dimension) a request's inputs agree on."""
    rows = 0
    for array in inputs.values():  # the common case, agreeing, without lists
        if not array.ndim or array.shape[0] < 1 or (rows and array.shape[0] != rows):
            break
        rows = array.shape[0]
    else:
        if rows:
            return int(rows)
    sizes = [a.shape[0] if a.ndim else -1 for a in inputs.values()]
    rows = sizes[0] if sizes else 0
    if rows < 1 or sizes.count(rows) != len(sizes):
        raise InvalidArgument(
            f"inputs must share a batch size (first dimension) >= 1; got {sorted(set(sizes))}"
        )
    return int(rows)


def params_key(parameters: Mapping[str, Any], ignore: frozenset[str]) -> Hashable:
    """Request parameters as a hashable key: requests that differ in them are not merged."""
    return tuple(sorted((k, v) for k, v in parameters.items() if k not in ignore))


def tensor_bytes(inputs: Mapping[str, Tensor]) -> int:
    """The bytes ``inputs`` take on the wire: a BYTES element as its 4-byte
    length and its data (its text, if not bytes), anything else as its buffer."""
    total = 0
    for array in inputs.values():
        if array.dtype == object:
            total += sum(
                4 + len(item if isinstance(item, bytes) else str(item).encode())
                for item in array.reshape(-1)
            )
        else:
            total += array.nbytes
    return total


def byte_runs(sizes: Sequence[int], budget: int) -> list[range]:
    """``sizes`` cut, in order, into runs of consecutive indices whose sum
    stays within ``budget``; one size over the budget makes a run of its own.

    Consecutive, so each run keeps the queue's order (priority, deadline,
    arrival), and greedy, so there are as few runs as that order allows.
    """
    runs: list[range] = []
    start, used = 0, 0
    for index, size in enumerate(sizes):
        if index > start and used + size > budget:
            runs.append(range(start, index))
            start, used = index, 0
        used += size
    if sizes:
        runs.append(range(start, len(sizes)))
    return runs


def merge_inputs(requests: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """One batch from many requests' inputs: each input concatenated along axis 0, in order.

    A single request is passed through unchanged (zero-copy). Raises
    InvalidArgument if the requests do not share input names, dtypes and
    non-batch dimensions (the queue only merges requests with one
    ``shape_key``, so this is a guard, not a path).
    """
    if not requests:
        raise ValueError("merge_inputs needs at least one request")
    if len(requests) == 1:
        return dict(requests[0])
    first = requests[0]
    # The guard works per input over all members at once (a set of dtypes, and
    # numpy's own check of the other dimensions as it concatenates) rather
    # than comparing every member's inputs in Python: a batch of 64 small
    # requests cost more in that comparison than in the concatenation.
    count = len(first)
    merged: dict[str, Tensor] = {}
    try:
        if {len(inputs) for inputs in requests} != {count}:
            raise KeyError("input names differ")
        for name in first:
            parts = [inputs[name] for inputs in requests]
            if len({part.dtype for part in parts}) > 1:
                raise ValueError("datatypes differ")
            merged[name] = np.concatenate(parts)
    except (KeyError, ValueError):
        expected = shape_key(first)
        differs = ((i, r) for i, r in enumerate(requests) if shape_key(r) != expected)
        index, inputs = next(differs, (1, requests[1]))
        raise InvalidArgument(
            f"request {index} of the batch does not match the first request's inputs "
            f"(names, datatypes and non-batch dimensions must agree): "
            f"{shape_key(inputs)} != {expected}"
        ) from None
    return merged


def split_outputs(
    outputs: Mapping[str, Tensor], rows: Sequence[int], *, backend_id: str = ""
) -> list[dict[str, Tensor]]:
    """Each request's slice of the batch's outputs, in the order of ``rows``.

    Every output must have ``sum(rows)`` as its first dimension; a backend
    that returns anything else has broken the batch contract, and a
    BackendError says which output and what came back.
    """
    total = sum(rows)
    for name, array in outputs.items():
        got = int(array.shape[0]) if array.ndim else None
        if got != total:
            raise BackendError(
                f"output '{name}' has shape {list(array.shape)}, but a batch of "
                f"{len(rows)} requests with {total} rows in all needs first dimension {total}",
                backend_id=backend_id,
            )
    if len(rows) == 1:  # a batch of one: the outputs are its own
        return [dict(outputs)]
    items = list(outputs.items())
    return [
        {name: array[start:stop] for name, array in items}
        for start, stop in itertools.pairwise(itertools.accumulate(rows, initial=0))
    ]
