"""The train loop on a tiny MBT and in-memory data (8 simulated CPU devices, one compile set).

Every test uses the same config, so `mbt.train.get_setup` compiles the init / train / eval
steps once for the module.
"""

import json
import logging
import math
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
import train_fixtures

from mbt import train

NUM_STEPS = 8


def _config():
    return train_fixtures.tiny_config(
        **{
            "num_train_steps": NUM_STEPS,
            "mixup.alpha": 0.5,
            "mixup.mixmod": True,
            "label_smoothing": 0.1,
            "checkpoint.every_steps": 4,
            "checkpoint.keep": 2,
            "eval_every_steps": 4,
            "log_every_steps": 2,
        }
    )


def _params_close(a, b, atol=1e-6):
    flat_a, tree_a = jax.tree_util.tree_flatten(a)
    flat_b, tree_b = jax.tree_util.tree_flatten(b)
    assert tree_a == tree_b
    return all(
        np.allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0) for x, y in zip(flat_a, flat_b)
    )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    data = train_fixtures.InMemoryData()
    result = train.train_and_evaluate(_config(), workdir, data)
    return workdir, data, result


def test_loss_decreases_on_a_fixed_batch():
    data = train_fixtures.InMemoryData()
    setup = train.get_setup(_config(), data)
    state = setup.init()
    batch = next(data.batches("train", "train", 16, seed=0))
    no_mixing = {"rgb": np.float32(1.0), "spectrogram": np.float32(1.0)}
    device_batch = setup.device_batch(batch, train._TRAIN_KEYS)
    losses = []
    for _ in range(6):
        state, metrics = setup.train_step(state, device_batch, no_mixing)
        losses.append(float(metrics["loss"]))
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.7 * losses[0], losses
    assert int(state.step) == 6


def test_training_evaluates_tests_and_writes_results(uninterrupted):
    workdir, data, result = uninterrupted
    assert result["step"] == NUM_STEPS and not result["stopped_early"]
    assert int(result["final_state"].step) == NUM_STEPS
    with open(os.path.join(workdir, "results_test.json")) as f:
        saved = json.load(f)
    assert saved["split"] == "test" and saved["step"] == NUM_STEPS
    # 10 test videos x 2 views, padded to batches of 8: padding must not count.
    assert saved["metrics"]["num_examples"] == 10 and saved["metrics"]["num_views"] == 20
    assert saved["metrics"]["top1"] == pytest.approx(result["test"]["top1"])
    assert os.path.exists(os.path.join(workdir, "results_validation.json"))
    # The class patterns are easy: the tiny model must beat chance (1/4) clearly.
    assert result["test"]["top1"] >= 0.6
    # Checkpoints every 4 steps, keep the last 2; TensorBoard events in the workdir.
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", "8"]
    events = [name for name in os.listdir(workdir) if name.startswith("events.out.tfevents")]
    assert events
    from tensorboard.backend.event_processing import event_accumulator

    accumulator = event_accumulator.EventAccumulator(workdir)
    accumulator.Reload()
    tags = set(accumulator.Tags()["tensors"]) | set(accumulator.Tags()["scalars"])
    assert {
        "train/loss",
        "train/learning_rate",
        "train/grad_norm",
        "eval/top1",
        "test/top1",
    } <= tags, tags
    assert "_hparams_/session_start_info" in tags  # TensorBoard's HParams tab
    logged_steps = [event.step for event in accumulator.Tensors("train/loss")]
    assert logged_steps == [2, 4, 6, 8]
    assert [event.step for event in accumulator.Tensors("eval/top1")] == [4, 8]


