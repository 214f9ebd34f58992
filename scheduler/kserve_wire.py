"""The KServe v2 protobuf wire format, where it must be read or written without copies.

A ``ModelInferRequest`` keeps its tensors in ``raw_input_contents`` (field 7)
and a ``ModelInferResponse`` in ``raw_output_contents`` (field 6). Parsing a
whole message with protobuf copies every tensor into the parser's arena, and
each read of a ``bytes`` field copies it again. The helpers here cut those
fields out of the encoded message instead: ``split_raw`` walks the top-level
fields (a handful per message, whatever the tensor sizes) and returns the rest
of the message, small, for protobuf to parse, plus a ``memoryview`` of each
tensor into the received buffer. ``join_raw`` does the reverse with a single
copy of the tensor bytes, the one ``bytes.join`` makes.

Protobuf lets fields repeat and merges them in order (for a map, the last
entry of a key wins), which is what ``int_parameter`` relies on to override a
request parameter by appending to an encoded message.

BYTES tensors use KServe's framing: each element is a 4-byte little-endian
length followed by that many bytes (``decode_bytes``/``encode_bytes``).

Only the protocol's field numbers are known here, never protobuf classes: the
gateway parses with its own generated messages, the Triton backend with
tritonclient's, and both meet on these bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from scheduler.errors import InvalidArgument
from scheduler.spec import Tensor

#: ``ModelInferRequest.id`` / ``ModelInferResponse.id``
ID_FIELD = 3
#: ``ModelInferRequest.raw_input_contents``
RAW_INPUT_FIELD = 7
#: ``ModelInferResponse.raw_output_contents``
RAW_OUTPUT_FIELD = 6
#: ``ModelInferRequest.parameters`` / ``ModelInferResponse.parameters``
PARAMETERS_FIELD = 4
#: ``ModelStreamInferResponse.error_message`` and ``.infer_response``
STREAM_ERROR_FIELD = 1
STREAM_RESPONSE_FIELD = 2

_LEN = 2  # wire type of length-delimited fields
_LENGTH = struct.Struct("<I")


class WireError(ValueError):
    """The bytes are not a protobuf message."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it."""
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise WireError("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def encode_varint(value: int) -> bytes:
    """``value`` (0 to 2**64 - 1) as a protobuf varint: 7 bits a byte, low first,
    the top bit set on every byte but the last."""
    if value < 0x80:
        return bytes((value,))
    if value < 1 << 35:  # up to 5 bytes (a timeout in µs under 9.5 h): no loop
        size = (value.bit_length() + 6) // 7
        spread = (
            value & 0x7F
            | (value & 0x3F80) << 1
            | (value & 0x1FC000) << 2
            | (value & 0xFE00000) << 3
            | (value & 0x7F0000000) << 4
        )
        return (spread | _CONTINUATIONS[size]).to_bytes(size, "little")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


#: By varint size (to 5 bytes): the top bit of every byte but the last, little-endian.
_CONTINUATIONS = tuple(sum(0x80 << 8 * i for i in range(size - 1)) for size in range(6))


def field_prefix(field: int, length: int) -> bytes:
    """The tag and length that precede a length-delimited field's payload."""
    return encode_varint(field << 3 | _LEN) + encode_varint(length)


def split_raw(data: bytes, field: int) -> tuple[bytes, list[memoryview]]:
    """The message without its ``field`` entries, and a view of each entry's payload.

    The views alias ``data`` (no copy). The rest is returned as ``data``
    itself when there is no such field, as one slice when the field's entries
    come last (as every protobuf encoder writes them), else joined. Raises
    WireError for bytes that are not a well-formed message.
    """
    rest, _, raw = _cut(data, field, 0)
    return rest, raw


def split_request(data: bytes) -> tuple[bytes, bytes, list[memoryview]]:
    """A ``ModelInferRequest`` in three: everything but its ``id`` and its raw
    contents (what requests of one caller mostly share), the ``id`` (its
    UTF-8 bytes; the last one wins, as in protobuf), and views of the raw
    contents. Raises WireError for bytes that are not a well-formed message."""
    rest, identifier, raw = _cut(data, RAW_INPUT_FIELD, ID_FIELD)
    return rest, identifier, raw


def _cut(data: bytes, field: int, id_field: int) -> tuple[bytes, bytes, list[memoryview]]:
    """Walk the top-level fields once: views of ``field``, the last ``id_field``,
    and the spans of everything else joined (a slice when they are one span)."""
    view = memoryview(data)
    raw: list[memoryview] = []
    identifier = b""
    kept: list[tuple[int, int]] = []  # spans of the other fields
    size = len(data)
    pos = kept_from = 0
    while pos < size:
        start = pos
        tag = data[pos]
        pos += 1
        if tag >= 0x80:
            tag, pos = _varint(data, start)
        number = tag >> 3
        if number == 0:
            raise WireError("field number 0 is not valid")
        wire_type = tag & 7
        if wire_type == _LEN:
            length = data[pos] if pos < size else 0x80
            if length < 0x80:
                pos += 1
            else:
                length, pos = _varint(data, pos)
            end = pos + length
            if end > size:
                raise WireError(f"field {number} runs {end - size} bytes past the message")
            if number in (field, id_field):
                if number == field:
                    raw.append(view[pos:end])
                else:
                    identifier = data[pos:end]
                if start > kept_from:
                    kept.append((kept_from, start))
                kept_from = end
            pos = end
        elif wire_type == 0:
            _, pos = _varint(data, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        else:
            raise WireError(f"field {number} has wire type {wire_type}, which proto3 never uses")
        if pos > size:
            raise WireError("the last field is truncated")
    if kept_from == 0:
        return data, identifier, raw
    if kept_from < size:
        kept.append((kept_from, size))
    if len(kept) == 1 and kept[0][0] == 0:
        return data[: kept[0][1]], identifier, raw
    return b"".join(view[a:b] for a, b in kept), identifier, raw


def join_raw(header: bytes, field: int, contents: Sequence[Any]) -> bytes:
    """``header`` with one ``field`` entry per buffer appended: one copy of each buffer."""
    parts: list[Any] = [header]
    for buffer in contents:
        parts.append(field_prefix(field, memoryview(buffer).nbytes))
        parts.append(buffer)
    return b"".join(parts)


def wrap(field: int, payload: bytes) -> bytes:
    """``payload`` (an encoded message) as the length-delimited ``field`` of another."""
    return field_prefix(field, len(payload)) + payload


def int_parameter(key: str, value: int) -> bytes:
    """A ``parameters`` map entry ``key -> InferParameter{int64_param: value}``,
    encoded to be appended to a request (the last entry of a key wins)."""
    if value < 0:
        value += 1 << 64  # int64 two's complement, as protobuf encodes it
    parameter = encode_varint(value)
    # Everything before the value depends only on the key and the value's
    # length (at most 10 bytes), so it is encoded once for each pair.
    head = _ENTRY_HEADS.get((key, len(parameter)))
    if head is None:
        head = _ENTRY_HEADS[(key, len(parameter))] = _entry_head(key, len(parameter))
    return head + parameter


def _entry_head(key: str, value_bytes: int) -> bytes:
    """The bytes of ``int_parameter``'s entry before its ``value_bytes`` long varint."""
    name = key.encode()
    # field 2 of the entry: InferParameter, whose field 2 is int64_param (tag 0x10)
    parameter = bytes((0x10,)) + b"\0" * value_bytes  # its length is what counts here
    entry = field_prefix(1, len(name)) + name + wrap(2, parameter)
    return field_prefix(PARAMETERS_FIELD, len(entry)) + entry[: len(entry) - value_bytes]


#: ``int_parameter``'s entry heads, by key and the value's varint length; the
#: keys are the gateway's own (``timeout``), never a caller's, so it stays small.
_ENTRY_HEADS: dict[tuple[str, int], bytes] = {}


def set_parameter(slot: Any, value: bool | int | float | str) -> None:
    """Fill an ``InferParameter`` (of any generated class) with ``value``,
    typed as the caller sent it: bool, int64 (uint64 when only it can hold
    the value), double or string."""
    if isinstance(value, bool):
        slot.bool_param = value
    elif isinstance(value, int):
        if value >= 2**63:
            slot.uint64_param = value
        else:
            slot.int64_param = value
    elif isinstance(value, float):
        slot.double_param = value
    else:
        slot.string_param = str(value)


def as_buffer(array: Tensor) -> memoryview:
    """A C-contiguous array's bytes, without a copy (one copy if it is not contiguous)."""
    flat = np.ascontiguousarray(array).reshape(-1)
    return flat.view(np.uint8).data


def decode_bytes(buffer: Any, count: int, tensor: str) -> Tensor:
    """Split a KServe BYTES buffer into ``count`` elements, checking the framing.

    The element count is checked against the buffer before anything is
    allocated: every element needs at least its 4-byte length.
    """
    view = memoryview(buffer).cast("B")
    size = len(view)
    if count * 4 > size:
        raise InvalidArgument(
            f"BYTES input '{tensor}' is truncated: {count} elements need at least "
            f"{count * 4} bytes of length prefixes, but it has {size} bytes"
        )
    items = np.empty(count, dtype=np.object_)
    offset = 0
    for index in range(count):
        if offset + 4 > size:
            raise InvalidArgument(
                f"BYTES input '{tensor}' is truncated: element {index} of {count} has no "
                f"4-byte length prefix (offset {offset}, {size - offset} bytes left)"
            )
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > size:
            raise InvalidArgument(
                f"BYTES input '{tensor}' is truncated: element {index} declares {length} "
                f"bytes but only {size - offset} remain"
            )
        items[index] = view[offset : offset + length].tobytes()
        offset += length
    if offset != size:
        raise InvalidArgument(
            f"BYTES input '{tensor}' has {size - offset} bytes after its {count} elements; "
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
