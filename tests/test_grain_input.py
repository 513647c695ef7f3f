"""The grain loader (mbt.data.grain_input) on the toy dataset built as ArrayRecord and TFRecord.

Its stream is one global sequence: the batches of 1 process are the rows of 2 processes put
together, a resumed stream starts at its next record and reads nothing before it, eval and
test cut the same views as the tf.data path and cover every example once.
"""

import sys

import numpy as np
import pytest
import toy_dataset_fixtures

from mbt.data import grain_input
from mbt.data import pipeline


@pytest.fixture(scope="module")
def toy_formats(tmp_path_factory):
    """{'array_record': config, 'tfrecord': config} of the toy dataset built both ways."""
    root = tmp_path_factory.mktemp("grain_input")
    configs = {}
    with pytest.MonkeyPatch.context() as monkeypatch:
        toy_dataset_fixtures.install_toy_module(root / "src", monkeypatch)
        for file_format in ("array_record", "tfrecord"):
            config = toy_dataset_fixtures.toy_config()
            config.dataset.file_format = file_format
            pipeline.prepare_dataset(config, str(root / file_format))
            config.dataset.synthetic.num_clips = 0
            configs[file_format] = config
        yield configs
    sys.modules.pop(toy_dataset_fixtures.MODULE, None)


def _batches(config, mode, batch_size, count=None, **kwargs):
    it = pipeline.make_dataset(config, None, mode, batch_size, **kwargs)
    return list(it) if count is None else [next(it) for _ in range(count)]


@pytest.mark.parametrize("size", [12, 2**16 + 3])  # a stored permutation; index_shuffle
def test_each_epoch_is_a_permutation_and_epochs_differ(size):
    def order(epoch, seed=3, count=size):
        return [grain_input.example_at(epoch * size + i, size, seed)[1] for i in range(count)]

    assert sorted(order(0)) == list(range(size))
    assert order(0, count=12) != order(1, count=12) != order(2, count=12)
    assert order(0, seed=4, count=12) != order(0, count=12)
    assert grain_input.example_at(2 * size + 1, size, seed=3) == (2, order(2, count=2)[1])


def test_default_grain_threads_is_one_per_four_cores_from_one_to_four():
    from mbt.data import settings

    got = {cores: settings.default_grain_threads(cores) for cores in (1, 2, 4, 7, 8, 12, 16, 96)}
    assert got == {1: 1, 2: 1, 4: 1, 7: 1, 8: 2, 12: 3, 16: 4, 96: 4}
    here = settings.default_grain_threads()
    assert settings.default_dataset_config().grain_threads == here
    assert 1 <= here <= 4


def test_the_processes_rows_tile_each_global_batch():
    for count, rows in ((1, 8), (2, 4), (4, 2)):
        got = sorted(
            grain_input.global_row(k, rows, p, count) for p in range(count) for k in range(2 * rows)
        )
        assert got == list(range(16))


def test_one_process_batch_is_two_processes_rows_together(toy_formats):
    config = toy_formats["array_record"]
    whole = _batches(config, "train", 8, 3, seed=5, process_index=0, process_count=1)
    halves = [
        _batches(config, "train", 4, 3, seed=5, process_index=p, process_count=2) for p in (0, 1)
    ]
    for b in range(3):
        for key, value in whole[b].items():
            np.testing.assert_array_equal(
                value, np.concatenate([halves[0][b][key], halves[1][b][key]]), err_msg=key
            )
    # 12 train examples: the first 12 positions are one epoch, each example once
    epoch = np.concatenate([whole[0]["video_index"], whole[1]["video_index"][:4]])
    assert sorted(epoch.tolist()) == list(range(12))


def test_a_resumed_stream_reads_only_from_its_next_record(toy_formats, monkeypatch):
    config = toy_formats["array_record"].copy_and_resolve_references()
    config.dataset.grain_threads = 0  # no prefetching: every read is one the test asked for
    fresh = _batches(config, "train", 4, 5, seed=1, process_index=0, process_count=1)
    reads = []
    original = grain_input._Views.batch

    def counting(self, indices, epochs):
        reads.extend(zip(indices, epochs))
        return original(self, indices, epochs)

    monkeypatch.setattr(grain_input._Views, "batch", counting)
    it = pipeline.make_dataset(
        config, None, "train", 4, seed=1, start_batch=4, process_index=0, process_count=1
    )
    resumed = next(it)
    for key, value in fresh[4].items():
        np.testing.assert_array_equal(resumed[key], value, err_msg=key)
    # positions 16..19 only, all in the second epoch (12 examples per epoch)
    assert [index for index, _ in reads] == fresh[4]["video_index"].tolist()
    assert {epoch for _, epoch in reads} == {1}


