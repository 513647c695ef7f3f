"""The train step mixes the targets with the lambda an SFT model sows for latent mixup."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import train_fixtures

from mbt import losses
from mbt import models
from mbt import train_step as step_lib
from mbt.models import sft


def _tiny_sft(alpha):
    return models.build_model(_tiny_sft_config(alpha), num_classes=4)


def _tiny_sft_config(alpha):
    config = sft.default_config()
    config.variant = None
    config.hidden_size, config.num_heads, config.mlp_dim = 16, 2, 32
    config.tokenizers.rgb.patches = (2, 8, 8)  # 8 tokens
    config.tokenizers.spectrogram.patches = (8, 8)  # 8 tokens
    config.n_layers_pre_fusion, config.n_layers_post_fusion = 1, 1
    config.pool_sizes = {"rgb": 2, "spectrogram": 2}
    config.latent_mixup_alpha = alpha
    return config


def test_latent_mixup_targets_mix_with_the_mean_lambda():
    targets = jnp.eye(3, dtype=jnp.float32)
    mixed = step_lib.latent_mixup_targets(
        targets, {"latent_mixup_lambda": ({"rgb": 0.2, "spectrogram": 0.6},)}
    )
    np.testing.assert_allclose(mixed, 0.4 * targets + 0.6 * jnp.roll(targets, 1, axis=0))
    with pytest.raises(ValueError, match="latent_mixup_lambda"):
        step_lib.latent_mixup_targets(targets, {})


def test_train_step_loss_uses_the_latent_mixup_targets():
    model = _tiny_sft(alpha=1.0)
    modalities = ("rgb", "spectrogram")
    optimizer = optax.sgd(0.1)
    shapes = {"rgb": train_fixtures.RGB_SHAPE, "spectrogram": train_fixtures.SPEC_SHAPE}
    state = step_lib.init_state(model, optimizer, shapes, seed=0, modalities=modalities)
    # The head starts at zero (uniform logits, the same loss for any target): randomise it.
    head = dict(state.params["output_projection"])
    head["kernel"] = jax.random.normal(jax.random.PRNGKey(3), head["kernel"].shape)
    state = state.replace(params={**state.params, "output_projection": head})
    batch = next(train_fixtures.InMemoryData().batches("train", "train", 8, seed=0))
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    config = _tiny_sft_config(alpha=1.0)
    assert models.get_family("sft").latent_mixup(config)
    cfg = step_lib.StepConfig(modalities=modalities, multi_label=False, latent_mixup=True)
    step = jax.jit(step_lib.make_train_step(model, optimizer, optax.constant_schedule(0.1), cfg))
    _, metrics = step(state, batch, None)

    rng = jax.random.fold_in(state.rng, state.step)
    logits, variables = model.apply(
        {"params": state.params},
        {m: batch[m] for m in modalities},
        train=True,
        rngs={"dropout": rng},
        mutable=["intermediates"],
    )
    lambdas = variables["intermediates"]["latent_mixup_lambda"][0]
    lam = float(np.mean([float(v) for v in lambdas.values()]))
    assert 0.01 < lam < 0.99
    weights = batch["batch_mask"]
    mixed = lam * batch["label"] + (1 - lam) * jnp.roll(batch["label"], 1, axis=0)
    expected = losses.classification_loss(logits, mixed, weights, multi_label=False)
    unmixed = losses.classification_loss(logits, batch["label"], weights, multi_label=False)
    assert float(metrics["loss"]) == pytest.approx(float(expected), rel=1e-5)
    assert float(metrics["loss"]) != pytest.approx(float(unmixed), rel=1e-3)
