"""Tests for the Scenic/DMVR SequenceExample reader and writer."""

import numpy as np
import pytest
import tensorflow as tf

from mbt.data import scenic_tfrecord


def _gradient_video(num_frames, height, width, offset):
    """Smooth frames (JPEG-friendly) that differ per frame: uint8 [T, H, W, 3]."""
    t = np.arange(num_frames)[:, None, None, None]
    y = np.arange(height)[None, :, None, None]
    x = np.arange(width)[None, None, :, None]
    c = np.arange(3)[None, None, None, :]
    return ((offset + 20 * t + 2 * y + x + 40 * c) % 256).astype(np.uint8)


def _examples():
    rng = np.random.default_rng(0)
    return [
        {
            "rgb": _gradient_video(5, 24, 32, offset=0),
            "audio": rng.uniform(-1, 1, 2 * 16000).astype(np.float32),
            "spectrogram": rng.normal(size=(200, 128)).astype(np.float32),
            "label": [3, 7],
            "label_text": ["Dog", "Bark"],
            "video_path": "clips/abc.mp4",
            "segment_start": 30.0,
            "segment_end": 32.0,
        },
        {
            "rgb": _gradient_video(4, 24, 32, offset=50),
            "audio": rng.uniform(-1, 1, 16000).astype(np.float32),
            "spectrogram": rng.normal(size=(100, 128)).astype(np.float32),
            "label": [1],
            "video_path": "clips/def.mp4",
            "segment_start": 0.0,
            "segment_end": 1.0,
        },
    ]


def test_round_trip_all_modalities(tmp_path):
    examples = _examples()
    for i, example in enumerate(examples):  # two files, read back through one glob
        assert (
            scenic_tfrecord.write_scenic_tfrecord(
                str(tmp_path / f"train-{i:05d}-of-00002"), [example]
            )
            == 1
        )
    dataset = scenic_tfrecord.read_scenic_tfrecords(str(tmp_path / "train-*-of-*"))
    got = list(dataset.as_numpy_iterator())
    assert len(got) == 2
    for example, read in zip(examples, got):
        assert read["rgb"].dtype == np.uint8
        assert read["rgb"].shape == example["rgb"].shape
        # JPEG is lossy; smooth frames come back within a few levels.
        assert np.abs(read["rgb"].astype(int) - example["rgb"].astype(int)).mean() < 3
        assert read["audio"].dtype == np.float32
        np.testing.assert_array_equal(read["audio"], example["audio"])
        np.testing.assert_array_equal(read["spectrogram"], example["spectrogram"])
        assert read["spectrogram"].shape[1] == 128
        assert read["label"].dtype == np.int64
        np.testing.assert_array_equal(read["label"], example["label"])
        assert read["video_path"] == example["video_path"].encode()
        assert read["id"] == example["video_path"].encode()
        assert read["segment_start"] == pytest.approx(example["segment_start"])
        assert read["segment_end"] == pytest.approx(example["segment_end"])
        assert read["has_audio"]


def test_melspec_only_records_without_timestamps(tmp_path):
    spectrogram = np.arange(3 * 100 * 128, dtype=np.float32).reshape(300, 128)
    path = str(tmp_path / "eval.tfrecord")
    scenic_tfrecord.write_scenic_tfrecord(path, [{"spectrogram": spectrogram, "label": [5]}])
    layout = scenic_tfrecord.inspect_layout(path)
    assert (layout.has_rgb, layout.has_waveform, layout.has_melspec) == (False, False, True)
    (read,) = list(scenic_tfrecord.read_scenic_tfrecords(path).as_numpy_iterator())
    assert set(read) == {
        "id",
        "video_path",
        "segment_start",
        "segment_end",
        "spectrogram",
        "has_audio",
        "label",
    }
    np.testing.assert_array_equal(read["spectrogram"], spectrogram)
    # Without timestamps the segment is the stored duration: 300 mel frames = 3 s.
    assert (read["segment_start"], read["segment_end"]) == (0.0, 3.0)


