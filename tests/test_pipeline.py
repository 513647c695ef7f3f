"""Input pipeline (mbt.data.pipeline) over in-memory examples with the stored structure.

Frames are solid grey JPEGs whose level encodes the stored frame index (level = 4 × index),
so the sampled clip positions can be read back from the batches.
"""

import math

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from mbt.data import pipeline
from mbt.data import registry
from mbt.data import settings
from mbt.data import sources
from mbt.data.builders import vggsound_spec

FPS = 10.0
SR = 16000
LEVEL_STEP = 4


def _jpegs(num_frames: int, height: int = 24, width: int = 32, gradient: bool = False):
    frames = []
    for i in range(num_frames):
        frame = np.full([height, width, 3], LEVEL_STEP * i, np.uint8)
        if gradient:  # brighter to the right
            frame = np.broadcast_to(
                np.linspace(0, 250, width, dtype=np.uint8)[None, :, None], [height, width, 3]
            )
        frames.append(tf.io.encode_jpeg(np.ascontiguousarray(frame), quality=100).numpy())
    return np.array(frames, dtype=object)


def _example(seconds: float, label, rng, **extra):
    num_frames = int(round(seconds * FPS))
    return {
        "rgb": _jpegs(num_frames, **extra),
        "audio": (0.1 * rng.standard_normal(int(round(seconds * SR)))).astype(np.float32),
        "label": np.asarray(label, np.int64),
    }


def _frame_indices(rgb_clip: np.ndarray) -> np.ndarray:
    """Stored frame index of each frame of one [T, H, W, 3] clip in [-1, 1]."""
    level = (rgb_clip.mean(axis=(1, 2, 3)) + 1.0) / 2.0 * 255.0
    return np.round(level / LEVEL_STEP).astype(int)


@pytest.fixture(scope="module")
def source():
    rng = np.random.default_rng(0)
    splits = {
        "train": [_example(3.0, [i % 4, 5], rng) for i in range(6)],
        "eval": [_example(2.0 + 0.5 * i, [i % 6], rng) for i in range(7)],
    }
    return sources.memory_source(
        splits, class_names=[f"c{i}" for i in range(6)], fps=FPS, multi_label=True
    )


def _config(**overrides) -> ml_collections.ConfigDict:
    dataset = pipeline.default_dataset_config()
    dataset.update(
        dict(
            num_frames=4,
            stride=2,
            frame_size=16,
            min_resize=20,
            audio_seconds=1.0,
            train_split="train",
            eval_split="eval",
            test_split="eval",
            num_test_clips=3,
            shuffle_buffer=16,
        )
    )
    dataset.spec_augment.max_time_width = 20
    dataset.update(overrides)
    return ml_collections.ConfigDict({"dataset": dataset})


def _batches(source, config, split, mode, batch_size, count=None, **kwargs):
    kwargs.setdefault("process_index", 0)
    kwargs.setdefault("process_count", 1)
    ds = pipeline.build_tf_dataset(config, split, mode, batch_size, source=source, **kwargs)
    if count is not None:
        ds = ds.take(count)
    return list(ds.as_numpy_iterator())


def test_train_batches_shapes_dtypes_and_epochs(source):
    batches = _batches(source, _config(), None, "train", 3, count=6)
    batch = batches[0]
    assert set(batch) == {"rgb", "spectrogram", "label", "batch_mask", "video_index"}
    assert batch["rgb"].shape == (3, 4, 16, 16, 3) and batch["rgb"].dtype == np.float32
    assert batch["spectrogram"].shape == (3, 100, 128, 1)
    assert batch["spectrogram"].dtype == np.float32
    assert batch["label"].shape == (3, 6) and batch["label"].dtype == np.float32
    assert batch["video_index"].dtype == np.int32 and batch["batch_mask"].dtype == np.float32
    assert all(b["batch_mask"].tolist() == [1, 1, 1] for b in batches)
    for b in batches:
        assert -1.0 <= b["rgb"].min() and b["rgb"].max() <= 1.0
    # Every epoch (6 examples = 2 batches) is a permutation, reshuffled between epochs.
    epochs = [
        np.concatenate([batches[2 * e]["video_index"], batches[2 * e + 1]["video_index"]])
        for e in range(3)
    ]
    for order in epochs:
        assert sorted(order) == list(range(6))
    assert len({tuple(order) for order in epochs}) > 1
    # Multi-hot labels follow the example: label [i % 4, 5].
    for b in batches:
        for index, label in zip(b["video_index"], b["label"]):
            expected = np.zeros(6)
            expected[[index % 4, 5]] = 1
            np.testing.assert_array_equal(label, expected)
    # Clips are consecutive stored frames `stride` apart (no wrap: 3 s examples, 1 s window).
    frames = _frame_indices(batch["rgb"][0])
    np.testing.assert_array_equal(np.diff(frames), [2, 2, 2])


