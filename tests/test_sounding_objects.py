"""The sounding-objects benchmark: its construction, its files, its builder and its views.

The clips are generated once per module in the real layout (H.264 + AAC mp4s, CSV, class
list), built with the TFDS builder and read back through the input pipeline.
"""

import json
import math
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from mbt import config_validation
from mbt import siblings
from mbt import train
from mbt.data import pipeline
from mbt.data import synthetic
from mbt.data.builders import common
from mbt.data.builders import sounding_objects as so

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLIPS = 60  # 48 train + 12 test, plus one row of each edge case
FPS = so.DEFAULT_FPS


def _plans(count, seed=0):
    rng = np.random.default_rng(seed)
    return [so.plan_clip(rng, f"c{i}", "train", 4, 2, 8, 0.4) for i in range(count)]


def test_construction_leaves_each_modality_alone_at_chance():
    plans = _plans(4000)
    labels = np.array([p.sounding for p in plans])
    position = np.array([p.shown.index(p.sounding) for p in plans])
    # Audio alone: every object is the sounding one equally often (chance 1/N).
    np.testing.assert_allclose(np.bincount(labels, minlength=4) / len(plans), 0.25, atol=0.03)
    # Video alone: the sounding object is either shown object equally often (chance 1/K) ...
    assert abs(position.mean() - 0.5) < 0.03
    # ... and pulses like the silent one, so nothing in the picture singles it out.
    sounding = np.array([p.pulses[p.shown.index(p.sounding)].mean() for p in plans])
    silent = np.array([p.pulses[1 - p.shown.index(p.sounding)].mean() for p in plans])
    assert abs(sounding.mean() - silent.mean()) < 0.01
    assert abs(sounding.mean() - 0.4) < 0.01


def test_sound_follows_exactly_the_sounding_object():
    rng = np.random.default_rng(3)
    for plan in _plans(20, seed=1):
        audio = so.render_audio(plan, FPS, rng)
        assert audio.shape == (int(8 / FPS * so.AUDIO_RATE),)
        loud = _loud_frames(audio)
        np.testing.assert_array_equal(loud, plan.pulses[plan.shown.index(plan.sounding)])


def _loud_frames(audio):
    """bool per frame: does the frame's audio hold a burst (energy far above the floor)?"""
    per_frame = audio[: audio.size // 1600 * 1600].reshape(-1, 1600)
    return (per_frame**2).mean(axis=1) > 1e-3


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("sounding_objects")
    summary = synthetic.generate(
        "sounding_objects", str(root / "src"), NUM_CLIPS, frame_size=32, clip_seconds=3.2
    )
    builder = so.SoundingObjects(data_dir=str(root / "tfds"))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(root / "src"))
    )
    return root, summary, builder


def test_generator_writes_the_real_layout(built):
    root, summary, _ = built
    src = root / "src"
    assert so.read_class_names(str(src / so.CLASSES_NAME)) == so.object_names(4)
    rows = so.read_rows(str(src / so.CSV_NAME), so.object_names(4))
    assert [r.split for r in rows].count("test") == 14  # 12 regular, no_audio, short clip
    assert set(summary["edge_cases"]) == set(synthetic.EDGE_KINDS)
    assert all(r.label in r.shown and len(r.shown) == 2 for r in rows)
    assert summary["construction"]["chance_top1"] == {"rgb": 0.5, "audio": 0.25, "late": 0.5}
    with open(src / synthetic.SUMMARY_FILE) as f:
        assert json.load(f)["counts"] == {"train": 48, "test": 12}