def test_reader_batches_with_tf_data(tmp_path):
    path = str(tmp_path / "x.tfrecord")
    scenic_tfrecord.write_scenic_tfrecord(path, _examples())
    dataset = scenic_tfrecord.read_scenic_tfrecords(path).map(
        lambda e: {"rgb": e["rgb"][:4], "label": tf.reduce_sum(tf.one_hot(e["label"], 10), 0)}
    )
    batch = next(iter(dataset.batch(2)))
    assert batch["rgb"].shape == (2, 4, 24, 32, 3)
    np.testing.assert_array_equal(batch["label"].numpy().sum(1), [2, 1])


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        scenic_tfrecord.read_scenic_tfrecords(str(tmp_path / "nothing-here-*"))
    with pytest.raises(ValueError, match="spectrogram must be"):
        scenic_tfrecord.make_sequence_example(
            {"spectrogram": np.zeros((150, 128), np.float32), "label": [0]}
        )
    with pytest.raises(ValueError, match="at least one of"):
        scenic_tfrecord.make_sequence_example({"label": [0]})
    not_sequence = str(tmp_path / "plain.tfrecord")
    with tf.io.TFRecordWriter(not_sequence) as writer:
        example = tf.train.Example()
        example.features.feature["x"].int64_list.value.append(1)
        writer.write(example.SerializeToString())
    with pytest.raises(ValueError, match="plain.tfrecord"):
        scenic_tfrecord.inspect_layout(not_sequence)


def _numbered_examples(count, rng, first=0):
    """Examples whose `video_path` names their position; noisy frames (4:2:0 JPEG)."""
    examples = []
    for i in range(first, first + count):
        frames = _gradient_video(12, 24, 40, offset=17 * i)
        frames = np.clip(frames + rng.integers(-40, 40, frames.shape), 0, 255).astype(np.uint8)
        examples.append(
            {
                "rgb": frames,
                "audio": rng.uniform(-1, 1, 16000).astype(np.float32),
                "label": [i % 5],
                "video_path": f"clip_{i}",
            }
        )
    return examples


def _write_shards(tmp_path, name, sizes, rng):
    examples = _numbered_examples(sum(sizes), rng)
    first = 0
    for shard, size in enumerate(sizes):
        scenic_tfrecord.write_scenic_tfrecord(
            str(tmp_path / f"{name}-{shard:05d}-of-{len(sizes):05d}"),
            examples[first : first + size],
        )
        first += size
    return examples


def test_source_ranges_skip_serialized_records_and_keep_frames_encoded(tmp_path):
    from mbt.data import sources

    rng = np.random.default_rng(1)
    _write_shards(tmp_path, "train", (2, 3, 2), rng)
    # A split whose record 1 is not a SequenceExample at all: reading from 2 on must never
    # parse it (nor decode anything before the range).
    with tf.io.TFRecordWriter(str(tmp_path / "broken-00000-of-00002")) as writer:
        writer.write(
            scenic_tfrecord.make_sequence_example(_numbered_examples(1, rng)[0]).SerializeToString()
        )
        writer.write(b"\xff" * 16)
    scenic_tfrecord.write_scenic_tfrecord(
        str(tmp_path / "broken-00001-of-00002"), _numbered_examples(3, rng, first=2)
    )
    patterns = {"train": str(tmp_path / "train-*"), "broken": str(tmp_path / "broken-*")}
    source = sources.scenic_source(
        patterns,
        ("train", "broken"),
        num_classes=5,
        class_names=(),
        multi_label=False,
        class_splits=None,
        fps=25.0,
    )
    assert source.split_sizes == {"train": 7, "broken": 5}
    full = list(
        scenic_tfrecord.read_scenic_tfrecords(
            patterns["train"], decode_frames=False
        ).as_numpy_iterator()
    )
    decoded = list(scenic_tfrecord.read_scenic_tfrecords(patterns["train"]).as_numpy_iterator())
    assert [ex["id"] for ex in full] == [f"clip_{i}".encode() for i in range(7)]
    assert source.read("train", 0, 1).element_spec["rgb"].dtype == tf.string  # held undecoded
    for start, stop in ((0, 7), (1, 6), (2, 7), (3, 5), (4, 4), (6, 7), (7, 7)):
        got = list(source.read("train", start, stop).as_numpy_iterator())
        assert [ex["video_index"] for ex in got] == list(range(start, stop))
        for ex, expected, frames in zip(got, full[start:stop], decoded[start:stop]):
            assert set(ex) == set(expected) | {"video_index"}
            for key in expected:
                np.testing.assert_array_equal(ex[key], expected[key], err_msg=key)
            np.testing.assert_array_equal(
                np.stack([tf.io.decode_jpeg(jpeg).numpy() for jpeg in ex["rgb"]]), frames["rgb"]
            )
    # Two hosts: [0, 4) and [4, 7) cover the split once.
    hosts = [list(source.read("train", a, b).as_numpy_iterator()) for a, b in ((0, 4), (4, 7))]
    assert [ex["id"] for host in hosts for ex in host] == [ex["id"] for ex in full]
    got = list(source.read("broken", 2, 5).as_numpy_iterator())
    assert [(ex["video_index"], ex["id"]) for ex in got] == [
        (i, f"clip_{i}".encode()) for i in range(2, 5)
    ]
    with pytest.raises(tf.errors.InvalidArgumentError):  # the broken record, when read
        list(source.read("broken", 0, 5).as_numpy_iterator())


