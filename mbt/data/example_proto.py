"""Where one feature's byte strings lie inside a serialized `tf.train.Example`, found without
parsing the rest.

A video's encoded frames are most of a stored example (~9 MB for 10 s at 25 fps) but a view
decodes only a few of them. Given the byte spans of the frames, a reader can cut just the
frames it samples out of the serialized record (`tf.strings.substr`) instead of copying every
frame into a tensor first.

Wire format read here (protobuf encoding of tensorflow/core/example/{example,feature}.proto):

    Example   { Features features = 1; }
    Features  { map<string, Feature> feature = 1; }   # entries: { key = 1; value = 2; }
    Feature   { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2;
                             Int64List int64_list = 3; } }
    BytesList { repeated bytes value = 1; }

read the way TF's example parser reads it, which is not quite protobuf's merge rules: the
last map entry of a key wins (concatenated Examples merge), but a Feature's first field is its
value (protobuf would merge repeated lists), and a map entry with two values is refused.
"""

from __future__ import annotations

import numpy as np

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class MalformedExample(ValueError):
    """The bytes are not a valid serialized `tf.train.Example`."""


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """(value, position after it) of the varint at `pos`."""
    value = shift = 0
    while pos < end:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            break
    raise MalformedExample(f"bad varint at byte {pos}")


def _fields(data: bytes, start: int, end: int):
    """Yields (field number, wire type, value) of the message in data[start:end]: the value
    is a varint's value, or for length-delimited fields the (start, end) of the payload."""
    pos = start
    while pos < end:
        tag, pos = _varint(data, pos, end)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == _VARINT:
            value, pos = _varint(data, pos, end)
            yield number, wire_type, value
        elif wire_type == _LEN:
            size, pos = _varint(data, pos, end)
            if pos + size > end:
                raise MalformedExample(f"field {number} runs past its message at byte {pos}")
            yield number, wire_type, (pos, pos + size)
            pos += size
        elif wire_type in (_I64, _I32):
            pos += 8 if wire_type == _I64 else 4
            if pos > end:
                raise MalformedExample(f"field {number} runs past its message")
            yield number, wire_type, None
        else:
            raise MalformedExample(f"unsupported wire type {wire_type} (field {number})")


def bytes_spans(serialized: bytes, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(starts, lengths), int64 `[N]`: where the N values of bytes feature `key` lie in
    `serialized` (a `tf.train.Example`), in order; empty when the example has no such feature.

    `serialized[starts[i] : starts[i] + lengths[i]]` is value i, the same bytes
    `tf.io.parse_single_example` gives for `key`. Raises `MalformedExample` where TF's parser
    refuses the feature, or the bytes are not a serialized message.
    """
    wanted = key.encode()
    feature: list[tuple[int, int]] | None = None  # the value fields of the last `key` entry
    for number, wire_type, span in _fields(serialized, 0, len(serialized)):
        if number != 1 or wire_type != _LEN:
            continue  # repeated `features` fields merge: their entries are all read
        for entry_number, entry_type, entry in _fields(serialized, *span):
            if entry_number != 1 or entry_type != _LEN:
                continue
            entry_key, values = None, []
            for part_number, part_type, part in _fields(serialized, *entry):
                if part_type == _LEN and part_number == 1:
                    entry_key = serialized[part[0] : part[1]]
                elif part_type == _LEN and part_number == 2:
                    values.append(part)
            if entry_key == wanted:
                feature = values  # a later entry of the same key replaces it (as TF does)
    empty = np.zeros(0, np.int64)
    if not feature:
        return empty, empty
    if len(feature) > 1:  # protobuf would merge them; TF's parser refuses
        raise MalformedExample(f"feature {key!r} has {len(feature)} values in one map entry")
    # TF's parser reads a Feature's first field only (protobuf would merge repeats).
    kind = next(_fields(serialized, *feature[0]), None)
    if kind is None:
        return empty, empty
    number, wire_type, bytes_list = kind
    if number != 1 or wire_type != _LEN:
        kinds = {2: "a float list", 3: "an int64 list"}
        raise MalformedExample(f"feature {key!r} holds {kinds.get(number, 'no list')}, not bytes")
    starts: list[int] = []
    lengths: list[int] = []
    for number, wire_type, span in _fields(serialized, *bytes_list):
        if number != 1 or wire_type != _LEN:
            raise MalformedExample(f"feature {key!r}: unexpected field {number} in its bytes list")
        starts.append(span[0])
        lengths.append(span[1] - span[0])
    return np.array(starts, np.int64), np.array(lengths, np.int64)