def test_builder_stores_every_clip_and_counts_the_broken_rows(built):
    root, _, builder = built
    assert builder.info.splits["train"].num_examples == 48
    assert builder.info.splits["test"].num_examples == 14
    assert builder.info.features["label"].names == so.object_names(4)
    for split, kinds in (
        ("train", ("missing_clip", "undecodable")),
        ("test", ("no_audio", "short_clip")),
    ):
        with open(os.path.join(builder.data_dir, f"build_report_{split}.json")) as f:
            counts = json.load(f)["counts"]
        assert {kind: n for kind, n in counts.items() if n} == dict.fromkeys(kinds, 1)
    names = so.object_names(4)
    rows = {r.clip_id: r for r in so.read_rows(str(root / "src" / so.CSV_NAME), names)}
    layout = so._layout(4, 32)
    for example in tfds.as_numpy(builder.as_dataset(split="train")):
        row = rows[example["id"].decode()]
        assert names[example["label"]] == row.label
        assert tuple(s.decode() for s in example["shown"]) == row.shown
        assert example["rgb"].shape == (32, 32, 32, 3)
        assert example["audio"].shape == (int(3.2 * so.AUDIO_RATE),)
        # After H.264, AAC and JPEG the sound still follows the label's square, frame by frame.
        loud = _loud_frames(example["audio"])
        for name in row.shown:
            top, left, side = layout[names.index(name)]
            square = example["rgb"][:, top : top + side, left : left + side].astype(float)
            bright = square.mean(axis=(1, 2, 3))
            pulses = bright > (bright.min() + bright.max()) / 2
            if name == row.label:
                np.testing.assert_array_equal(loud, pulses)
            elif pulses.any():
                assert not np.array_equal(loud, pulses)


def test_pipeline_views_keep_sound_and_picture_in_step(built):
    root, _, builder = built
    config = siblings.load_config_file(os.path.join(REPO, "configs", "sounding_objects.py"))
    config.dataset.data_dir = os.fspath(root / "tfds")
    batch = next(
        pipeline.make_dataset(config, None, "train", 10, seed=5, process_index=0, process_count=1)
    )
    layout = so._layout(4, 32)
    for rgb, spec, label in zip(batch["rgb"], batch["spectrogram"], batch["label"]):
        top, left, side = layout[int(label.argmax())]
        bright = rgb[:, top : top + side, left : left + side].mean(axis=(1, 2, 3))
        token_energy = spec[..., 0].reshape(8, 10, -1).max(axis=(1, 2))
        if bright.max() - bright.min() < 0.2:
            continue  # the sounding object does not pulse in this window
        pulses = bright > (bright.min() + bright.max()) / 2
        np.testing.assert_array_equal(token_energy > 0, pulses)


def test_csv_errors_name_the_file_and_line(tmp_path):
    names = so.object_names(4)
    path = tmp_path / so.CSV_NAME
    path.write_text(
        "clip_id,split,label,shown\n"
        "a,train,red square,red square;blue square\n"
        "b,train,green square,red square;blue square\n"
    )
    with pytest.raises(common.MalformedCsvError, match=r"line 3: label 'green square' is not"):
        so.read_rows(str(path), names)
    path.write_text("a,valid,red square,red square;blue square\n")
    with pytest.raises(common.MalformedCsvError, match=r"line 1: split 'valid'"):
        so.read_rows(str(path), names)
    path.write_text("a,train,grey square,grey square;blue square\n")
    with pytest.raises(common.MalformedCsvError, match=r"not in classes.txt"):
        so.read_rows(str(path), names)


@pytest.mark.parametrize("modalities,chance", [("rgb", 0.5), ("audio", 0.25)])
def test_a_single_modality_stays_at_chance(built, tmp_path, modalities, chance):
    """Trained briefly at a small scale, rgb alone and audio alone stay at their chance
    levels (top-1 and loss), through the real builder, pipeline and trainer."""
    root, _, _ = built
    config = siblings.load_config_file(
        os.path.join(REPO, "configs", "sounding_objects.py"), f"modalities={modalities}"
    )
    config.dataset.data_dir = os.fspath(root / "tfds")
    config.dataset.synthetic.num_clips = 0
    config.dataset.num_test_clips = 4
    config.model.num_layers = 2
    config.num_train_steps = 150
    config.batch_size = config.eval_batch_size = 32
    config.lr.warmup_steps = 20
    config.checkpoint.every_steps = 0
    config_validation.validate_config(config)
    result = train.train_and_evaluate(config, os.fspath(tmp_path))["test"]
    assert abs(result["top1"] - chance) <= 0.2, result
    assert result["loss"] >= 0.85 * math.log(1 / chance), result