def test_train_is_seeded_and_start_batch_equals_skipping(source):
    config = _config()
    reference = _batches(source, config, None, "train", 4, count=7, seed=3)
    again = _batches(source, config, None, "train", 4, count=7, seed=3)
    other_seed = _batches(source, config, None, "train", 4, count=7, seed=4)
    for a, b in zip(reference, again):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert any(not np.array_equal(a["rgb"], b["rgb"]) for a, b in zip(reference, other_seed))
    # 5 batches of 4 = 20 examples = 3 epochs of 6 + 2: resumes inside the 4th epoch.
    resumed = _batches(source, config, None, "train", 4, count=2, seed=3, start_batch=5)
    for a, b in zip(reference[5:], resumed):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_train_fraction_reads_the_first_examples_over_all_hosts_and_leaves_eval_whole(source):
    # 0.5 of the 6 train examples = the first 3 in stored order, each epoch a permutation.
    config = _config(train_fraction=0.5)
    order = np.concatenate(
        [b["video_index"] for b in _batches(source, config, None, "train", 3, 4)]
    )
    assert [sorted(order[i : i + 3]) for i in range(0, 12, 3)] == [[0, 1, 2]] * 4
    # Two hosts split those 3 (host 0: [0, 1), host 1: [1, 3)), never reading past them.
    hosts = [
        set(
            np.concatenate(
                [
                    b["video_index"]
                    for b in _batches(
                        source, config, None, "train", 1, 4, process_index=p, process_count=2
                    )
                ]
            ).tolist()
        )
        for p in range(2)
    ]
    assert hosts == [{0}, {1, 2}]
    # ceil(0.4 * 6) = 3 too; any fraction > 0 keeps at least one example.
    assert settings.train_fraction_size(6, 0.4) == 3 and settings.train_fraction_size(6, 0.01) == 1
    assert settings.train_fraction_size(10, 0.3) == 3  # not 4 from 0.3 * 10 = 3.0000000000000004
    # Eval and test read the whole split whatever the fraction.
    evaluated = _batches(source, config, "eval", "eval", 4)
    assert sum(b["batch_mask"].sum() for b in evaluated) == 7
    with pytest.raises(ValueError, match=r"config.dataset.train_fraction=0.0 must be in \(0, 1\]"):
        _batches(source, _config(train_fraction=0.0), None, "train", 3, 1)


def test_eval_pads_last_batch_and_is_deterministic(source):
    config = _config()
    first = _batches(source, config, "eval", "eval", 3)
    second = _batches(source, config, "eval", "eval", 3)
    assert len(first) == math.ceil(7 / 3)
    for a, b in zip(first, second):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    mask = np.concatenate([b["batch_mask"] for b in first])
    index = np.concatenate([b["video_index"] for b in first])
    assert mask.sum() == 7
    assert sorted(index[mask == 1]) == list(range(7))
    assert (index[mask == 0] == -1).all()
    padded = first[-1]
    assert (padded["rgb"][mask[-3:] == 0] == 0).all()
    # One-hot from a scalar-in-a-list label [i % 6].
    labels = np.concatenate([b["label"] for b in first])[mask == 1]
    np.testing.assert_array_equal(labels.argmax(1), index[mask == 1] % 6)
    # Centre window: example i lasts 2 + 0.5 i s, window 1 s; the start is on the frame grid:
    # first frame floor(10 × free / 2).
    for b in first:
        for clip, i, m in zip(b["rgb"], b["video_index"], b["batch_mask"]):
            if m:
                first_frame = math.floor(FPS * (2.0 + 0.5 * i - 1.0) / 2)
                np.testing.assert_array_equal(_frame_indices(clip), first_frame + 2 * np.arange(4))


