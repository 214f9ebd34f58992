"""scheduler.validation: requests checked against a model's spec."""

from __future__ import annotations

import numpy as np
import pytest

from scheduler.errors import InvalidArgument
from scheduler.spec import DataType, ModelSpec, TensorSpec
from scheduler.validation import validate_inputs, validate_requested_outputs

BATCHING = ModelSpec(
    name="ranker",
    max_batch_size=4,
    inputs=(
        TensorSpec("FEATURES", DataType.FP32, (-1, 3)),
        TensorSpec("IDS", DataType.INT64, (-1, -1)),
    ),
    outputs=(
        TensorSpec("SCORE", DataType.FP32, (-1, 1)),
        TensorSpec("RANK", DataType.INT32, (-1, 1)),
    ),
)
FIXED = ModelSpec(
    name="fixed",
    max_batch_size=0,
    inputs=(TensorSpec("X", DataType.BYTES, (2, -1)),),
    outputs=(TensorSpec("Y", DataType.BYTES, (2, -1)),),
)


def _inputs(batch: int = 2, ids_batch: int | None = None, width: int = 5) -> dict[str, np.ndarray]:
    return {
        "FEATURES": np.zeros((batch, 3), dtype=np.float32),
        "IDS": np.zeros((batch if ids_batch is None else ids_batch, width), dtype=np.int64),
    }


def _message(spec: ModelSpec, inputs: dict[str, np.ndarray]) -> str:
    with pytest.raises(InvalidArgument) as info:
        validate_inputs(spec, inputs)
    assert info.value.code == "INVALID_ARGUMENT"
    return info.value.message


@pytest.mark.parametrize("width", [1, 7])
@pytest.mark.parametrize("batch", [1, 4])
def test_valid_inputs_pass_with_wildcards(batch: int, width: int) -> None:
    validate_inputs(BATCHING, _inputs(batch, width=width))


def test_unknown_input() -> None:
    inputs = {**_inputs(), "EXTRA": np.zeros((2, 3), dtype=np.float32)}
    message = _message(BATCHING, inputs)
    assert message.startswith("unexpected inference input 'EXTRA' for model 'ranker'")
    assert "'FEATURES', 'IDS'" in message


def test_missing_input() -> None:
    message = _message(BATCHING, {"FEATURES": np.zeros((2, 3), dtype=np.float32)})
    assert message == (
        "expected 2 inputs but got 1 inputs for model 'ranker'. Got input(s) ['FEATURES'], "
        "but missing required input(s) ['IDS']. Please provide all required input(s)."
    )


def test_wrong_datatype() -> None:
    inputs = {**_inputs(), "FEATURES": np.zeros((2, 3), dtype=np.float64)}
    message = _message(BATCHING, inputs)
    assert message.startswith(
        "inference input 'FEATURES' data-type is 'FP64', but model 'ranker' expects 'FP32'"
    )


@pytest.mark.parametrize(
    ("shape", "shown"), [((2, 4), "[2,4]"), ((2,), "[2]"), ((2, 3, 1), "[2,3,1]")]
)
def test_wrong_shape(shape: tuple[int, ...], shown: str) -> None:
    inputs = {**_inputs(), "FEATURES": np.zeros(shape, dtype=np.float32)}
    message = _message(BATCHING, inputs)
    assert message.startswith(
        f"unexpected shape for input 'FEATURES' for model 'ranker'. Expected [-1,3], got {shown}"
    )
    assert "-1 is any size" in message


def test_inputs_disagree_on_batch_size() -> None:
    message = _message(BATCHING, _inputs(batch=2, ids_batch=3))
    assert "disagree on the batch size" in message and "[2, 3]" in message


@pytest.mark.parametrize("batch", [0, 5])
def test_batch_size_out_of_range(batch: int) -> None:
    message = _message(BATCHING, _inputs(batch))
    bound = "<= 4" if batch > 4 else ">= 1"
    assert message.startswith(f"inference request batch-size must be {bound} for 'ranker'")
    assert f"is {batch}" in message


def test_non_batching_model_has_no_batch_limit() -> None:
    x = np.empty((2, 100), dtype=np.object_)
    x[:] = b"a"
    validate_inputs(FIXED, {"X": x})  # 100 > any batch limit: dim 0 is not a batch here
    message = _message(FIXED, {"X": np.empty((3, 1), dtype=np.object_)})
    assert "Expected [2,-1], got [3,1]" in message


def test_requested_outputs() -> None:
    validate_requested_outputs(BATCHING, ())
    validate_requested_outputs(BATCHING, ("RANK",))
    validate_requested_outputs(BATCHING, ("RANK", "SCORE"))


def test_unknown_requested_output() -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_requested_outputs(BATCHING, ("SCORE", "LOGITS"))
    assert "no output named 'LOGITS'" in info.value.message
    assert "'SCORE', 'RANK'" in info.value.message


def test_duplicate_requested_output() -> None:
    with pytest.raises(InvalidArgument, match="requested more than once"):
        validate_requested_outputs(BATCHING, ("SCORE", "SCORE"))


@pytest.mark.parametrize("dtype", ["<U3", ">f4", "complex64"])
def test_numpy_dtype_without_kserve_datatype_is_invalid_argument(dtype: str) -> None:
    inputs = {**_inputs(), "FEATURES": np.zeros((2, 3), dtype=dtype)}
    assert "FEATURES" in _message(BATCHING, inputs)
