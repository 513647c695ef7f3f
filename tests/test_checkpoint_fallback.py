"""Damaged checkpoints: a restart falls back to the newest intact one and sets the others aside.

Real orbax checkpoints, written by the Checkpointer (steps 2, 4, 6 of a small sharded
`TrainState`) and by a tiny training run, are damaged the ways a crash, a full disk or a
careless `rm` leaves them: a data file cut short, a data file deleted, the `state/` item
deleted, the `meta/metadata` file deleted.
"""

import glob
import json
import logging
import os
import shutil

import jax
import pytest
import train_fixtures
from jax.sharding import PartitionSpec as P
from test_checkpointing import _state

from mbt import checkpointing
from mbt import sharding
from mbt import train

# pytest replaces sys.unraisablehook during each test, so the "Event loop is closed" / closed
# coroutine reports of orbax's failed reads, which mbt.checkpointing's hook drops, surface
# here as warnings.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _data_files(step_dir):
    return sorted(glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True))


def _cut(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


DAMAGES = {
    # Every data file, cut to half: which arrays a file holds, and where, varies between
    # writes, so cutting one file could leave every array the restore reads intact.
    "data file cut": lambda step_dir: [_cut(path) for path in _data_files(step_dir)],
    # Likewise every data file: deleting the largest one alone once left checkpoint 6
    # restorable (a flaky failure: step 6 restored where 4 was expected).
    "data file deleted": lambda step_dir: [os.remove(path) for path in _data_files(step_dir)],
    "state deleted": lambda step_dir: shutil.rmtree(os.path.join(step_dir, "state")),
    "meta/metadata deleted": lambda step_dir: os.remove(os.path.join(step_dir, "meta", "metadata")),
}


@pytest.fixture(scope="module")
def mesh():
    return sharding.make_mesh((8, 1))


def _target(mesh):
    example = _state(0, mesh, P("data"))
    shardings = jax.tree_util.tree_map(lambda x: x.sharding, example)
    return jax.eval_shape(lambda: example), shardings


def _write(workdir, mesh, steps=(2, 4, 6)):
    ckpt = checkpointing.Checkpointer(workdir, every_steps=2, keep=3)
    for step in steps:
        ckpt.save(step, _state(step, mesh, P("data")), {"train_batches_consumed": step * 3})
    ckpt.close()
    return os.path.join(workdir, "checkpoints")


def _results_step(workdir):
    with open(os.path.join(workdir, "results_test.json"), encoding="utf-8") as f:
        return json.load(f)["step"]


def _warnings(caplog):
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "mbt.checkpointing" and r.levelno == logging.WARNING
    ]


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_newest_checkpoint_falls_back_and_is_set_aside_when_training(
    tmp_path, mesh, caplog, damage
):
    workdir = str(tmp_path)
    directory = _write(workdir, mesh)
    DAMAGES[damage](os.path.join(directory, "6"))
    abstract, shardings = _target(mesh)
    caplog.set_level(logging.WARNING, logger="mbt.checkpointing")

    # Evaluation: the newest intact checkpoint, nothing moved.
    ckpt = checkpointing.Checkpointer(workdir, every_steps=2, keep=3)
    try:
        state, meta = ckpt.restore(abstract, shardings)
        assert int(state.step) == 4 and meta["train_batches_consumed"] == 12
        (warning,) = _warnings(caplog)
        assert warning.startswith(f"Checkpoint 6 ({directory}/6) cannot be restored")
        assert "\n" not in warning
        assert ckpt.all_steps() == [2, 4, 6]
        assert not os.path.exists(os.path.join(workdir, checkpointing.DAMAGED_DIR))
        # An explicitly requested step gets no fallback.
        with pytest.raises(checkpointing.CheckpointRestoreError, match="checkpoint 6 in "):
            ckpt.restore(abstract, shardings, step=6)
    finally:
        ckpt.close()

    # Training: the same, and step 6 moves aside so the run can save step 6 again.
    caplog.clear()
    ckpt = checkpointing.Checkpointer(workdir, every_steps=2, keep=3)
    try:
        state, _ = ckpt.restore(abstract, shardings, set_aside_damaged=True)
        assert int(state.step) == 4
        moved = os.path.join(workdir, checkpointing.DAMAGED_DIR, "6")
        assert os.path.isdir(moved) and not os.path.exists(os.path.join(directory, "6"))
        assert any(f"Moved damaged checkpoint 6 to {moved}" in w for w in _warnings(caplog))
        assert ckpt.all_steps() == [2, 4]
        assert ckpt.save(6, _state(66, mesh, P("data")), {"train_batches_consumed": 99})
        ckpt.wait()
    finally:
        ckpt.close()
    ckpt = checkpointing.Checkpointer(workdir, every_steps=2, keep=3)
    try:
        state, meta = ckpt.restore(abstract, shardings)
        assert int(state.step) == 66 and meta == {"train_batches_consumed": 99, "step": 6}
    finally:
        ckpt.close()