def test_results_carry_per_class_accuracy_and_a_ranked_table(uninterrupted):
    workdir, data, result = uninterrupted
    with open(os.path.join(workdir, "results_test.json")) as f:
        saved = json.load(f)
    per_class = saved["per_class"]
    assert [e["index"] for e in per_class] == [0, 1, 2, 3]
    assert [e["name"] for e in per_class] == list(data.meta.class_names)
    assert all(set(e) == {"index", "name", "ap", "top1", "count"} for e in per_class)
    # Counts are the test videos of each class; their weighted top-1 is the split's top-1.
    expected_counts = np.bincount(data._labels["test"], minlength=4)
    assert [e["count"] for e in per_class] == expected_counts.tolist()
    scored = [e for e in per_class if e["count"]]
    assert all(0.0 <= e["top1"] <= 1.0 and 0.0 <= e["ap"] <= 1.0 for e in scored)
    weighted = sum(e["top1"] * e["count"] for e in scored) / sum(e["count"] for e in scored)
    assert weighted == pytest.approx(saved["metrics"]["top1"])
    assert np.mean([e["ap"] for e in scored]) == pytest.approx(saved["metrics"]["map"])
    assert all(e["top1"] is None and e["ap"] is None for e in per_class if not e["count"])

    with open(os.path.join(workdir, "per_class.md")) as f:
        table = f.read()
    assert "split `test`, all test views" in table
    rows = [line for line in table.splitlines() if line.startswith("| ") and "rank" not in line]
    assert len(rows) == 4
    ranked = sorted(scored, key=lambda e: (-e["top1"], e["name"]))
    assert [row.split(" | ")[1] for row in rows[: len(ranked)]] == [e["name"] for e in ranked]
    # The final single-view eval of the validation split has its own table.
    assert os.path.exists(os.path.join(workdir, "per_class_validation.md"))
    with open(os.path.join(workdir, "results_validation.json")) as f:
        assert len(json.load(f)["per_class"]) == 4


def test_head_names_come_from_the_dataset_spec():
    config = _config()
    assert train._head_names(config, None) == ()
    config.dataset.name = "epic_kitchens"
    assert train._head_names(config, (3, 4)) == ("verb", "noun")
    config.dataset.name = "vggsound"
    assert train._head_names(config, (3, 4)) == ("head_0", "head_1")


def test_evaluate_mode_restores_the_checkpoint_and_reproduces_the_test(
    uninterrupted, caplog, monkeypatch
):
    workdir, data, result = uninterrupted
    monkeypatch.setattr(train, "EVAL_PROGRESS_SECS", 0.0)  # a progress line after every batch
    with caplog.at_level(logging.INFO, logger="mbt.train"):
        again = train.evaluate(_config(), workdir, "test", data)
    # The pass reports how far it is (10 test videos, 2 views each, batches of 8) and its end.
    progress = [
        r.getMessage()
        for r in caplog.records
        if r.getMessage().startswith(("test test:", "test test done:"))
    ]
    assert progress[:3] == [
        f"test test: {views} views, {videos} of 10 videos, 0 s"
        for views, videos in ((8, 4), (16, 8), (20, 10))
    ], progress
    assert progress[-1].startswith("test test done: 20 views of 10 videos in ")
    assert again["top1"] == pytest.approx(result["test"]["top1"])
    assert again["loss"] == pytest.approx(result["test"]["loss"], rel=1e-5)


def test_evaluate_mode_tests_a_scenic_checkpoint_or_workdir_when_the_workdir_has_none(
    uninterrupted, tmp_path
):
    from test_scenic_checkpoint import write_scenic_checkpoint

    from mbt import pretrained

    _, data, result = uninterrupted
    params = jax.device_get(result["final_state"].params)
    checkpoint = write_scenic_checkpoint(tmp_path / "scenic", params, 500, "params")
    config = _config()
    config.init_from = pretrained.default_init_from_config()
    config.init_from.checkpoint_path = str(checkpoint)
    empty_workdir = str(tmp_path / "eval_only")
    with pytest.raises(FileNotFoundError, match="restore_output_projection=True"):
        train.evaluate(config, empty_workdir, "test", data)
    config.init_from.restore_output_projection = True
    again = train.evaluate(config, empty_workdir, "test", data)
    assert again["top1"] == pytest.approx(result["test"]["top1"])
    assert again["loss"] == pytest.approx(result["test"]["loss"], rel=1e-5)
    with open(os.path.join(empty_workdir, "results_test.json")) as f:
        assert json.load(f)["step"] == 0
    assert os.path.exists(os.path.join(empty_workdir, "init_report.txt"))
    # A trained mbt workdir (orbax checkpoints) evaluates the same way from another workdir.
    config.init_from.checkpoint_path = uninterrupted[0]
    from_workdir = train.evaluate(config, str(tmp_path / "eval_from_workdir"), "test", data)
    assert from_workdir["top1"] == pytest.approx(result["test"]["top1"])
    assert from_workdir["loss"] == pytest.approx(result["test"]["loss"], rel=1e-5)