@pytest.mark.parametrize("batch_size", [2, 4])
def test_eval_two_hosts_cover_every_example_once(source, batch_size):
    per_host = [
        _batches(source, _config(), "eval", "eval", batch_size, process_index=p, process_count=2)
        for p in range(2)
    ]
    assert len(per_host[0]) == len(per_host[1]) == math.ceil(math.ceil(7 / 2) / batch_size)
    assert all(b["rgb"].shape[0] == batch_size for host in per_host for b in host)
    index = np.concatenate([b["video_index"] for host in per_host for b in host])
    mask = np.concatenate([b["batch_mask"] for host in per_host for b in host])
    assert mask.sum() == 7
    assert sorted(index[mask == 1]) == list(range(7))


def test_test_views_share_video_index_and_are_evenly_spaced(source):
    config = _config(num_test_clips=3, num_spatial_crops=1)
    batches = _batches(source, config, "eval", "test", 5)
    assert len(batches) == math.ceil(7 * 3 / 5)
    index = np.concatenate([b["video_index"] for b in batches])
    mask = np.concatenate([b["batch_mask"] for b in batches])
    rgb = np.concatenate([b["rgb"] for b in batches])
    assert mask.sum() == 21
    for i in range(7):
        views = np.flatnonzero((index == i) & (mask == 1))
        assert len(views) == 3
        # Windows start at 0, free/2 and free (s), rounded down to the frame grid.
        free = 2.0 + 0.5 * i - 1.0
        starts = [_frame_indices(rgb[v])[0] for v in views]
        np.testing.assert_array_equal(starts, [0, math.floor(FPS * free / 2), round(FPS * free)])


def test_three_spatial_crops_span_the_long_side():
    rng = np.random.default_rng(1)
    src = sources.memory_source(
        {"eval": [_example(1.0, [0], rng, gradient=True)]}, class_names=["a"], fps=FPS
    )
    config = _config(
        num_test_clips=2, num_spatial_crops=3, eval_split="eval", test_split="eval", min_resize=16
    )
    (batch,) = _batches(src, config, "eval", "test", 6)
    assert (batch["video_index"] == 0).all()
    brightness = batch["rgb"].mean(axis=(1, 2, 3, 4))
    # Views are clip-major: crops left, centre, right for each of the 2 clips.
    for clip in range(2):
        left, centre, right = brightness[3 * clip : 3 * clip + 3]
        assert left < centre < right


def test_short_examples_wrap_frames_and_audio():
    rng = np.random.default_rng(2)
    # 0.3 s example: 3 stored frames, 4800 samples; windows of 8 frames / 1 s wrap around.
    short = _example(0.3, [1], rng)
    src = sources.memory_source({"eval": [short]}, class_names=["a", "b"], fps=FPS)
    config = _config(num_frames=8, stride=1, eval_split="eval", spec_augment={"enabled": False})
    (batch,) = _batches(src, config, "eval", "eval", 1)
    np.testing.assert_array_equal(_frame_indices(batch["rgb"][0]), [0, 1, 2, 0, 1, 2, 0, 1])
    spec = batch["spectrogram"][0, :, :, 0]
    # 4800 samples = 30 hops: the log-mel repeats with period 30 frames (except at the end).
    np.testing.assert_allclose(spec[5:60], spec[35:90], atol=1e-4)
    assert not np.allclose(spec[5:20], spec[20:35], atol=1e-2)


def test_modality_selection_and_spec_channels(source):
    config = _config(modalities=("spectrogram",), spec_channels=3)
    (batch,) = _batches(source, config, "eval", "eval", 7)
    assert set(batch) == {"spectrogram", "label", "batch_mask", "video_index"}
    assert batch["spectrogram"].shape == (7, 100, 128, 3)
    np.testing.assert_array_equal(batch["spectrogram"][..., 0], batch["spectrogram"][..., 2])
    (batch,) = _batches(source, _config(modalities=("rgb",)), "eval", "eval", 7)
    assert set(batch) == {"rgb", "label", "batch_mask", "video_index"}


def test_training_spec_augment_masks_bins(source):
    config = _config(modalities=("spectrogram",))
    config.dataset.spec_augment.update(num_freq_masks=2, max_freq_width=30)
    batches = _batches(source, config, None, "train", 6, count=2)
    spec = np.concatenate([b["spectrogram"][..., 0] for b in batches])
    masked_bins = (spec == 0).all(axis=1).sum(axis=1)  # bins masked over all frames
    assert masked_bins.max() > 0 and masked_bins.max() <= 60


