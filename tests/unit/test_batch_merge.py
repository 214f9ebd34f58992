"""scheduler.batching.merge: split(merge(x)) == x, exactly and in order, for any composition."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.batching.merge import (
    byte_runs,
    merge_inputs,
    rows_of,
    shape_key,
    split_outputs,
    tensor_bytes,
)
from scheduler.errors import BackendError, InvalidArgument
from scheduler.kserve_wire import encode_bytes
from scheduler.spec import Tensor

DTYPES = [np.dtype(t) for t in ("<f4", "<f8", "<i8", "<i4", "<u1", "bool", "<f2")] + [
    np.dtype(object)
]


def _tensor(draw: st.DrawFn, dtype: np.dtype[Any], shape: tuple[int, ...]) -> Tensor:
    size = int(np.prod(shape))
    if dtype == np.dtype(object):  # BYTES: elements of any length, zero bytes included
        items = draw(st.lists(st.binary(max_size=6), min_size=size, max_size=size))
        array = np.empty(size, dtype=object)
        array[:] = items
        return array.reshape(shape)
    raw = draw(st.binary(min_size=size * dtype.itemsize, max_size=size * dtype.itemsize))
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


@st.composite
def compositions(draw: st.DrawFn) -> list[dict[str, Tensor]]:
    """Requests sharing input names, dtypes and non-batch dims; batch sizes differ."""
    layout = draw(
        st.lists(
            st.tuples(st.sampled_from(DTYPES), st.lists(st.integers(0, 3), min_size=0, max_size=2)),
            min_size=1,
            max_size=3,
        )
    )
    row_counts = draw(st.lists(st.integers(1, 4), min_size=1, max_size=6))
    return [
        {f"IN{i}": _tensor(draw, dtype, (rows, *dims)) for i, (dtype, dims) in enumerate(layout)}
        for rows in row_counts
    ]


def _same(a: Tensor, b: Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.kind == "f":  # NaN payloads from random bytes: compare the bits
        return a.tobytes() == b.tobytes()
    return bool(np.array_equal(a, b))


@settings(max_examples=150, deadline=None)
@given(compositions())
def test_split_of_merge_gives_back_every_request_in_order(
    requests: list[dict[str, Tensor]],
) -> None:
    merged = merge_inputs(requests)
    rows = [rows_of(r) for r in requests]
    assert all(a.shape[0] == sum(rows) for a in merged.values())
    parts = split_outputs(merged, rows)
    assert len(parts) == len(requests)
    for original, part in zip(requests, parts, strict=True):
        assert part.keys() == original.keys()
        assert all(_same(original[n], part[n]) for n in original)
        assert shape_key(part) == shape_key(original)


def test_bytes_tensors_merge_and_split() -> None:
    a = np.array([[b"x", b"yy"]], dtype=object)
    b = np.array([[b"", b"longer one"], [b"z", b"\x00\x01"]], dtype=object)
    merged = merge_inputs([{"T": a}, {"T": b}])
    assert merged["T"].dtype == object and merged["T"].shape == (3, 2)
    first, second = split_outputs(merged, [1, 2])
    assert first["T"].tolist() == a.tolist() and second["T"].tolist() == b.tolist()


def test_a_single_request_passes_through_without_a_copy() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert merge_inputs([{"X": x}])["X"] is x
    (part,) = split_outputs({"Y": x}, [2])
    assert np.shares_memory(part["Y"], x)


def test_outputs_whose_rows_do_not_match_the_batch_raise() -> None:
    with pytest.raises(BackendError, match=r"'Y'.*first dimension 5"):
        split_outputs({"Y": np.zeros((4, 2))}, [2, 3])
    with pytest.raises(BackendError):
        split_outputs({"Y": np.float32(1.0).reshape(())}, [1])


def test_incompatible_requests_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="non-batch dimensions"):
        merge_inputs([{"X": np.zeros((1, 4))}, {"X": np.zeros((1, 5))}])
    with pytest.raises(InvalidArgument):
        merge_inputs([{"X": np.zeros((1, 4))}, {"X": np.zeros((1, 4), np.float32)}])
    with pytest.raises(InvalidArgument, match="batch size"):
        rows_of({"A": np.zeros((1, 4)), "B": np.zeros((2, 4))})


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 50), max_size=12), st.integers(1, 60))
def test_byte_runs_are_consecutive_fit_the_budget_and_are_as_few_as_order_allows(
    sizes: list[int], budget: int
) -> None:
    runs = byte_runs(sizes, budget)
    assert [i for run in runs for i in run] == list(range(len(sizes)))
    for run, following in zip(runs, [*runs[1:], None], strict=False):
        used = sum(sizes[i] for i in run)
        assert len(run) == 1 or used <= budget  # one size over the budget runs alone
        if following is not None:  # greedy: the next member would not have fit
            assert used + sizes[following[0]] > budget


def test_tensor_bytes_counts_what_the_wire_carries() -> None:
    text = np.array([[b"ab", "c\u00e9"], [b"", b"xyz"]], dtype=object)
    numbers = np.zeros((2, 5), np.float32)
    assert tensor_bytes({"T": text, "N": numbers}) == len(encode_bytes(text)) + 40
