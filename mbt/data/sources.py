"""Where the input pipeline's examples come from: TFDS builders, Scenic TFRecords, memory.

An `ExampleSource` describes a dataset (classes, label layout, what it stores) and reads any
contiguous index range of a split as a `tf.data.Dataset` of stored example dicts
(docs/design.md) in a fixed order, each with an extra int64 `video_index`: the example's
position in its split. Reading index ranges is what lets the pipeline shard by host at the
example level and resume training without decoding the skipped examples.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from mbt.data import registry
from mbt.data.tf_import import as_graph

_LOG = logging.getLogger(__name__)

# Stored keys the pipeline reads; the rest is dropped straight after reading.
_KEPT_KEYS = ("rgb", "audio", "spectrogram", "label", "verb_label", "noun_label", "video_index")


@dataclasses.dataclass(frozen=True)
class ExampleSource:
    """A dataset the pipeline can read.

    Attributes:
      name: dataset name for messages.
      class_names: all class names; for verb/noun labels the verbs then the nouns.
      class_splits: sizes of the label groups (EPIC: (97, 300)) or None.
      multi_label: several classes may be positive (AudioSet).
      label_keys: stored label keys: ('label',) holding a class index or an index list, or
        ('verb_label', 'noun_label') concatenated as one-hot blocks of `class_splits`.
      modalities: modalities the stored examples can give ('rgb', 'spectrogram').
      fps: frame rate of the stored frames.
      split_sizes: examples per split.
      read: `read(split, start, stop)` → dataset of the examples [start, stop) of `split`.
      stored_spectrogram_bins: mel bins of a precomputed `spectrogram` the examples carry
        (at 100 frames per second), None when they carry none.
      full_frame_decode: JPEG frames are decoded whole and then cropped (the same pixels as
        decoding every frame up front) rather than with `tf.io.decode_and_crop_jpeg`, whose
        chroma upsampling can change the pixels at the crop's edge.
      records: for random-access storage (ArrayRecord), `records(split)` → the split's
        serialized examples (`tf.train.Example`) by index (index = `video_index`); None for
        sequential storage.
      deserialize: serialized example (tf.string scalar) → the stored example dict `read`
        gives, less `video_index` and less the frames; set with `records`.
      record_frames_key: the bytes feature of a record that holds the JPEG frames, which
        `deserialize` leaves out: the reader locates them in the record
        (`example_proto.bytes_spans`) and cuts out only those a view decodes
        (`clips.FrameSpans`); None when the records hold no frames.
    """

    name: str
    class_names: tuple[str, ...]
    class_splits: tuple[int, ...] | None
    multi_label: bool
    label_keys: tuple[str, ...]
    modalities: tuple[str, ...]
    fps: float
    split_sizes: Mapping[str, int]
    read: Callable[[str, int, int], tf.data.Dataset]
    stored_spectrogram_bins: int | None = None
    full_frame_decode: bool = False
    records: Callable[[str], Sequence[bytes]] | None = None
    deserialize: Callable[[tf.Tensor], dict] | None = None
    record_frames_key: str | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def label_vector(example: Mapping[str, tf.Tensor], source: ExampleSource) -> tf.Tensor:
    """float32 `[num_classes]`: multi-hot of the stored class index / index list, or for
    verb/noun labels `[one-hot verb ; one-hot noun]`. Negative indices (no label) give zeros."""
    if len(source.label_keys) == 1:
        indices = tf.reshape(tf.cast(example[source.label_keys[0]], tf.int32), [-1])
        hot = tf.one_hot(indices, source.num_classes, dtype=tf.float32)
        return tf.minimum(tf.reduce_sum(hot, axis=0), 1.0)
    assert source.class_splits is not None  # several label keys: one class split each
    blocks = [
        tf.one_hot(tf.cast(tf.reshape(example[key], []), tf.int32), size, dtype=tf.float32)
        for key, size in zip(source.label_keys, source.class_splits)
    ]
    return tf.concat(blocks, axis=0)


def keep_needed(example: dict, modalities: Sequence[str]) -> dict:
    """Drops stored keys the selected modalities do not need (before shuffling/batching)."""
    kept = {k: v for k, v in example.items() if k in _KEPT_KEYS}
    if "rgb" not in modalities:
        kept.pop("rgb", None)
    if "spectrogram" not in modalities:
        kept.pop("audio", None)
        kept.pop("spectrogram", None)
    return kept


# ---------------------------------------------------------------------------------------------
# TFDS builders (the `builder` of a registry spec)


FILE_FORMATS = ("tfrecord", "array_record")


def tfds_builder(
    name: str,
    builder_config: str | None,
    data_dir: str | None,
    imports: Sequence[str] = (),
    *,
    file_format: str | None = None,
):
    """The TFDS builder of dataset `name` (its registry spec's `builder`, imported lazily).

    `file_format` ('tfrecord' | 'array_record') is what a build writes; a prepared dataset is
    read in the format it was written in.
    """
    import tensorflow_datasets as tfds

    spec = registry.get(name, imports)
    if spec.builder is None:
        raise ValueError(f"config.dataset.name={name!r} has no TFDS builder (it is read directly)")
    cls = registry.load(spec.builder)
    kwargs: dict = {"config": builder_config} if builder_config else {}
    if file_format:
        if file_format not in FILE_FORMATS:
            raise ValueError(
                f"config.dataset.file_format={file_format!r}: allowed values are {FILE_FORMATS}"
            )
        kwargs["file_format"] = file_format
    try:
        return tfds.builder(cls.name, data_dir=data_dir or None, **kwargs)
    except ValueError as e:
        names = [c.name for c in getattr(cls, "BUILDER_CONFIGS", [])]
        raise ValueError(
            f"config.dataset.builder_config={builder_config!r} is not a config of "
            f"{cls.name}; allowed: {names} ({e})"
        ) from None


def _class_names(features) -> tuple[tuple[str, ...], tuple[int, ...] | None, bool, tuple[str, ...]]:
    """(class names, class splits, multi-label, label keys) from a builder's features."""
    import tensorflow_datasets as tfds

    if "verb_label" in features and "noun_label" in features:
        verbs, nouns = features["verb_label"].names, features["noun_label"].names
        return (
            tuple(verbs) + tuple(nouns),
            (len(verbs), len(nouns)),
            False,
            ("verb_label", "noun_label"),
        )
    label = features["label"]
    if isinstance(label, tfds.features.Sequence):
        return tuple(label.feature.names), None, True, ("label",)
    return tuple(label.names), None, False, ("label",)


def encoded_frames():
    """A TFDS decoder that leaves a video's frames as its `[T]` string tensor of encoded JPEGs.

    `tfds.decode.SkipDecoding` gives the same tensor, but through TFDS's per-frame
    `tf.map_fn` of the identity, which copies every encoded frame twice (~9 MB for 10 s at
    25 fps) and runs a T-step loop for each example.
    """
    import tensorflow_datasets as tfds

    class EncodedFrames(tfds.decode.SkipDecoding):
        def decode_batch_example(self, serialized_example):
            return serialized_example

    return EncodedFrames()


def tfds_source(
    name: str,
    builder_config: str | None,
    data_dir: str | None,
    fps: float | None = None,
    imports: Sequence[str] = (),
    *,
    autocache: bool = True,
) -> ExampleSource:
    """Source reading a prepared TFDS dataset built by the builder of registry spec `name`.

    JPEG frames are not decoded here (`encoded_frames()`): the pipeline decodes only the
    frames it samples. `video_index` is recovered from TFDS's per-example ids (file name and
    record number), so reading may interleave files and still report split positions.
    `autocache`: TFDS may keep a dataset under 250 MiB in memory after its first pass
    (`try_autocache`).
    """
    import tensorflow_datasets as tfds

    builder = tfds_builder(name, builder_config, data_dir, imports)
    if not builder.is_prepared():
        module = (registry.get(name).builder or "").partition(":")[0]
        raise FileNotFoundError(
            f"TFDS dataset {builder.name}/{builder.builder_config.name} is not built in "
            f"{builder.data_dir_root}: run mbt.data.pipeline.prepare_dataset (synthetic copy) or "
            f"`python -m mbt.data.builders --dataset={name} --manual_dir=...` / `tfds build "
            f"--imports={module} {builder.name} --manual_dir=...` (config.dataset.data_dir)"
        )
    class_names, class_splits, multi_label, label_keys = _class_names(builder.info.features)
    splits = builder.info.splits
    split_sizes = {s: splits[s].num_examples for s in splits.keys()}
    stored_fps = fps or getattr(builder.builder_config, "fps", None)
    if not stored_fps:
        raise ValueError(f"{builder.name}: builder config has no fps; set config.dataset.video_fps")
    frames_encoded = {"rgb": encoded_frames()}

    def read(split: str, start: int, stop: int) -> tf.data.Dataset:
        info = splits[split]
        offsets = np.concatenate([[0], np.cumsum(info.shard_lengths)[:-1]]).astype(np.int64)
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(list(info.filenames)), tf.constant(offsets)
            ),
            default_value=-1,
        )

        def add_index(example):
            # tfds_id = '<shard file name>__<record number in the shard>'
            tfds_id = example.pop("tfds_id")
            shard = tf.strings.regex_replace(tfds_id, r"__[0-9]+$", "")
            record = tf.strings.to_number(tf.strings.regex_replace(tfds_id, r"^.*__", ""), tf.int64)
            example["video_index"] = table.lookup(shard) + record
            return example

        ds = builder.as_dataset(
            split=f"{split}[{start}:{stop}]",
            shuffle_files=False,
            decoders=frames_encoded,
            read_config=tfds.ReadConfig(
                add_tfds_id=True, interleave_cycle_length=4, try_autocache=autocache
            ),
        )
        return ds.map(as_graph(add_index), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    records = deserialize = frames_key = None
    if str(getattr(builder.info.file_format, "value", "")) == "array_record":
        features = builder.info.features
        frames_key = "rgb" if "rgb" in features else None
        # Parsing skips the frames' bytes without copying them.
        without_frames = tfds.features.FeaturesDict(
            {key: feature for key, feature in features.items() if key != frames_key}
        )

        def records(split: str) -> Sequence[bytes]:
            return builder.as_data_source(
                split=split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES
            )

        def deserialize(serialized: tf.Tensor) -> dict:
            return dict(without_frames.deserialize_example(serialized))

    return ExampleSource(
        name=f"{builder.name}/{builder.builder_config.name}",
        class_names=class_names,
        class_splits=class_splits,
        multi_label=multi_label,
        label_keys=label_keys,
        modalities=("rgb", "spectrogram"),
        fps=float(stored_fps),
        split_sizes=split_sizes,
        read=read,
        records=records,
        deserialize=deserialize,
        record_frames_key=frames_key,
    )


# ---------------------------------------------------------------------------------------------
# Scenic / DMVR SequenceExample TFRecords (mbt.data.scenic_tfrecord)

# Records per TFRecord file, counted once per process.
_RECORD_COUNTS: dict[str, int] = {}


def _record_count(path: str) -> int:
    if path not in _RECORD_COUNTS:
        _RECORD_COUNTS[path] = int(
            tf.data.TFRecordDataset(path).reduce(np.int64(0), lambda count, _: count + 1).numpy()
        )
    return _RECORD_COUNTS[path]


def _split_pattern(patterns, split: str) -> str:
    if isinstance(patterns, str):
        return patterns.format(split=split)
    if split not in patterns:
        raise ValueError(
            f"config.dataset.tfrecord_pattern has no entry for split {split!r}; "
            f"it has {sorted(patterns)}"
        )
    return patterns[split]


def scenic_source(
    patterns,
    splits: Sequence[str],
    num_classes: int,
    class_names: Sequence[str],
    multi_label: bool,
    class_splits: Sequence[int] | None,
    fps: float,
) -> ExampleSource:
    """Source reading Scenic/DMVR SequenceExample TFRecords.

    Args:
      patterns: a glob pattern with a `{split}` placeholder, or a mapping split → pattern.
      splits: split names to offer (a mapping's keys by default).
      num_classes, class_names, multi_label, class_splits: the label space (from the config;
        the records hold only class indices). `class_names` may be empty: 'class_<i>'.
      fps: frame rate of the stored frames.
    """
    from mbt.data import scenic_tfrecord

    if num_classes <= 0:
        raise ValueError(
            f"config.dataset.num_classes must be > 0 for scenic_tfrecord, got {num_classes}"
        )
    names = tuple(class_names) or tuple(f"class_{i}" for i in range(num_classes))
    if len(names) != num_classes:
        raise ValueError(
            f"config.dataset.class_names has {len(names)} names but "
            f"config.dataset.num_classes={num_classes}"
        )
    layouts, split_files, split_sizes = {}, {}, {}
    for split in splits:
        pattern = _split_pattern(patterns, split)
        layouts[split] = scenic_tfrecord.inspect_layout(pattern)
        files = sorted(tf.io.gfile.glob(pattern))
        split_files[split] = [(path, _record_count(path)) for path in files]
        split_sizes[split] = sum(count for _, count in split_files[split])
    offered = set()
    for layout in layouts.values():
        offered |= {"rgb"} if layout.has_rgb else set()
        offered |= {"spectrogram"} if layout.has_waveform or layout.has_melspec else set()

    def read(split: str, start: int, stop: int) -> tf.data.Dataset:
        # Skip on the serialized records: files before `start` are not opened, records before it
        # in the first file are read but not parsed. Frames stay JPEG strings (decoded when a
        # view is cut, after the shuffle buffer).
        files: list[str] = []
        first = 0
        for path, count in split_files[split]:
            if first + count > start and first < stop:
                if not files:
                    skip = start - first
                files.append(path)
            first += count
        if not files:
            files, skip = [path for path, _ in split_files[split][:1]], 0
        records = tf.data.TFRecordDataset(files).skip(skip).take(max(stop - start, 0))
        layout = layouts[split]
        return records.enumerate(start=start).map(
            as_graph(
                lambda i, serialized: {
                    **scenic_tfrecord.parse_record(serialized, layout, fps, decode_frames=False),
                    "video_index": i,
                }
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )

    return ExampleSource(
        name="scenic_tfrecord",
        class_names=names,
        class_splits=tuple(class_splits) if class_splits else None,
        multi_label=multi_label,
        label_keys=("label",),
        modalities=tuple(m for m in ("rgb", "spectrogram") if m in offered),
        fps=float(fps),
        split_sizes=split_sizes,
        read=read,
        stored_spectrogram_bins=(
            scenic_tfrecord.MEL_BINS
            if any(layout.has_melspec for layout in layouts.values())
            else None
        ),
        full_frame_decode=True,
    )


_SCENIC_CACHE: dict[tuple, ExampleSource] = {}


def scenic_source_from_values(values: Mapping) -> ExampleSource:
    """`scenic_source` from merged `config.dataset` values (the scenic_tfrecord spec's
    source factory); one source per distinct setting in a process (records are counted once).
    """
    from mbt.data import pipeline

    patterns = values["tfrecord_pattern"]
    if not patterns:
        raise ValueError("config.dataset.tfrecord_pattern is required for scenic_tfrecord")
    if isinstance(patterns, Mapping):
        split_names = tuple(patterns)
    else:
        split_names = tuple(dict.fromkeys(pipeline.split_names(values).values()))
    key = (
        repr(patterns),
        split_names,
        values["num_classes"],
        tuple(values["class_names"]),
        values["multi_label"],
        tuple(values["class_splits"]),
        values["video_fps"],
    )
    if key not in _SCENIC_CACHE:
        _SCENIC_CACHE[key] = scenic_source(
            patterns,
            split_names,
            values["num_classes"],
            values["class_names"],
            bool(values["multi_label"]),
            values["class_splits"],
            values["video_fps"] or registry.get("scenic_tfrecord").default_fps,
        )
    return _SCENIC_CACHE[key]


# ---------------------------------------------------------------------------------------------
# In memory (tests, notebooks)


def memory_source(
    splits: Mapping[str, Sequence[Mapping[str, np.ndarray]]],
    *,
    class_names: Sequence[str],
    fps: float,
    class_splits: Sequence[int] | None = None,
    multi_label: bool = False,
    name: str = "memory",
) -> ExampleSource:
    """Source over in-memory stored example dicts (docs/design.md), split name → list.

    Each example needs `label` (an int index or int list) or `verb_label` + `noun_label`,
    and `rgb` (JPEG strings `[T]` or uint8 `[T, H, W, 3]`) and/or `audio` (float32
    `[samples]`, 16 kHz) and/or `spectrogram` (float32 `[frames, mel]`, 100 per second).
    Examples of one split must hold the same keys with the same dtypes and ranks.
    """
    label_keys = ("verb_label", "noun_label") if class_splits else ("label",)
    first = next((ex for exs in splits.values() for ex in exs), None)
    if first is None:
        raise ValueError("memory_source needs at least one example")
    offered = tuple(
        m
        for m, keys in (("rgb", ("rgb",)), ("spectrogram", ("audio", "spectrogram")))
        if any(k in first for k in keys)
    )

    def read(split: str, start: int, stop: int) -> tf.data.Dataset:
        examples = list(splits[split])[start:stop]

        def generate():
            for i, ex in enumerate(examples):
                yield {
                    **{k: np.asarray(v) for k, v in ex.items()},
                    "video_index": np.int64(start + i),
                }

        signature = {
            k: tf.TensorSpec([None] * np.ndim(v), tf.as_dtype(np.asarray(v).dtype))
            for k, v in first.items()
        }
        signature["video_index"] = tf.TensorSpec([], tf.int64)
        return tf.data.Dataset.from_generator(generate, output_signature=signature)

    spectrogram = first.get("spectrogram")
    return ExampleSource(
        stored_spectrogram_bins=None if spectrogram is None else int(np.shape(spectrogram)[1]),
        name=name,
        class_names=tuple(class_names),
        class_splits=tuple(class_splits) if class_splits else None,
        multi_label=multi_label,
        label_keys=label_keys,
        modalities=offered,
        fps=float(fps),
        split_sizes={s: len(v) for s, v in splits.items()},
        read=read,
    )
