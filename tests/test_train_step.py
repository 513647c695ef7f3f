"""The pure train step on a tiny linear model: gradient accumulation, clipping of the averaged
gradient, reported metrics; and the optimiser / schedule construction."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mbt import losses
from mbt import optim
from mbt import train_step as step_lib

NUM_CLASSES = 3


class _Linear(nn.Module):
    """logits = Dense(flatten(spectrogram)); the model contract without a transformer."""

    @nn.compact
    def __call__(self, inputs, *, train):
        del train
        x = inputs["spectrogram"]
        return nn.Dense(NUM_CLASSES, kernel_init=nn.initializers.normal(1.0))(
            x.reshape(x.shape[0], -1)
        )


def _batch(size=8, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "spectrogram": rng.normal(size=(size, 4, 2, 1)).astype(np.float32),
        "label": np.eye(NUM_CLASSES, dtype=np.float32)[rng.integers(0, NUM_CLASSES, size)],
        "batch_mask": np.ones(size, np.float32),
    }


def _state(optimizer):
    return step_lib.init_state(
        _Linear(), optimizer, {"spectrogram": (4, 2, 1)}, seed=0, modalities=("spectrogram",)
    )


def _run(cfg, optimizer, schedule, batch, steps=1):
    step = jax.jit(step_lib.make_train_step(_Linear(), optimizer, schedule, cfg))
    state = _state(optimizer)
    for _ in range(steps):
        state, metrics = step(state, batch, {})
    return state, metrics


def _cfg(accum):
    return step_lib.StepConfig(
        modalities=("spectrogram",), multi_label=False, grad_accum_steps=accum
    )


def _grads(params, batch):
    def loss_fn(p):
        logits = _Linear().apply({"params": p}, batch, train=True)
        return losses.classification_loss(logits, batch["label"], multi_label=False)

    return jax.grad(loss_fn)(params)


def test_accumulating_micro_batches_gives_the_full_batch_update():
    lr = 0.1
    optimizer = optax.sgd(lr)
    batch = _batch()
    single, m1 = _run(_cfg(1), optimizer, optax.constant_schedule(lr), batch, steps=2)
    accumulated, m2 = _run(_cfg(4), optimizer, optax.constant_schedule(lr), batch, steps=2)
    for a, b in zip(
        jax.tree_util.tree_leaves(single.params), jax.tree_util.tree_leaves(accumulated.params)
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-5)
    np.testing.assert_allclose(m1["grad_norm"], m2["grad_norm"], rtol=1e-5)


def test_clipping_applies_to_the_averaged_gradient():
    lr, clip = 1.0, 0.05
    opt_config = ml_collections.ConfigDict(dict(name="sgd", momentum=None, grad_clip_norm=clip))
    optimizer = optim.make_optimizer(opt_config, optax.constant_schedule(lr))
    batch = _batch()
    state, metrics = _run(_cfg(2), optimizer, optax.constant_schedule(lr), batch)
    params0 = _state(optimizer).params
    # Micro-batch i holds rows i, i + 2, ... (see train_step._split_micro_batches).
    micro = [{k: v[i::2] for k, v in batch.items()} for i in range(2)]
    g1, g2 = (_grads(params0, m) for m in micro)
    mean = jax.tree_util.tree_map(lambda a, b: (a + b) / 2, g1, g2)
    mean_norm = float(optax.tree.norm(mean))
    assert mean_norm > clip  # the clip is active
    np.testing.assert_allclose(metrics["grad_norm"], mean_norm, rtol=1e-5)
    expected = jax.tree_util.tree_map(lambda p, g: p - lr * g * clip / mean_norm, params0, mean)
    for got, want in zip(
        jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(expected)
    ):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)

    # Clipping each micro-batch first would give a different update.
    def clipped(g):
        return jax.tree_util.tree_map(lambda x: x * min(1.0, clip / float(optax.tree.norm(g))), g)

    per_micro = jax.tree_util.tree_map(
        lambda p, a, b: p - lr * (a + b) / 2, params0, clipped(g1), clipped(g2)
    )
    assert not all(
        np.allclose(a, b, rtol=1e-3)
        for a, b in zip(
            jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(per_micro)
        )
    )


def test_metrics_report_the_scheduled_learning_rate_and_the_step():
    schedule = optax.linear_schedule(0.0, 1.0, 10)
    state, metrics = _run(_cfg(1), optax.sgd(schedule), schedule, _batch(), steps=3)
    assert int(state.step) == 3
    np.testing.assert_allclose(metrics["learning_rate"], 0.2, rtol=1e-6)  # used at step 2
    assert np.isfinite(metrics["param_norm"])


def _lr_config(**kwargs):
    config = dict(
        schedule="warmup_cosine", base_lr=0.5, warmup_steps=None, warmup_epochs=2.5, end_lr=0.0
    )
    config.update(kwargs)
    return ml_collections.ConfigDict(config)


def test_warmup_cosine_schedule_in_epochs_and_constant_schedule():
    schedule = optim.make_lr_schedule(_lr_config(), total_steps=1000, steps_per_epoch=20.0)
    # 2.5 epochs x 20 steps = 50 warmup steps, then cosine from 0.5 to 0 at step 1000.
    assert float(schedule(0)) == 0.0
    np.testing.assert_allclose(schedule(25), 0.25, rtol=1e-6)
    np.testing.assert_allclose(schedule(50), 0.5, rtol=1e-6)
    np.testing.assert_allclose(schedule(525), 0.25, rtol=1e-4)
    np.testing.assert_allclose(schedule(1000), 0.0, atol=1e-7)
    constant = optim.make_lr_schedule(_lr_config(schedule="constant", warmup_steps=0), 100)
    assert float(constant(0)) == float(constant(99)) == 0.5
    with pytest.raises(ValueError, match="config.lr.schedule"):
        optim.make_lr_schedule(_lr_config(schedule="step"), 100)


def test_weight_decay_spares_biases_and_adamw_builds():
    params = {"Dense_0": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}}
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    for name in ("sgd", "adamw"):
        opt_config = ml_collections.ConfigDict(
            dict(name=name, momentum=0.9, weight_decay=0.1, grad_clip_norm=None)
        )
        optimizer = optim.make_optimizer(opt_config, optax.constant_schedule(1.0))
        updates, _ = optimizer.update(zeros, optimizer.init(params), params)
        assert float(jnp.abs(updates["Dense_0"]["kernel"]).sum()) > 0, name
        assert float(jnp.abs(updates["Dense_0"]["bias"]).sum()) == 0, name
    with pytest.raises(ValueError, match="config.optimizer.name"):
        optim.make_optimizer(
            ml_collections.ConfigDict(dict(name="lamb")), optax.constant_schedule(1.0)
        )