def test_training_time_warp_from_the_config(source):
    config = _config(modalities=("spectrogram",))
    config.dataset.spec_augment.update(num_freq_masks=0, num_time_masks=0)
    (plain,) = _batches(source, config, None, "train", 6, count=1)
    config.dataset.spec_augment.time_warp_max_frames = 30
    (warped,) = _batches(source, config, None, "train", 6, count=1)
    assert warped["spectrogram"].shape == plain["spectrogram"].shape
    np.testing.assert_array_equal(warped["label"], plain["label"])  # the same clips
    differs = [not np.allclose(w, p) for w, p in zip(warped["spectrogram"], plain["spectrogram"])]
    assert sum(differs) >= 4
    # Warped frames interpolate the clip's own frames: never outside its range.
    for w, p in zip(warped["spectrogram"], plain["spectrogram"]):
        assert p.min() - 1e-4 <= w.min() and w.max() <= p.max() + 1e-4
    config.dataset.spec_augment.time_warp_bound = "both"
    with pytest.raises(ValueError, match="config.dataset.spec_augment.time_warp_bound='both'"):
        _batches(source, config, None, "train", 6, count=1)


def test_label_vectors_multi_hot_one_hot_and_verb_noun():
    audioset = sources.ExampleSource(
        "a", tuple("abcde"), None, True, ("label",), ("rgb",), 1.0, {}, None
    )
    np.testing.assert_array_equal(
        sources.label_vector({"label": tf.constant([3, 0, 3], tf.int64)}, audioset), [1, 0, 0, 1, 0]
    )
    np.testing.assert_array_equal(
        sources.label_vector({"label": tf.constant([], tf.int64)}, audioset), [0] * 5
    )
    np.testing.assert_array_equal(
        sources.label_vector({"label": tf.constant(2, tf.int64)}, audioset), [0, 0, 1, 0, 0]
    )
    epic = sources.ExampleSource(
        "e", tuple("vvvnnnn"), (3, 4), False, ("verb_label", "noun_label"), ("rgb",), 1.0, {}, None
    )
    np.testing.assert_array_equal(
        sources.label_vector(
            {"verb_label": tf.constant(2, tf.int64), "noun_label": tf.constant(1, tf.int64)}, epic
        ),
        [0, 0, 1, 0, 1, 0, 0],
    )


def test_bad_config_errors_name_the_key(source):
    with pytest.raises(ValueError, match=r"config.dataset.name='kinetics'.*audioset"):
        pipeline.get_dataset_meta(_config(name="kinetics"))
    with pytest.raises(ValueError, match=r"config.dataset.modalities.*allowed.*'rgb'"):
        _batches(source, _config(modalities=("rgb", "flow")), None, "eval", 2)
    with pytest.raises(ValueError, match=r"split 'validation'.*allowed: \['eval', 'train'\]"):
        _batches(source, _config(), "validation", "eval", 2)
    with pytest.raises(ValueError, match=r"mode='predict'.*'train', 'eval', 'test'"):
        _batches(source, _config(), None, "predict", 2)
    with pytest.raises(ValueError, match="config.dataset.min_resize=10 must be >= frame_size=16"):
        _batches(source, _config(min_resize=10), None, "eval", 2)
    with pytest.raises(ValueError, match="num_spatial_crops=2"):
        _batches(source, _config(num_spatial_crops=2), None, "test", 2)
    audio_only = sources.memory_source(
        {"eval": [{"audio": np.zeros(100, np.float32), "label": np.int64(0)}]},
        class_names=["a"],
        fps=FPS,
    )
    with pytest.raises(ValueError, match=r"provides only \('spectrogram',\)"):
        _batches(audio_only, _config(), "eval", "eval", 2)


def test_default_config_has_mbt_values():
    c = pipeline.default_dataset_config()
    assert (c.num_frames, c.stride, c.frame_size, c.min_resize) == (32, 2, 224, 256)
    assert (c.audio_seconds, c.num_test_clips, c.num_mel_bins) == (8.0, 4, 128)
    assert (c.spec_mean, c.spec_std) == (1.102, 2.762)