@pytest.mark.parametrize("modalities", [("rgb", "spectrogram"), ("rgb",), ("spectrogram",)])
def test_eval_views_equal_the_tf_data_path(toy_formats, modalities):
    # grain cuts the frames out of the serialized record (clips.FrameSpans); tf.data parses
    # them all first. Without rgb, grain locates no frames at all.
    configs = {}
    for file_format in ("array_record", "tfrecord"):
        configs[file_format] = toy_formats[file_format].copy_and_resolve_references()
        configs[file_format].dataset.modalities = modalities
    grain_batches = _batches(configs["array_record"], "eval", 2, process_count=1)
    tf_batches = _batches(configs["tfrecord"], "eval", 2, process_count=1)
    assert len(grain_batches) == len(tf_batches) == 2
    for got, want in zip(grain_batches, tf_batches):
        assert got.keys() == want.keys()
        assert set(modalities) <= set(got)
        for key in want:
            np.testing.assert_allclose(got[key], want[key], atol=1e-6, err_msg=key)


def test_the_trainer_builds_an_eval_pass_once_and_reads_it_again(toy_formats, monkeypatch):
    from mbt import train

    made = []
    make_batches = grain_input.make_batches

    def counted(values, source, split, mode, *args, **kwargs):
        made.append(mode)
        return make_batches(values, source, split, mode, *args, **kwargs)

    monkeypatch.setattr(grain_input, "make_batches", counted)
    data = train.PipelineData(toy_formats["array_record"])
    first, again = (list(data.batches("test", "eval", 2, seed=0)) for _ in range(2))
    assert made == ["eval"] and len(first) == 2
    for got, want in zip(again, first):
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    next(data.batches("train", "train", 2, seed=0)), next(data.batches("train", "train", 2, seed=0))
    assert made == ["eval", "train", "train"]  # training streams are not kept


def test_test_mode_covers_every_view_once_over_the_processes(toy_formats):
    config = toy_formats["array_record"]  # 4 test examples x 2 views, 2 processes x 3 rows
    per_process = [_batches(config, "test", 3, process_index=p, process_count=2) for p in (0, 1)]
    assert len(per_process[0]) == len(per_process[1]) == 2  # ceil(8 / 6)
    assert pipeline.num_batches(config, None, "test", 3, process_count=2) == 2
    rows = [
        (int(i), float(m))
        for batches in per_process
        for batch in batches
        for i, m in zip(batch["video_index"], batch["batch_mask"])
    ]
    real = sorted(i for i, m in rows if m == 1.0)
    assert real == [0, 0, 1, 1, 2, 2, 3, 3]
    assert sorted(i for i, m in rows if m == 0.0) == [-1] * 4


def test_loader_and_file_format_errors(toy_formats):
    config = toy_formats["tfrecord"]
    config.dataset.loader = "grain"
    try:
        with pytest.raises(ValueError, match="file_format='array_record'"):
            pipeline.make_dataset(config, None, "train", 4, process_index=0, process_count=1)
        config.dataset.loader = "threads"
        with pytest.raises(ValueError, match=r"config.dataset.loader='threads'.*allowed"):
            pipeline.make_dataset(config, None, "train", 4, process_index=0, process_count=1)
    finally:
        config.dataset.loader = "auto"
    bad = toy_formats["array_record"].copy_and_resolve_references()
    bad.dataset.file_format = "parquet"
    bad.dataset.data_dir = str(bad.dataset.data_dir) + "_other"
    bad.dataset.synthetic.num_clips = 16
    with pytest.raises(ValueError, match=r"file_format='parquet'.*allowed"):
        pipeline.prepare_dataset(bad, bad.dataset.data_dir)


def test_worker_processes_give_the_same_batches(toy_formats):
    config = toy_formats["array_record"].copy_and_resolve_references()
    in_process = _batches(config, "train", 4, 3, seed=2, process_index=0, process_count=1)
    config.dataset.grain_workers = 2
    with_workers = _batches(config, "train", 4, 3, seed=2, process_index=0, process_count=1)
    for want, got in zip(in_process, with_workers):
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
