"""A training run SIGKILLed mid-way and resumed ends exactly where an uninterrupted run ends.

The interrupted run is a real `mbt.train.train_and_evaluate` in a child process: the tiny MBT
and in-memory data of `train_fixtures`, with dropout, stochastic depth, modality mixup, label
smoothing and AdamW on, checkpointing every 4 steps. The child sees the same
`XLA_FLAGS` as this process (8 simulated CPU devices, set by conftest.py), so both runs use
the same (8, 1) mesh; it prints the mesh and the test checks it.

A watcher thread SIGKILLs the child as soon as a checkpoint of step >= `_KILL_AFTER` is
committed on disk, while the child keeps training (it sleeps `_PACE_S` per step to leave a
window, and blocks at step `_GATE_STEP` < `_NUM_STEPS` so that it can never finish first).
Just before the kill, the watcher tries to take the workdir lock as a second trainer would, and
must be refused (the child holds it); the kernel drops the lock with the killed child.
The run is then resumed in this process in the same workdir and its final `TrainState`
(step, params, optimiser state, RNG key) and test loss are compared with those of an
uninterrupted run of the same config, also in this process: it compiles while the child
does, and the resumed run reuses its compiled steps (`train.get_setup` caches them).
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import jax
import numpy as np
import pytest
import train_fixtures

from mbt import checkpointing
from mbt import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))

_NUM_STEPS = 24
_EVERY = 4
_KILL_AFTER = 8  # kill once a checkpoint of at least this step is committed
_GATE_STEP = 16  # the child waits here (before saving step 16) until it is killed
_PACE_S = 0.05  # the child's sleep per step: the kill lands mid-training
_START_TIMEOUT_S = 300  # child start + compile + first checkpoints, on a busy 2-core CI

_OVERRIDES = {
    "num_train_steps": _NUM_STEPS,
    "checkpoint.every_steps": _EVERY,
    "checkpoint.keep": 2,
    "log_every_steps": 4,
    "eval_every_steps": 0,
    "final_eval": False,
    "export": False,
    "mixup.alpha": 0.5,
    "mixup.mixmod": True,
    "label_smoothing": 0.1,
    "model.dropout_rate": 0.1,
    "model.stochastic_droplayer_rate": 0.1,
    "optimizer.name": "adamw",
    "optimizer.weight_decay": 1e-4,
    "lr.base_lr": 3e-3,
    "lr.warmup_steps": 4,
}

# argv: tests dir, workdir, JSON overrides, pace (s), gate step. TensorFlow is blocked only
# to save its import (~5 s): the trainer then logs to the console instead of TensorBoard.
_CHILD = textwrap.dedent("""
    import json, os, sys, time
    # As if not installed: `import` fails, importlib.util.find_spec returns None.
    sys.modules['tensorflow'] = sys.modules['tensorflow_datasets'] = None
    sys.path.insert(0, sys.argv[1])
    import train_fixtures
    from mbt import train

    workdir, overrides = sys.argv[2], json.loads(sys.argv[3])
    pace_s, gate_step = float(sys.argv[4]), int(sys.argv[5])
    config = train_fixtures.tiny_config(**overrides)
    data = train_fixtures.InMemoryData()
    print('mesh', json.dumps(dict(train.get_setup(config, data).mesh.shape)), flush=True)
    parent = os.getppid()

    def on_step(step):
        print('step', step, flush=True)
        time.sleep(pace_s)
        if step == gate_step:  # never finish: wait to be killed (or for the test to go away)
            print('gate', step, flush=True)
            deadline = time.monotonic() + 600
            while os.getppid() == parent and time.monotonic() < deadline:
                time.sleep(0.1)
            sys.exit(3)

    train.train_and_evaluate(config, workdir, data, on_step=on_step)
    print('finished', flush=True)