# ---------------------------------------------------------------------------------------------
# End to end: synthetic copies built by the real TFDS builders (mbt.data.builders).


def _tfds_config(name: str, workdir, **overrides) -> ml_collections.ConfigDict:
    config = _config(
        name=name,
        builder_config="tiny",
        train_split="",
        eval_split="",
        test_split="",
        num_test_clips=2,
        frame_size=24,
        min_resize=32,
        **overrides,
    )
    config.dataset.synthetic.update(num_clips=6, seed=1)
    pipeline.prepare_dataset(config, str(workdir))
    return config


def _stored_examples(config, split: str) -> list[dict]:
    """The split's stored examples in split order, read with TFDS directly."""
    builder = sources.tfds_builder(config.dataset.name, "tiny", config.dataset.data_dir)
    count = builder.info.splits[split].num_examples
    return [
        next(iter(builder.as_dataset(split=f"{split}[{i}:{i + 1}]").as_numpy_iterator()))
        for i in range(count)
    ]


@pytest.mark.parametrize("name", ["audioset", "vggsound", "epic_kitchens"])
def test_builder_end_to_end_labels_follow_stored_examples(name, tmp_path):
    config = _tfds_config(name, tmp_path)
    assert config.dataset.data_dir == str(tmp_path / "tfds")
    meta = pipeline.get_dataset_meta(config)
    assert meta.input_shapes == {"rgb": (4, 24, 24, 3), "spectrogram": (100, 128, 1)}
    eval_split = registry.get(name).default_splits[1]
    stored = _stored_examples(config, eval_split)
    assert meta.num_examples[eval_split] == len(stored) > 0
    batches = list(
        pipeline.make_dataset(config, eval_split, "eval", 4, process_index=0, process_count=1)
    )
    assert len(batches) == pipeline.num_batches(config, eval_split, "eval", 4, process_count=1)
    mask = np.concatenate([b["batch_mask"] for b in batches])
    index = np.concatenate([b["video_index"] for b in batches])[mask == 1]
    labels = np.concatenate([b["label"] for b in batches])[mask == 1]
    assert sorted(index) == list(range(len(stored)))
    for i, label in zip(index, labels):
        example = stored[i]
        if name == "epic_kitchens":
            assert meta.class_splits == (97, 300) and not meta.multi_label
            expected = np.zeros(397)
            expected[[example["verb_label"], 97 + example["noun_label"]]] = 1
        else:
            expected = np.zeros(meta.num_classes)
            expected[example["label"]] = 1
            assert meta.multi_label == (name == "audioset")
        np.testing.assert_array_equal(label, expected)
    for b in batches:
        assert np.isfinite(b["spectrogram"]).all() and np.abs(b["rgb"]).max() <= 1.0

    # The source keeps the frames encoded: the same [T] strings as TFDS's SkipDecoding.
    import tensorflow_datasets as tfds

    builder = sources.tfds_builder(name, "tiny", config.dataset.data_dir)
    source = pipeline.source_from_values(pipeline.dataset_values(config))
    read = {
        int(ex["video_index"]): ex["rgb"]
        for ex in source.read(eval_split, 0, len(stored)).as_numpy_iterator()
    }
    frame_counts = set()
    for i in range(len(stored)):
        skipped = builder.as_dataset(
            split=f"{eval_split}[{i}:{i + 1}]", decoders={"rgb": tfds.decode.SkipDecoding()}
        )
        (want,) = [ex["rgb"] for ex in skipped.as_numpy_iterator()]
        assert read[i].dtype == object and list(read[i]) == list(want), i
        frame_counts.add(len(want))
    assert min(frame_counts) > 0  # real frames (the tiny copy keeps no frameless video)


