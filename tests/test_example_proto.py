"""mbt.data.example_proto finds a bytes feature's values where TF's own parsers find them,
including the protobuf merge cases (concatenated messages, repeated keys and lists)."""

import numpy as np
import pytest
import tensorflow as tf

from mbt.data import example_proto


def _example(**features) -> tf.train.Example:
    def feature(value):
        if isinstance(value, list) and all(isinstance(v, bytes) for v in value):
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=value))
        if isinstance(value, list) and all(isinstance(v, float) for v in value):
            return tf.train.Feature(float_list=tf.train.FloatList(value=value))
        return tf.train.Feature(int64_list=tf.train.Int64List(value=value))

    return tf.train.Example(
        features=tf.train.Features(feature={k: feature(v) for k, v in features.items()})
    )


def _spanned(serialized: bytes, key: str) -> list[bytes]:
    starts, lengths = example_proto.bytes_spans(serialized, key)
    assert starts.dtype == lengths.dtype == np.int64
    return [serialized[s : s + n] for s, n in zip(starts, lengths)]


def _tf_values(serialized: bytes, key: str) -> list[bytes] | None:
    """The values of bytes feature `key` by tf.io.parse_single_example; None where it
    refuses the bytes."""
    try:
        parsed = tf.io.parse_single_example(serialized, {key: tf.io.VarLenFeature(tf.string)})
    except (tf.errors.InvalidArgumentError, UnicodeDecodeError):  # (TF's message quotes the
        return None  # bytes, and fails to decode when they are not UTF-8)
    return list(parsed[key].values.numpy())


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field, encoded by hand."""

    def varint(value: int) -> bytes:
        out = bytearray()
        while True:
            out.append(value & 0x7F | (0x80 if value > 0x7F else 0))
            value >>= 7
            if not value:
                return bytes(out)

    return varint(number << 3 | 2) + varint(len(payload)) + payload


def test_the_spans_hold_the_values_tf_parses():
    frames = [bytes([i]) * (i * 300) for i in range(40)]  # lengths up to multi-byte varints
    serialized = _example(
        audio=[0.5] * 1000, label=[3, 7], id=[b"clip"], rgb=frames, empty=[]
    ).SerializeToString()
    assert _spanned(serialized, "rgb") == _tf_values(serialized, "rgb") == frames
    assert _spanned(serialized, "id") == [b"clip"]
    for no_values in ("absent", "empty"):
        assert _spanned(serialized, no_values) == _tf_values(serialized, no_values) == []
    assert _spanned(b"", "rgb") == []


_A, _BC = _field(1, _field(1, b"a")), _field(1, _field(1, b"b") + _field(1, b"c"))
_INT64 = _example(x=[1]).features.feature["x"].SerializeToString()


def _one_entry(*parts: bytes) -> bytes:
    return _field(1, _field(1, b"".join(parts)))


@pytest.mark.parametrize(
    "serialized",
    [
        # concatenated Examples merge; a key's later map entry replaces the earlier one
        _example(rgb=[b"a", b"b"]).SerializeToString() + _example(rgb=[b"c"]).SerializeToString(),
        _field(
            1,
            _field(1, _field(1, b"rgb") + _field(2, _A))
            + _field(1, _field(1, b"rgb") + _field(2, _BC)),
        ),
        _one_entry(_field(2, _A), _field(1, b"rgb")),  # the value before the key
        _one_entry(_field(1, b"rgb"), _field(2, b"")),  # an empty Feature
        _field(5, b"zz") + _one_entry(_field(1, b"rgb"), _field(2, _A)),  # an unknown field
        _one_entry(_field(1, b"other"), _field(2, _A + _BC)),  # another key's odd value
        # TF reads a Feature's first list only (protobuf would merge them)
        _one_entry(_field(1, b"rgb"), _field(2, _A + _BC)),
        _one_entry(_field(1, b"rgb"), _field(2, _A + _INT64)),
        # TF refuses these
        _one_entry(_field(1, b"rgb"), _field(2, _A), _field(2, _BC)),
        _one_entry(_field(1, b"rgb"), _field(2, _INT64 + _A)),
        _one_entry(_field(1, b"rgb"), _field(2, _field(1, _field(1, b"a") + _field(2, b"q")))),
    ],
)
def test_odd_encodings_read_as_tf_reads_them(serialized):
    expected = _tf_values(serialized, "rgb")
    if expected is None:
        with pytest.raises(example_proto.MalformedExample):
            example_proto.bytes_spans(serialized, "rgb")
    else:
        assert _spanned(serialized, "rgb") == expected


@pytest.mark.parametrize(
    "broken",
    [
        b"\x0a\x05abc",  # a field longer than the message
        b"\x0a\xff",  # a varint cut off
        b"\x0b",  # wire type 3 (groups): not in an Example
    ],
)
def test_bytes_that_are_not_an_example_are_refused(broken):
    assert _tf_values(broken, "rgb") is None
    with pytest.raises(example_proto.MalformedExample):
        example_proto.bytes_spans(broken, "rgb")


@pytest.mark.parametrize("num_frames", [7, 0])  # 0: an audio-only video
def test_a_view_cut_from_the_record_equals_one_cut_from_parsed_frames(num_frames):
    from mbt.data import clips

    rng = np.random.default_rng(0)
    frames = [
        tf.io.encode_jpeg(rng.integers(0, 255, (20, 28, 3), dtype=np.uint8)).numpy()
        for _ in range(num_frames)
    ]
    serialized = _example(rgb=frames, audio=[0.0] * 100).SerializeToString()
    starts, lengths = example_proto.bytes_spans(serialized, "rgb")
    settings = clips.ClipSettings(
        modalities=("rgb",), fps=10.0, num_frames=4, stride=2, crop_size=8, min_resize=12
    )
    seed = tf.constant([3, 4], tf.int64)
    in_record = clips.FrameSpans(tf.constant(serialized), tf.constant(starts), tf.constant(lengths))
    parsed = tf.constant(frames, tf.string, shape=[num_frames])
    views = [
        clips.make_view({"rgb": rgb}, settings, time_fraction=tf.constant(0.4), crop_position=None,
                        seed=seed)["rgb"].numpy()
        for rgb in (in_record, parsed)
    ]  # fmt: skip
    np.testing.assert_array_equal(views[0], views[1])
    assert views[0].shape == (4, 8, 8, 3)
    assert (views[0] == 0).all() == (num_frames == 0)


def test_the_grain_loader_names_a_record_it_cannot_read():
    from mbt.data import grain_input

    good = _example(rgb=[b"a"]).SerializeToString()
    with pytest.raises(example_proto.MalformedExample, match=r"split 'train', example 7 \(2 "):
        grain_input._frame_spans([good, b"\x0a\xff"], "rgb", [3, 7], "train")
    count, starts, lengths = grain_input._frame_spans([good, good[:0]], "rgb", [3, 7], "train")
    assert count.tolist() == [1, 0] and starts.shape == lengths.shape == (2, 1)