""")


def _config():
    return train_fixtures.tiny_config(**_OVERRIDES)


def _committed_steps(workdir):
    """Steps of the committed checkpoints (orbax renames `<step>.orbax-checkpoint-tmp-*`)."""
    try:
        names = os.listdir(os.path.join(workdir, "checkpoints"))
    except FileNotFoundError:
        return []
    return sorted(int(name) for name in names if name.isdigit())


class _KillAfterCheckpoint(threading.Thread):
    """SIGKILLs `child` once a checkpoint of step >= `min_step` is committed in `workdir`."""

    def __init__(self, child, workdir, min_step, timeout_s):
        super().__init__(daemon=True)
        self.child, self.workdir = child, workdir
        self.min_step, self.timeout_s = min_step, timeout_s
        self.outcome = None  # 'killed' | 'exited' | 'timeout'
        self.steps_at_kill = None
        self.lock_error = None  # the WorkdirLockedError of a lock attempt just before the kill

    def run(self):
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self.child.poll() is not None:
                self.outcome = "exited"
                return
            steps = _committed_steps(self.workdir)
            if steps and steps[-1] >= self.min_step:
                try:  # a second trainer, while the child trains
                    checkpointing.WorkdirLock(self.workdir).acquire().release()
                except checkpointing.WorkdirLockedError as error:
                    self.lock_error = str(error)
                self.child.send_signal(signal.SIGKILL)
                self.steps_at_kill = steps
                self.outcome = "killed"
                return
            time.sleep(0.005)
        self.outcome = "timeout"


def _tail(path, chars=3000):
    with open(path, errors="replace") as f:
        return f.read()[-chars:]


def _assert_trees_equal(name, actual, expected, atol=1e-6):
    flat_a, tree_a = jax.tree_util.tree_flatten_with_path(jax.device_get(actual))
    flat_e, tree_e = jax.tree_util.tree_flatten_with_path(jax.device_get(expected))
    assert tree_a == tree_e, f"{name}: tree structures differ"
    for (path, a), (_, e) in zip(flat_a, flat_e):
        np.testing.assert_allclose(
            np.asarray(a),
            np.asarray(e),
            rtol=0,
            atol=atol,
            err_msg=f"{name}{jax.tree_util.keystr(path)}",
        )


def test_a_sigkilled_training_run_resumes_to_the_uninterrupted_parameters(tmp_path):
    assert _GATE_STEP < _NUM_STEPS and _KILL_AFTER < _GATE_STEP
    killed_dir = str(tmp_path / "killed")
    out_path, err_path = tmp_path / "child.stdout", tmp_path / "child.stderr"
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=os.environ.get("XLA_FLAGS", ""))
    with open(out_path, "w") as out, open(err_path, "w") as err:
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _CHILD,
                TESTS,
                killed_dir,
                json.dumps(_OVERRIDES),
                str(_PACE_S),
                str(_GATE_STEP),
            ],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=err,
        )
    watcher = _KillAfterCheckpoint(child, killed_dir, _KILL_AFTER, _START_TIMEOUT_S)
    try:
        watcher.start()
        # The uninterrupted reference, compiled and run here while the child trains.
        reference = train.train_and_evaluate(
            _config(), str(tmp_path / "reference"), train_fixtures.InMemoryData()
        )
        watcher.join(_START_TIMEOUT_S + 10)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=60)
    assert reference["step"] == _NUM_STEPS and not reference["stopped_early"]

    stdout = _tail(out_path, 10**6)
    lines = stdout.split()
    assert watcher.outcome == "killed", (
        f"the child training run was not killed mid-training ({watcher.outcome}; committed "
        f"checkpoints {_committed_steps(killed_dir)}, exit code {child.returncode}); its "
        f"stdout:\n{_tail(out_path)}\nstderr:\n{_tail(err_path)}"
    )
    assert child.returncode == -signal.SIGKILL, (child.returncode, _tail(err_path))
    # The training child held the workdir lock; the kernel dropped it with the child, so
    # the resume below needs no manual step.
    assert watcher.lock_error is not None and f"pid {child.pid}, since " in watcher.lock_error
    assert "finished" not in lines
    printed_steps = [int(s) for k, s in zip(lines, lines[1:]) if k == "step"]
    assert _KILL_AFTER <= max(printed_steps) <= _GATE_STEP < _NUM_STEPS, printed_steps
    child_mesh = [
        json.loads(line[len("mesh ") :]) for line in stdout.splitlines() if line.startswith("mesh ")
    ]
    assert len(child_mesh) == 1, stdout[-3000:]

    committed = _committed_steps(killed_dir)
    latest = committed[-1]
    assert _KILL_AFTER <= latest < _NUM_STEPS and latest % _EVERY == 0, committed

    data = train_fixtures.InMemoryData()
    resumed = train.train_and_evaluate(_config(), killed_dir, data)
    setup = train.get_setup(_config(), data)
    assert child_mesh[0] == dict(setup.mesh.shape) == {"data": 8, "model": 1}
    # It restored the latest committed checkpoint and read the input from there on.
    assert data.start_batches == [latest], (data.start_batches, committed)
    assert resumed["step"] == _NUM_STEPS and not resumed["stopped_early"]
    assert _committed_steps(killed_dir)[-1] == _NUM_STEPS

    final, expected = resumed["final_state"], reference["final_state"]
    assert int(final.step) == int(expected.step) == _NUM_STEPS
    _assert_trees_equal("params", final.params, expected.params)
    _assert_trees_equal("opt_state", final.opt_state, expected.opt_state)
    np.testing.assert_array_equal(jax.device_get(final.rng), jax.device_get(expected.rng))
    assert resumed["test"]["loss"] == pytest.approx(reference["test"]["loss"], rel=1e-5)
