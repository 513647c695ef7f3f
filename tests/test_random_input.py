"""Random input (`config.dataset.random_input`): the dataset's label layout at the configured
shapes, one global stream whatever the process layout, test views of one example sharing its
classes, and classes that a model can tell apart."""

import os

import numpy as np
import pytest

from mbt import siblings
from mbt.data import random_input

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_config(dataset="audioset", **random):
    """The dataset's paper config with small inputs and random input on."""
    config = siblings.load_config_file(os.path.join(REPO, "configs", f"{dataset}.py"))
    config.dataset.update(num_frames=2, frame_size=8, audio_seconds=0.16, num_mel_bins=4)
    config.dataset.num_test_clips = 3
    config.dataset.random_input.update(
        dict(dict(enabled=True, train_examples=20, test_examples=5), **random)
    )
    return config


def _concat(batches):
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def test_layouts_and_shapes_follow_the_dataset_config():
    audioset = random_input.RandomData(small_config())
    meta = audioset.meta
    assert (meta.num_classes, meta.multi_label, meta.class_splits) == (527, True, None)
    assert meta.input_shapes == {"rgb": (2, 8, 8, 3), "spectrogram": (16, 4, 1)}
    assert meta.num_examples == {"train": 20, "test": 5}
    batch = next(audioset.process_batches("train", "train", 6, 0, 1))
    assert batch["rgb"].shape == (6, 2, 8, 8, 3) and batch["rgb"].dtype == np.float32
    assert batch["spectrogram"].shape == (6, 16, 4, 1)
    np.testing.assert_array_equal(batch["label"].sum(axis=1), 1)

    epic = random_input.RandomData(small_config("epic_kitchens"))
    assert (epic.meta.num_classes, epic.meta.class_splits) == (397, (97, 300))
    assert not epic.meta.multi_label
    label = next(epic.process_batches("train", "train", 8, 0, 1))["label"]
    np.testing.assert_array_equal(label[:, :97].sum(axis=1), 1)  # one verb
    np.testing.assert_array_equal(label[:, 97:].sum(axis=1), 1)  # one noun

    vggsound = small_config("vggsound")
    vggsound.dataset.num_classes = 12  # a custom label set
    assert random_input.RandomData(vggsound).meta.num_classes == 12


def test_one_global_stream_on_any_process_layout_and_from_any_start():
    data = random_input.RandomData(small_config())
    one = [b for _, b in zip(range(4), data.process_batches("train", "train", 8, 0, 1))]
    for processes in (2, 4):
        streams = [
            data.process_batches("train", "train", 8 // processes, p, processes)
            for p in range(processes)
        ]
        for k in range(4):
            merged = _concat([next(stream) for stream in streams])
            for key, value in one[k].items():
                np.testing.assert_array_equal(merged[key], value, err_msg=f"{processes}: {key}")
    resumed = next(data.process_batches("train", "train", 8, 0, 1, start_batch=3))
    for key, value in one[3].items():
        np.testing.assert_array_equal(resumed[key], value)
    # 20 train examples in order: global batch 2 holds examples 16..19, 0..3.
    np.testing.assert_array_equal(one[2]["video_index"], [16, 17, 18, 19, 0, 1, 2, 3])
    np.testing.assert_array_equal(one[2]["rgb"][4:], one[0]["rgb"][:4])


def test_a_test_pass_has_every_view_once_padded_alike_on_every_process():
    data = random_input.RandomData(small_config())
    views = 3  # num_test_clips
    for processes in (1, 2):
        streams = [
            list(data.process_batches("test", "test", 4, p, processes)) for p in range(processes)
        ]
        assert len({len(s) for s in streams}) == 1  # the same number of batches everywhere
        merged = _concat([b for k in range(len(streams[0])) for b in (s[k] for s in streams)])
        real = merged["batch_mask"] == 1
        assert real.sum() == 5 * views
        np.testing.assert_array_equal(merged["video_index"][real], np.repeat(np.arange(5), views))
        for video in range(5):
            rows = np.flatnonzero(real & (merged["video_index"] == video))
            labels, frames = merged["label"][rows], merged["rgb"][rows]
            assert (labels == labels[0]).all()  # one example's classes...
            assert not np.allclose(frames[0], frames[1])  # ...seen in different views
    eval_pass = _concat(list(data.process_batches("test", "eval", 4, 0, 1)))
    assert eval_pass["batch_mask"].sum() == 5  # one view each
    with pytest.raises(ValueError, match="splits.*'validation'"):
        data.process_batches("validation", "eval", 4, 0, 1)


def test_the_classes_are_learnable_a_nearest_class_mean_tells_them_apart():
    config = small_config("vggsound", train_examples=400, test_examples=100)
    config.dataset.num_classes = 4
    data = random_input.RandomData(config)
    train = next(data.process_batches("train", "train", 400, 0, 1))
    test = next(data.process_batches("test", "eval", 100, 0, 1))
    for modality in ("rgb", "spectrogram"):
        x = train[modality].reshape(400, -1)
        means = np.stack([x[train["label"][:, c] == 1].mean(axis=0) for c in range(4)])
        queries = test[modality].reshape(100, -1)
        nearest = np.argmin(((queries[:, None] - means[None]) ** 2).sum(-1), axis=1)
        accuracy = (nearest == test["label"].argmax(axis=1)).mean()
        assert accuracy > 0.9, (modality, accuracy)


def test_a_config_without_the_shapes_or_classes_is_an_error_naming_the_key():
    config = small_config("audioset")
    config.model.modalities = ("rgb", "flow")
    with pytest.raises(ValueError, match="random_input.*'flow'"):
        random_input.RandomData(config)
    config = small_config("audioset", train_examples=0)
    with pytest.raises(ValueError, match="random_input.train_examples=0"):
        random_input.RandomData(config)


@pytest.mark.parametrize("shape", [(3, 4, 5, 2), (7, 3, 1), (5,)])
def test_sum_of_rank1_equals_the_outer_products_summed(shape):
    rng = np.random.default_rng(0)
    terms = [[rng.standard_normal((6, d)).astype(np.float32) for d in shape] for _ in range(3)]
    letters = "abcd"[: len(shape)]
    spec = ",".join(f"n{a}" for a in letters) + f"->n{letters}"
    expected = sum(np.einsum(spec, *term) for term in terms)
    got = random_input.sum_of_rank1(terms, shape)
    assert got.shape == (6,) + shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