def test_when_every_checkpoint_is_damaged_one_error_lists_each_and_nothing_moves(tmp_path, mesh):
    workdir = str(tmp_path)
    directory = _write(workdir, mesh, steps=(2, 4))
    shutil.rmtree(os.path.join(directory, "4", "state"))
    os.remove(os.path.join(directory, "2", "meta", "metadata"))
    abstract, shardings = _target(mesh)
    ckpt = checkpointing.Checkpointer(workdir, every_steps=2)
    try:
        with pytest.raises(checkpointing.CheckpointRestoreError) as error:
            ckpt.restore(abstract, shardings, set_aside_damaged=True)
    finally:
        ckpt.close()
    lines = str(error.value).splitlines()
    assert lines[0] == f"no checkpoint in {directory} can be restored:"
    assert lines[1].startswith("  step 4: KeyError: ") and "state" in lines[1]
    assert lines[2].startswith("  step 2: FileNotFoundError: ") and "metadata" in lines[2]
    assert "Nothing was moved or deleted" in lines[3] and "new --workdir" in lines[3]
    assert sorted(os.listdir(directory)) == ["2", "4"]
    assert not os.path.exists(os.path.join(workdir, checkpointing.DAMAGED_DIR))


def test_a_step_set_aside_twice_keeps_both_copies(tmp_path, mesh):
    workdir = str(tmp_path)
    abstract, shardings = _target(mesh)
    for _ in range(2):
        directory = _write(workdir, mesh, steps=(2, 4))
        DAMAGES["state deleted"](os.path.join(directory, "4"))
        ckpt = checkpointing.Checkpointer(workdir, every_steps=2)
        try:
            state, _ = ckpt.restore(abstract, shardings, set_aside_damaged=True)
            assert int(state.step) == 2
        finally:
            ckpt.close()
    assert sorted(os.listdir(os.path.join(workdir, checkpointing.DAMAGED_DIR))) == ["4", "4.1"]


def test_training_resumes_past_a_damaged_checkpoint_and_evaluation_falls_back(tmp_path, caplog):
    """A tiny run saves steps 4 and 8; step 8's data file is cut. `--mode=test` (run while a
    training run holds the workdir lock: evaluation does not take it) evaluates step 4 and
    moves nothing; training then resumes from step 4, moves step 8 aside and saves it anew."""
    workdir = str(tmp_path / "run")
    config = train_fixtures.tiny_config(final_eval=False, export=False)
    assert config.num_train_steps == 8 and config.checkpoint.every_steps == 4
    train.train_and_evaluate(config, workdir, train_fixtures.InMemoryData())
    directory = os.path.join(workdir, "checkpoints")
    DAMAGES["data file cut"](os.path.join(directory, "8"))

    caplog.set_level(logging.WARNING, logger="mbt.checkpointing")
    with checkpointing.WorkdirLock(workdir):
        train.evaluate(config, workdir, "test", train_fixtures.InMemoryData())
    assert _results_step(workdir) == 4
    assert sorted(os.listdir(directory)) == ["4", "8"]
    assert any(w.startswith("Checkpoint 8 (") for w in _warnings(caplog))

    data = train_fixtures.InMemoryData()
    result = train.train_and_evaluate(config, workdir, data)
    assert data.start_batches == [4]  # resumed from step 4's input position
    assert result["step"] == 8 and not result["stopped_early"]
    assert sorted(os.listdir(directory)) == ["4", "8"]
    assert os.listdir(os.path.join(workdir, checkpointing.DAMAGED_DIR)) == ["8"]
    assert _results_step(workdir) == 8


def test_the_same_error_for_every_step_points_at_the_config(tmp_path, mesh):
    workdir = str(tmp_path)
    directory = _write(workdir, mesh, steps=(2, 4))
    other = {"w": jax.numpy.zeros((3,))}  # not the tree the checkpoints hold
    ckpt = checkpointing.Checkpointer(workdir, every_steps=2)
    try:
        with pytest.raises(checkpointing.CheckpointRestoreError) as error:
            ckpt.restore(
                jax.eval_shape(lambda: other), {"w": other["w"].sharding}, set_aside_damaged=True
            )
    finally:
        ckpt.close()
    assert "Every step failed the same way" in str(error.value)
    assert os.path.join(workdir, "config.json") in str(error.value)
    assert sorted(os.listdir(directory)) == ["2", "4"]