def test_sigterm_saves_and_a_resumed_run_matches_the_uninterrupted_one(uninterrupted, tmp_path):
    _, _, reference = uninterrupted
    workdir = str(tmp_path)
    data = train_fixtures.InMemoryData()

    def send_sigterm(step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    first = train.train_and_evaluate(_config(), workdir, data, on_step=send_sigterm)
    assert first["stopped_early"] and first["step"] == 3
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3"]
    assert not os.path.exists(os.path.join(workdir, "results_test.json"))

    resumed = train.train_and_evaluate(_config(), workdir, data)
    # The resumed run asked the input for batch 3 onwards (the input position was saved).
    assert data.start_batches == [0, 3]
    assert resumed["step"] == NUM_STEPS
    assert _params_close(resumed["final_state"].params, reference["final_state"].params)
    assert resumed["test"]["loss"] == pytest.approx(reference["test"]["loss"], rel=1e-5)


class _NaNAfter(train_fixtures.InMemoryData):
    """Train batch `bad_batch` (0-based) carries a NaN."""

    def __init__(self, bad_batch):
        super().__init__()
        self.bad_batch = bad_batch

    def _train(self, labels, batch_size, seed, start_batch):
        for index, batch in enumerate(
            super()._train(labels, batch_size, seed, start_batch), start=start_batch
        ):
            if index == self.bad_batch:
                batch["spectrogram"][0, 0, 0, 0] = np.nan
            yield batch


def test_non_finite_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path):
    workdir = str(tmp_path)
    with pytest.raises(train.NonFiniteLossError, match="step 6.*last good checkpoint is step 4"):
        train.train_and_evaluate(_config(), workdir, _NaNAfter(bad_batch=5))
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4"]


_NO_TF_SCRIPT = """
import importlib.abc, sys

class BlockTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] in ('tensorflow', 'tensorflow_datasets'):
            raise ModuleNotFoundError(f'No module named {name!r} (blocked by the test)')
        return None

sys.meta_path.insert(0, BlockTensorFlow())
from mbt import checkpointing, config_validation, main, summaries, train, train_step
writer = summaries.make_writer(sys.argv[1], True)
assert type(writer).__name__ == 'ConsoleWriter', writer
summaries.ProgressReporter(10, writer)(1)
assert not [m for m in sys.modules if m.startswith('tensorflow')]
print('ok')
"""


def test_trainer_imports_and_logs_without_tensorflow(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", _NO_TF_SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


def test_init_from_a_vit_checkpoint_loads_the_weights_with_the_state_shardings(tmp_path):
    # The tiny ViT of the pretrained-weights tests matches the tiny MBT here (width 16,
    # 2 heads, MLP 32, 8x8 patches).
    from test_vit_init import make_vit
    from test_vit_init import write_vit_npz

    vit = make_vit(layers=2)
    config = _config()
    config.init_from = {
        "checkpoint_path": write_vit_npz(tmp_path / "vit.npz", vit),
        "checkpoint_format": "auto",
        "inflation": "central_frame",
        "temporal_posemb": "tile",
        "restore_output_projection": False,
        "input_shapes": None,
        "seed": 0,
    }
    data = train_fixtures.InMemoryData()
    setup = train.get_setup(config, data)
    assert setup is train.get_setup(_config(), data)  # init_from needs no new compile
    state = train.initial_state(setup, config, str(tmp_path))
    dense = "Transformer/encoderblock_1_spectrogram/MlpBlock_0/Dense_0/kernel"
    node = state.params
    for part in dense.split("/"):
        node = node[part]
    np.testing.assert_array_equal(node, vit["Transformer/encoderblock_1/MlpBlock_0/Dense_0/kernel"])
    assert (
        node.sharding
        == setup.state_shardings.params["Transformer"]["encoderblock_1_spectrogram"]["MlpBlock_0"][
            "Dense_0"
        ]["kernel"]
    )
    with open(tmp_path / "init_report.txt") as f:
        assert "loaded" in f.read()