def test_pipeline_batches_equal_decoding_every_frame_up_front(tmp_path):
    """Frames decoded after the shuffle buffer give the batches of frames decoded on reading."""
    import ml_collections

    from mbt.data import pipeline
    from mbt.data import sources

    rng = np.random.default_rng(2)
    _write_shards(tmp_path, "train", (3, 2), rng)
    dataset = pipeline.default_dataset_config()
    dataset.update(
        dict(
            name="scenic_tfrecord",
            tfrecord_pattern=str(tmp_path / "{split}-*"),
            num_classes=5,
            train_split="train",
            eval_split="train",
            test_split="train",
            video_fps=25.0,
            num_frames=4,
            stride=2,
            frame_size=16,
            min_resize=20,
            num_test_clips=2,
            num_spatial_crops=3,
            shuffle_buffer=4,
            modalities=("rgb",),
        )
    )
    dataset.rgb_augment.color = True
    config = ml_collections.ConfigDict({"dataset": dataset})
    # Reference: the frames decoded while reading, as the source did before.
    decoded = list(
        scenic_tfrecord.read_scenic_tfrecords(str(tmp_path / "train-*")).as_numpy_iterator()
    )
    reference = sources.memory_source(
        {"train": [{k: ex[k] for k in ("rgb", "label")} for ex in decoded]},
        class_names=[f"class_{i}" for i in range(5)],
        fps=25.0,
        multi_label=True,
    )
    for mode, count in (("train", 4), ("test", -1)):
        got, expected = (
            list(
                pipeline.build_tf_dataset(
                    config,
                    "train",
                    mode,
                    2,
                    source=src,
                    start_batch=1,
                    process_index=1,
                    process_count=2,
                )
                .take(count)
                .as_numpy_iterator()
            )
            for src in (None, reference)
        )
        assert len(got) == len(expected) > 0
        for a, b in zip(got, expected):
            assert set(a) == set(b)
            for key in a:
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{mode} {key}")


def test_reads_a_sequence_example_built_from_the_dmvr_keys_by_hand(tmp_path):
    """A record assembled with tf.train protos only (not this package's writer)."""
    frames = _gradient_video(3, 16, 20, offset=10)
    waveform = np.linspace(-0.5, 0.5, 16000, dtype=np.float32)
    melspec = np.arange(2 * 100 * 128, dtype=np.float32).reshape(2, 100 * 128) / 1000.0
    jpegs = [tf.io.encode_jpeg(frame, quality=95).numpy() for frame in frames]
    feature = tf.train.Feature
    context = tf.train.Features(
        feature={
            "clip/label/index": feature(int64_list=tf.train.Int64List(value=[4, 9])),
            "clip/label/text": feature(bytes_list=tf.train.BytesList(value=[b"Cat", b"Meow"])),
            "video/filename": feature(bytes_list=tf.train.BytesList(value=[b"v/xyz.mp4"])),
            "clip/start/timestamp": feature(int64_list=tf.train.Int64List(value=[2_000_000])),
            "clip/end/timestamp": feature(int64_list=tf.train.Int64List(value=[3_000_000])),
        }
    )
    lists = tf.train.FeatureLists(
        feature_list={
            "image/encoded": tf.train.FeatureList(
                feature=[feature(bytes_list=tf.train.BytesList(value=[j])) for j in jpegs]
            ),
            "WAVEFORM/feature/floats": tf.train.FeatureList(
                feature=[feature(float_list=tf.train.FloatList(value=waveform))]
            ),
            "melspec/feature/floats": tf.train.FeatureList(
                feature=[feature(float_list=tf.train.FloatList(value=row)) for row in melspec]
            ),
        }
    )
    record = tf.train.SequenceExample(context=context, feature_lists=lists)
    path = str(tmp_path / "dmvr.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(record.SerializeToString())
    (read,) = list(scenic_tfrecord.read_scenic_tfrecords(path).as_numpy_iterator())
    assert read["rgb"].shape == (3, 16, 20, 3) and read["rgb"].dtype == np.uint8
    assert np.abs(read["rgb"].astype(int) - frames.astype(int)).mean() < 3
    np.testing.assert_array_equal(read["audio"], waveform)
    # One 100x128 block per second, stacked in time order.
    np.testing.assert_array_equal(read["spectrogram"], melspec.reshape(200, 128))
    np.testing.assert_array_equal(read["label"], [4, 9])
    assert read["video_path"] == b"v/xyz.mp4"
    assert read["segment_start"] == pytest.approx(2.0)
    assert read["segment_end"] == pytest.approx(3.0)
    assert read["has_audio"]
