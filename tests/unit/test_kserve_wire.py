"""scheduler.kserve_wire: cutting raw contents out of encoded messages and back."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.api.inference import grpc_service_pb2 as pb
from scheduler import kserve_wire as wire


def _request(tensors: list[bytes], **fields: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m", **fields)
    for index, data in enumerate(tensors):
        request.inputs.add(name=f"in{index}", datatype="UINT8", shape=[len(data)])
    request.raw_input_contents.extend(tensors)
    return request


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.binary(max_size=300), max_size=4),
    st.text(max_size=20),
    st.dictionaries(st.text(max_size=8), st.integers(-(2**63), 2**63 - 1), max_size=3),
)
def test_split_then_join_is_the_message(tensors: list[bytes], id_: str, params: dict) -> None:
    request = _request(tensors, id=id_)
    for key, value in params.items():
        request.parameters[key].int64_param = value
    data = request.SerializeToString()
    header, raw = wire.split_raw(data, wire.RAW_INPUT_FIELD)
    assert [bytes(r) for r in raw] == tensors
    parsed = pb.ModelInferRequest.FromString(header)
    assert not parsed.raw_input_contents and parsed.id == id_
    assert wire.join_raw(header, wire.RAW_INPUT_FIELD, raw) == data


def test_raw_contents_are_views_of_the_message() -> None:
    data = _request([b"abcdefgh" * 100]).SerializeToString()
    _, (view,) = wire.split_raw(data, wire.RAW_INPUT_FIELD)
    assert view.obj is data  # no copy


def test_fields_after_the_tensors_are_kept() -> None:
    # Encoders write fields in number order, but the format lets any order in.
    tail = pb.ModelInferRequest(id="late").SerializeToString()
    data = _request([b"xyz"]).SerializeToString() + tail
    header, raw = wire.split_raw(data, wire.RAW_INPUT_FIELD)
    assert [bytes(r) for r in raw] == [b"xyz"]
    parsed = pb.ModelInferRequest.FromString(header)
    assert parsed.id == "late" and parsed.model_name == "m"


def test_an_appended_parameter_overrides_the_callers() -> None:
    request = _request([b"1"])
    request.parameters["timeout"].int64_param = 5_000_000
    request.parameters["priority"].uint64_param = 2
    data = request.SerializeToString() + wire.int_parameter("timeout", 1234)
    parsed = pb.ModelInferRequest.FromString(data)
    assert parsed.parameters["timeout"].int64_param == 1234
    assert parsed.parameters["priority"].uint64_param == 2
    negative = pb.ModelInferRequest.FromString(wire.int_parameter("k", -5))
    assert negative.parameters["k"].int64_param == -5


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["timeout", "k", "x" * 200]), st.integers(-(2**63), 2**63 - 1))
def test_an_int_parameter_is_encoded_as_protobuf_encodes_it(key: str, value: int) -> None:
    # Byte for byte (not just parsed back): the cached entry heads and the
    # varint's fast path must agree with protobuf for every value length.
    expected = pb.ModelInferRequest()
    expected.parameters[key].int64_param = value
    assert wire.int_parameter(key, value) == expected.SerializeToString()


@pytest.mark.parametrize("bits", range(64))
def test_an_int_parameter_at_each_varint_length(bits: int) -> None:
    # Both sides of each boundary where the varint grows by a byte.
    for value in ((1 << bits) - 1, min(1 << bits, 2**63 - 1), -(1 << bits)):
        expected = pb.ModelInferRequest()
        expected.parameters["timeout"].int64_param = value
        assert wire.int_parameter("timeout", value) == expected.SerializeToString()


def test_a_response_wrapped_as_a_stream_response() -> None:
    response = pb.ModelInferResponse(model_name="m", id="9").SerializeToString()
    stream = pb.ModelStreamInferResponse.FromString(wire.wrap(wire.STREAM_RESPONSE_FIELD, response))
    assert stream.infer_response.id == "9"


@pytest.mark.parametrize(
    "data",
    [
        b"\x0a\x05ab",  # a string that runs past the end
        b"\x3a\xff\xff\xff\xff\x0f",  # a tensor longer than the message
        b"\x08",  # a varint cut short
        b"\x0b",  # wire type 3 (groups), which proto3 never writes
        b"\x00\x00",  # field number 0
        b"\x09\x01\x02",  # a fixed64 cut short
    ],
)
def test_malformed_messages_are_refused(data: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.split_raw(data, wire.RAW_INPUT_FIELD)


def test_as_buffer_is_a_view_of_contiguous_arrays() -> None:
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    buffer = wire.as_buffer(array[1:])  # rows: still contiguous
    assert np.shares_memory(np.frombuffer(buffer, np.float32), array)
    assert bytes(wire.as_buffer(array.T)) == array.T.tobytes()  # not contiguous: one copy
