"""Orbax checkpoints: keep-last-K, metadata, resharding on restore, SIGTERM flag, SIGKILL."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mbt import checkpointing
from mbt import sharding
from mbt import train_step as step_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _state(value, mesh, spec):
    put = lambda x: jax.device_put(x, NamedSharding(mesh, spec))  # noqa: E731
    replicated = NamedSharding(mesh, P())
    return step_lib.TrainState(
        step=jax.device_put(jnp.int32(value), replicated),
        params={
            "dense": {
                "kernel": put(jnp.full((8, 4), float(value))),
                "bias": jax.device_put(jnp.arange(4.0) + value, replicated),
            }
        },
        opt_state=({"trace": {"dense": {"kernel": put(jnp.full((8, 4), -float(value)))}}},),
        rng=jax.device_put(jax.random.PRNGKey(value), replicated),
    )


def test_keeps_the_last_k_and_restores_state_and_input_position(tmp_path):
    mesh = sharding.make_mesh((8, 1))
    ckpt = checkpointing.Checkpointer(str(tmp_path), every_steps=2, keep=2)
    try:
        assert ckpt.restore(_state(0, mesh, P("data")), None) is None
        assert [s for s in range(1, 7) if ckpt.should_save(s)] == [2, 4, 6]
        for step in (2, 4, 6):
            ckpt.save(step, _state(step, mesh, P("data")), {"train_batches_consumed": step * 3})
        ckpt.wait()
        assert ckpt.all_steps() == [4, 6] and ckpt.latest_step() == 6
        abstract = jax.eval_shape(lambda: _state(0, mesh, P("data")))
        shardings = jax.tree_util.tree_map(lambda x: x.sharding, _state(0, mesh, P("data")))
        state, meta = ckpt.restore(abstract, shardings)
        assert meta == {"train_batches_consumed": 18, "step": 6}
        assert int(state.step) == 6
        np.testing.assert_array_equal(state.params["dense"]["kernel"], np.full((8, 4), 6.0))
        np.testing.assert_array_equal(
            state.opt_state[0]["trace"]["dense"]["kernel"], np.full((8, 4), -6.0)
        )
        np.testing.assert_array_equal(state.rng, jax.random.PRNGKey(6))
        older, _ = ckpt.restore(abstract, shardings, step=4)
        assert int(older.step) == 4
    finally:
        ckpt.close()


def test_restores_onto_a_different_mesh_and_sharding(tmp_path):
    saved = _state(3, sharding.make_mesh((8, 1)), P("data"))
    ckpt = checkpointing.Checkpointer(str(tmp_path), every_steps=1)
    try:
        ckpt.save(3, saved, {})
        ckpt.wait()
        other = sharding.make_mesh((4, 2))
        target = _state(0, other, P(None, "model"))
        shardings = jax.tree_util.tree_map(lambda x: x.sharding, target)
        state, _ = ckpt.restore(jax.eval_shape(lambda: target), shardings)
        kernel = state.params["dense"]["kernel"]
        assert kernel.sharding.spec == P(None, "model")
        assert kernel.sharding.mesh.shape == other.shape
        np.testing.assert_array_equal(kernel, np.full((8, 4), 3.0))
    finally:
        ckpt.close()


def test_sigterm_sets_the_preemption_flag_and_the_handler_is_restored(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    ckpt = checkpointing.Checkpointer(str(tmp_path), every_steps=1)
    ckpt.install_sigterm_handler()
    assert not ckpt.preemption_requested
    os.kill(os.getpid(), signal.SIGTERM)
    deadline = time.monotonic() + 5
    while not ckpt.preemption_requested and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ckpt.preemption_requested
    ckpt.close()
    assert signal.getsignal(signal.SIGTERM) == before


_WRITER = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp
    from mbt import checkpointing
    ckpt = checkpointing.Checkpointer(sys.argv[1], every_steps=1, keep=3)
    step = 0
    while True:
        step += 1
        big = {'w': jnp.full((1024, 1024, 4), float(step))}  # 16 MB per checkpoint
        ckpt.save(step, big, {'train_batches_consumed': step})
        if step % 2 == 0:
            ckpt.wait()
            print('committed', step, flush=True)
""")


def test_a_sigkilled_writer_leaves_a_complete_latest_checkpoint(tmp_path):
    workdir = str(tmp_path)
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    child = subprocess.Popen(
        [sys.executable, "-c", _WRITER, workdir],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        committed = 0
        deadline = time.monotonic() + 120
        while committed < 4 and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            if line.startswith("committed"):
                committed = int(line.split()[1])
        assert committed >= 4, "the writer did not commit checkpoints in time"
        time.sleep(0.05)  # most likely in the middle of the next async write
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    ckpt = checkpointing.Checkpointer(workdir, every_steps=1)
    try:
        latest = ckpt.latest_step()
        assert latest is not None and latest >= committed
        abstract = {"w": jax.ShapeDtypeStruct((1024, 1024, 4), jnp.float32)}
        device = jax.devices()[0]
        shardings = {"w": jax.sharding.SingleDeviceSharding(device)}
        restored, meta = ckpt.restore(abstract, shardings)
        assert meta["train_batches_consumed"] == latest
        np.testing.assert_array_equal(
            restored["w"][::256, ::256], np.full((4, 4, 4), float(latest))
        )
    finally:
        ckpt.close()