def test_vggsound_end_to_end(tmp_path, monkeypatch):
    import json

    from mbt import train

    config = _tfds_config("vggsound", tmp_path)
    summary = json.load(open(tmp_path / "synthetic_src" / "synthetic_summary.json"))
    built = tmp_path / "tfds"
    stamp = sorted(p.stat().st_mtime for p in built.rglob("*") if p.is_file())
    pipeline.prepare_dataset(config, str(tmp_path))  # already there: nothing is redone
    assert stamp == sorted(p.stat().st_mtime for p in built.rglob("*") if p.is_file())

    meta = pipeline.get_dataset_meta(config)
    # The official 309-way label space (configs/vggsound.py), whatever labels the CSV holds.
    assert meta.class_names == vggsound_spec.official_class_names() and meta.num_classes == 309
    assert set(summary["class_names"]) < set(meta.class_names)
    assert meta.num_examples == {"train": 6, "test": 2}  # edge cases skipped by the builder
    # One-hot at the position of the CSV's label name in the official class list.
    label_names = {c["id"]: c["label_names"][0] for c in summary["clips"]}
    stored = _stored_examples(config, "train")
    (batch,) = pipeline.make_dataset(config, "train", "eval", 6, process_index=0, process_count=1)
    for i, label in zip(batch["video_index"], batch["label"]):
        name = label_names[stored[i]["id"].decode()]
        assert meta.class_names[int(label.argmax())] == name

    # Test views over two hosts: 6 examples × 2 clips, each example on one host only.
    per_host = [
        list(pipeline.make_dataset(config, "train", "test", 4, process_index=p, process_count=2))
        for p in range(2)
    ]
    assert len(per_host[0]) == len(per_host[1]) == 2
    index = np.concatenate([b["video_index"] for h in per_host for b in h])
    mask = np.concatenate([b["batch_mask"] for h in per_host for b in h])
    assert mask.sum() == 12
    assert sorted(index[mask == 1]) == sorted(list(range(6)) * 2)

    # Resuming the training stream read through TFDS equals skipping.
    stream = pipeline.make_dataset(
        config, "train", "train", 4, seed=5, process_index=0, process_count=1
    )
    reference = [next(stream) for _ in range(4)]
    resumed = pipeline.make_dataset(
        config, "train", "train", 4, seed=5, start_batch=2, process_index=0, process_count=1
    )
    for expected in reference[2:]:
        got = next(resumed)
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key], err_msg=key)

    # TFDS keeps this small dataset in memory after its first pass, unless tfds_autocache is
    # off; read from the files, it gives the same batch as above.
    def built(config):
        ds = pipeline.build_tf_dataset(config, "train", "eval", 6, process_index=0, process_count=1)
        graph = tf.compat.v1.GraphDef.FromString(
            tf.raw_ops.DatasetToGraphV2(input_dataset=ds._variant_tensor).numpy()
        )
        ops = {node.op for node in graph.node} | {
            node.op for function in graph.library.function for node in function.node_def
        }
        return any(op.startswith("CacheDataset") for op in ops), ds

    uncached_config = config.copy_and_resolve_references()
    uncached_config.dataset.tfds_autocache = False
    (in_memory, _), (from_memory, uncached) = built(config), built(uncached_config)
    assert in_memory and not from_memory
    (again,) = list(uncached.as_numpy_iterator())
    for key in batch:
        np.testing.assert_array_equal(again[key], batch[key], err_msg=key)

    # Through train.PipelineData: each eval / test dataset is built once, then iterated again.
    config.dataset.synthetic.num_clips = 0  # built above; PipelineData only reads it
    builds = []
    build = pipeline.build_tf_dataset

    def counted_build(config, split, mode, *args, **kwargs):
        builds.append(mode)
        return build(config, split, mode, *args, **kwargs)

    monkeypatch.setattr(pipeline, "build_tf_dataset", counted_build)
    data = train.PipelineData(config)

    def read(mode, batch_size=4):
        return list(data.batches("train", mode, batch_size, seed=0))

    first, again = read("eval"), read("eval")
    assert len(first) == 2 and builds == ["eval"]  # iterated again, not rebuilt
    for got, want in zip(again, first):
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    read("test"), read("eval", batch_size=3), read("test")
    assert builds == ["eval", "test", "eval"]  # one per request
    stream = data.batches("train", "train", 4, seed=0)
    next(stream), next(data.batches("train", "train", 4, seed=0))
    assert builds == ["eval", "test", "eval", "train", "train"]  # training streams are not kept


