"""Reader (and a small writer) for Scenic/DMVR audio-visual SequenceExample TFRecords.

The official MBT code trains from `tf.train.SequenceExample` records laid out as:

| where    | key                                          | content                              |
|----------|----------------------------------------------|--------------------------------------|
| context  | `clip/label/index`                           | int64 list of class indices          |
| context  | `clip/label/text`                            | bytes list (optional)                |
| context  | `video/filename`                             | bytes (optional)                     |
| context  | `clip/start/timestamp`, `clip/end/timestamp` | int64 microseconds (optional)        |
| sequence | `image/encoded`                              | one JPEG per frame                   |
| sequence | `WAVEFORM/feature/floats`                    | the whole waveform as one float list |
| sequence | `melspec/feature/floats`                     | one 100x128 float block per second   |

`read_scenic_tfrecords` turns such files into the example dict stored by the TFDS
builders (see docs/design.md), so the rest of the input pipeline does not care where
the examples came from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from collections.abc import Mapping
from typing import SupportsFloat
from typing import cast

import numpy as np
import tensorflow as tf

from mbt.data.tf_import import as_graph

IMAGE_KEY = "image/encoded"
WAVEFORM_KEY = "WAVEFORM/feature/floats"
MELSPEC_KEY = "melspec/feature/floats"
LABEL_INDEX_KEY = "clip/label/index"
LABEL_TEXT_KEY = "clip/label/text"
FILENAME_KEY = "video/filename"
START_KEY = "clip/start/timestamp"
END_KEY = "clip/end/timestamp"

MEL_BINS = 128
MEL_FRAMES_PER_SECOND = 100
AUDIO_SAMPLE_RATE = 16000
_MICROSECONDS = 1e6


@dataclasses.dataclass(frozen=True)
class RecordLayout:
    """Which optional parts the records of a file set carry."""

    has_rgb: bool
    has_waveform: bool
    has_melspec: bool
    has_filename: bool
    has_timestamps: bool


def inspect_layout(pattern: str) -> RecordLayout:
    """Reads the first record matching `pattern` and reports which keys it has.

    Raises:
      FileNotFoundError: no file matches `pattern`.
      ValueError: the first file is empty, its first record is not a SequenceExample,
        or it has neither frames nor audio.
    """
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise FileNotFoundError(f"No TFRecord file matches {pattern!r}.")
    first = next(iter(tf.data.TFRecordDataset(files[0]).take(1)), None)
    if first is None:
        raise ValueError(f"TFRecord file {files[0]} holds no records.")
    try:
        record = tf.train.SequenceExample.FromString(first.numpy())
    except Exception as e:  # protobuf raises DecodeError, a private type
        raise ValueError(
            f"First record of {files[0]} is not a tf.train.SequenceExample: {e}"
        ) from e
    sequence = record.feature_lists.feature_list
    context = record.context.feature
    layout = RecordLayout(
        has_rgb=IMAGE_KEY in sequence,
        has_waveform=WAVEFORM_KEY in sequence,
        has_melspec=MELSPEC_KEY in sequence,
        has_filename=FILENAME_KEY in context,
        has_timestamps=START_KEY in context and END_KEY in context,
    )
    if not (layout.has_rgb or layout.has_waveform or layout.has_melspec):
        raise ValueError(
            f"{files[0]}: first record has none of the sequence features "
            f"{IMAGE_KEY!r}, {WAVEFORM_KEY!r}, {MELSPEC_KEY!r}; found "
            f"{sorted(sequence)}."
        )
    if LABEL_INDEX_KEY not in context:
        raise ValueError(
            f"{files[0]}: first record has no context feature {LABEL_INDEX_KEY!r}; "
            f"found {sorted(context)}."
        )
    return layout


def _parse_spec(layout: RecordLayout):
    context = {LABEL_INDEX_KEY: tf.io.VarLenFeature(tf.int64)}
    if layout.has_filename:
        context[FILENAME_KEY] = tf.io.FixedLenFeature([], tf.string, default_value="")
    if layout.has_timestamps:
        context[START_KEY] = tf.io.FixedLenFeature([], tf.int64, default_value=0)
        context[END_KEY] = tf.io.FixedLenFeature([], tf.int64, default_value=0)
    sequence = {}
    if layout.has_rgb:
        sequence[IMAGE_KEY] = tf.io.FixedLenSequenceFeature([], tf.string, allow_missing=True)
    if layout.has_waveform:
        sequence[WAVEFORM_KEY] = tf.io.RaggedFeature(tf.float32)
    if layout.has_melspec:
        sequence[MELSPEC_KEY] = tf.io.RaggedFeature(tf.float32)
    return context, sequence


def _decode_frames(encoded: tf.Tensor) -> tf.Tensor:
    """[T] JPEG strings -> uint8 [T, H, W, 3] (all frames must share one size)."""
    return tf.map_fn(
        lambda jpeg: tf.io.decode_jpeg(jpeg, channels=3),
        encoded,
        fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8),
    )


def parse_record(
    serialized: tf.Tensor, layout: RecordLayout, fps: float = 25.0, *, decode_frames: bool = True
) -> dict:
    """One serialized SequenceExample → the example dict of `read_scenic_tfrecords`.

    With `decode_frames=False`, `rgb` stays the record's JPEG strings `[T]` (as the TFDS
    builders store them), so nothing is decoded until the frames are used.
    """
    context_spec, sequence_spec = _parse_spec(layout)
    context, sequence = tf.io.parse_single_sequence_example(
        serialized, context_features=context_spec, sequence_features=sequence_spec
    )
    example = {"label": tf.sparse.to_dense(context[LABEL_INDEX_KEY])}
    duration_s = None
    if layout.has_rgb:
        frames = sequence[IMAGE_KEY]
        example["rgb"] = _decode_frames(frames) if decode_frames else frames
        duration_s = tf.cast(tf.shape(example["rgb"])[0], tf.float32) / fps
    if layout.has_melspec:
        # One [100 * 128] float block per second -> [seconds * 100, 128].
        example["spectrogram"] = tf.reshape(sequence[MELSPEC_KEY].flat_values, [-1, MEL_BINS])
        duration_s = (
            tf.cast(tf.shape(example["spectrogram"])[0], tf.float32) / MEL_FRAMES_PER_SECOND
        )
    if layout.has_waveform:
        example["audio"] = sequence[WAVEFORM_KEY].flat_values
        duration_s = tf.cast(tf.size(example["audio"]), tf.float32) / AUDIO_SAMPLE_RATE
        example["has_audio"] = tf.size(example["audio"]) > 0
    else:
        example["has_audio"] = tf.constant(layout.has_melspec)
    if layout.has_timestamps:
        example["segment_start"] = tf.cast(context[START_KEY], tf.float32) / _MICROSECONDS
        example["segment_end"] = tf.cast(context[END_KEY], tf.float32) / _MICROSECONDS
    else:
        example["segment_start"] = tf.constant(0.0)
        example["segment_end"] = duration_s
    filename = context[FILENAME_KEY] if layout.has_filename else tf.constant("")
    example["id"] = filename
    example["video_path"] = filename
    return example


def read_scenic_tfrecords(
    pattern: str,
    *,
    fps: float = 25.0,
    num_parallel_reads: int | None = None,
    layout: RecordLayout | None = None,
    decode_frames: bool = True,
) -> tf.data.Dataset:
    """Dataset of builder-style example dicts from Scenic/DMVR SequenceExample files.

    Args:
      pattern: glob pattern of TFRecord files, e.g. `/data/audioset/train-*-of-*`;
        files are read in sorted order.
      fps: frame rate of the stored frames; only used to fill `segment_end` (seconds)
        when the records carry no timestamps and no audio.
      num_parallel_reads: files read in parallel (None reads them one after another,
        keeping the order deterministic).
      layout: which optional keys the records carry; by default the first record is
        inspected and every record is assumed to look the same.
      decode_frames: decode the JPEG frames (False: `rgb` holds the JPEG strings `[T]`).

    Returns:
      A `tf.data.Dataset` of dicts with
        `id`, `video_path`: tf.string (the record's `video/filename`, '' if absent);
        `segment_start`, `segment_end`: float32 seconds (from the µs timestamps; else 0
          and the stored duration);
        `rgb`: uint8 [T, H, W, 3] when `image/encoded` is present (tf.string [T] JPEGs
          with `decode_frames=False`);
        `audio`: float32 [samples] 16 kHz waveform when `WAVEFORM/feature/floats` is present;
        `spectrogram`: float32 [seconds * 100, 128] precomputed log-mel when
          `melspec/feature/floats` is present;
        `has_audio`: bool;
        `label`: int64 [num_positive] class indices.
    """
    layout = layout or inspect_layout(pattern)
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise FileNotFoundError(f"No TFRecord file matches {pattern!r}.")
    records = tf.data.TFRecordDataset(files, num_parallel_reads=num_parallel_reads)
    return records.map(
        as_graph(lambda s: parse_record(s, layout, fps, decode_frames=decode_frames)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )


def _bytes_feature(values: Iterable[bytes]) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _int64_feature(values: Iterable[int]) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def _float_feature(values: np.ndarray) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=np.asarray(values, np.float32)))


def make_sequence_example(
    example: Mapping[str, object], *, jpeg_quality: int = 95
) -> tf.train.SequenceExample:
    """Builds one Scenic-style SequenceExample from a builder-style example dict.

    Args:
      example: dict with `label` (int class indices) and at least one of
        `rgb` (uint8 [T, H, W, 3]), `audio` (float32 [samples] at 16 kHz) and
        `spectrogram` (float32 [seconds * 100, 128]); optional `label_text`
        (list of str), `video_path` (str), `segment_start` / `segment_end` (seconds).
      jpeg_quality: JPEG quality of the stored frames.

    Raises:
      ValueError: no modality is given, or an array has the wrong rank/shape.
    """
    if not any(k in example for k in ("rgb", "audio", "spectrogram")):
        raise ValueError(
            f"Example needs at least one of rgb, audio, spectrogram; got keys {sorted(example)}."
        )
    record = tf.train.SequenceExample()
    context = record.context.feature
    context[LABEL_INDEX_KEY].CopyFrom(_int64_feature(np.atleast_1d(np.asarray(example["label"]))))
    if "label_text" in example:
        context[LABEL_TEXT_KEY].CopyFrom(
            _bytes_feature(t.encode("utf-8") for t in cast(Iterable[str], example["label_text"]))
        )
    if "video_path" in example:
        context[FILENAME_KEY].CopyFrom(_bytes_feature([str(example["video_path"]).encode("utf-8")]))
    if "segment_start" in example and "segment_end" in example:
        context[START_KEY].CopyFrom(
            _int64_feature(
                [round(float(cast(SupportsFloat, example["segment_start"])) * _MICROSECONDS)]
            )
        )
        context[END_KEY].CopyFrom(
            _int64_feature(
                [round(float(cast(SupportsFloat, example["segment_end"])) * _MICROSECONDS)]
            )
        )
    sequence = record.feature_lists.feature_list
    if "rgb" in example:
        frames = np.asarray(example["rgb"])
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"rgb must be uint8 [T, H, W, 3]; got {frames.dtype} {frames.shape}.")
        for frame in frames:
            jpeg = tf.io.encode_jpeg(frame, quality=jpeg_quality).numpy()
            sequence[IMAGE_KEY].feature.append(_bytes_feature([jpeg]))
    if "audio" in example:
        audio = np.asarray(example["audio"], np.float32)
        if audio.ndim != 1:
            raise ValueError(f"audio must be 1-D [samples]; got shape {audio.shape}.")
        sequence[WAVEFORM_KEY].feature.append(_float_feature(audio))
    if "spectrogram" in example:
        spectrogram = np.asarray(example["spectrogram"], np.float32)
        if (
            spectrogram.ndim != 2
            or spectrogram.shape[1] != MEL_BINS
            or spectrogram.shape[0] % MEL_FRAMES_PER_SECOND
        ):
            raise ValueError(
                f"spectrogram must be [seconds * {MEL_FRAMES_PER_SECOND}, {MEL_BINS}]; "
                f"got {spectrogram.shape}."
            )
        for second in spectrogram.reshape(-1, MEL_FRAMES_PER_SECOND * MEL_BINS):
            sequence[MELSPEC_KEY].feature.append(_float_feature(second))
    return record


def write_scenic_tfrecord(path: str, examples: Iterable[Mapping[str, object]]) -> int:
    """Writes builder-style example dicts as Scenic SequenceExamples to one file.

    Returns the number of records written. See `make_sequence_example` for the keys.
    """
    count = 0
    with tf.io.TFRecordWriter(str(path)) as writer:
        for example in examples:
            writer.write(make_sequence_example(example).SerializeToString())
            count += 1
    return count