def test_scenic_tfrecords_with_precomputed_spectrogram(tmp_path):
    from mbt.data import scenic_tfrecord

    rng = np.random.default_rng(3)
    for split, count in (("train", 3), ("test", 2)):
        examples = []
        for i in range(count):
            frames = np.stack([np.full([24, 32, 3], LEVEL_STEP * f, np.uint8) for f in range(20)])
            spectrogram = np.tile(np.arange(200, dtype=np.float32)[:, None], [1, 128]) + i
            examples.append(
                {
                    "rgb": frames,
                    "spectrogram": spectrogram,
                    "audio": rng.standard_normal(2 * SR).astype(np.float32),
                    "label": [i, 4] if i else [2],
                }
            )
        scenic_tfrecord.write_scenic_tfrecord(str(tmp_path / f"{split}.tfrecord"), examples)
    config = _config(
        name="scenic_tfrecord",
        tfrecord_pattern=str(tmp_path / "{split}.tfrecord"),
        num_classes=5,
        train_split="train",
        eval_split="test",
        test_split="test",
        video_fps=10.0,
        spec_mean=0.0,
        spec_std=1.0,
    )
    meta = pipeline.get_dataset_meta(config)
    assert meta.num_examples == {"train": 3, "test": 2}
    assert meta.class_names == tuple(f"class_{i}" for i in range(5)) and meta.multi_label
    (batch,) = pipeline.make_dataset(config, "test", "eval", 2, process_index=0, process_count=1)
    np.testing.assert_array_equal(batch["label"], [[0, 0, 1, 0, 0], [0, 1, 0, 0, 1]])
    # Centre window of a 2 s example, 1 s long: precomputed frames 50..149 (+ example index).
    np.testing.assert_allclose(batch["spectrogram"][1, :, 0, 0], np.arange(50, 150) + 1)
    np.testing.assert_array_equal(_frame_indices(batch["rgb"][0]), [5, 7, 9, 11])
    config.dataset.use_precomputed_spectrogram = False  # log-mel of the stored waveform
    (batch,) = pipeline.make_dataset(config, "test", "eval", 2, process_index=0, process_count=1)
    assert batch["spectrogram"].std() > 0.1 and batch["spectrogram"].max() < 20
    config.dataset.update(use_precomputed_spectrogram=True, num_mel_bins=64)
    with pytest.raises(ValueError, match="num_mel_bins=64 but scenic_tfrecord stores 128-bin"):
        pipeline.get_dataset_meta(config)
    with pytest.raises(ValueError, match="num_classes must be > 0"):
        pipeline.get_dataset_meta(
            _config(
                name="scenic_tfrecord",
                num_classes=0,
                tfrecord_pattern=str(tmp_path / "{split}.tfrecord"),
            )
        )


def test_rgb_augmentation_ops():
    from mbt.data import augment

    # Crop boxes map a crop after resizing the short side back to stored pixels.
    box = augment.crop_box(tf.constant([100, 200]), tf.constant(50.0), 40, tf.constant([0.5, 1.0]))
    np.testing.assert_array_equal(box, [10, 120, 80, 80])
    params = augment.RgbAugment(scale_min=1.0, scale_max=2.0)
    for i in range(20):
        y, x, h, w = augment.random_crop_params(
            tf.constant([60, 90]), 30, 24, params, tf.constant([i, 0])
        ).numpy()
        assert 24 <= h == w <= 48 and 0 <= y <= 60 - h and 0 <= x <= 90 - w
    clip = tf.random.uniform([3, 8, 10, 3], seed=0)
    flips = [augment.random_flip(clip, tf.constant([i, 1])).numpy() for i in range(10)]
    assert any(np.array_equal(f, clip.numpy()[:, :, ::-1]) for f in flips)
    assert any(np.array_equal(f, clip.numpy()) for f in flips)
    frames = np.random.default_rng(0).integers(0, 256, [2, 5, 7, 3]).astype(np.uint8)
    unknown_shape = tf.function(
        augment.flip_left_right, input_signature=[tf.TensorSpec([None] * 4, tf.uint8)]
    )
    np.testing.assert_array_equal(unknown_shape(frames), frames[:, :, ::-1])
    jitter = augment.RgbAugment(color=True, color_prob=1.0, color_drop_prob=0.0)
    colored = augment.color_jitter(clip, tf.constant([0, 3]), jitter).numpy()
    assert colored.min() >= 0 and colored.max() <= 1 and not np.allclose(colored, clip.numpy())
    grey = augment.color_jitter(
        clip,
        tf.constant([0, 3]),
        augment.RgbAugment(color=True, color_prob=0.0, color_drop_prob=1.0),
    ).numpy()
    np.testing.assert_allclose(grey[..., 0], grey[..., 2])
