"""SFT latent mixup: the plan (λ per example and modality, partners, layer), where each
placement mixes, and the train step's targets from what the model sows."""

import flax.linen as nn
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
from mbt.models import sft_mixup


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


def test_latent_mixup_targets_mix_with_the_mean_lambda_and_the_partners():
    targets = jnp.eye(3, dtype=jnp.float32)
    # Scalar λs (one per modality) without partners: the partner is the previous example.
    mixed = step_lib.latent_mixup_targets(
        targets, {"latent_mixup_lambda": ({"rgb": 0.2, "spectrogram": 0.6},)}
    )
    np.testing.assert_allclose(mixed, 0.4 * targets + 0.6 * jnp.roll(targets, 1, axis=0))
    # Per-example λs and partners: row b = λ̄_b·y_b + (1 − λ̄_b)·y_partner(b).
    intermediates = {
        "latent_mixup_lambda": ({"rgb": jnp.asarray([1.0, 0.2, 0.5]), "spectrogram": 0.5},),
        "latent_mixup_partner": (jnp.asarray([2, 0, 2]),),
    }
    mixed = step_lib.latent_mixup_targets(targets, intermediates)
    np.testing.assert_allclose(mixed, [[0.75, 0, 0.25], [0.65, 0.35, 0], [0, 0, 1]], rtol=1e-6)
    with pytest.raises(ValueError, match="latent_mixup_lambda"):
        step_lib.latent_mixup_targets(targets, {})


def test_plan_draws_a_lambda_per_example_and_modality_and_a_permutation():
    settings = sft_mixup.MixupSettings(alpha=0.3)  # the authors': any, per_sample, permutation
    plan = sft_mixup.draw_plan(jax.random.PRNGKey(0), settings, ("rgb", "flow"), 64, 1, 11)
    assert 0 <= int(plan.point) < 12
    assert sorted(np.asarray(plan.partner).tolist()) == list(range(64))
    rgb, flow = np.asarray(plan.lambdas["rgb"]), np.asarray(plan.lambdas["flow"])
    assert rgb.shape == flow.shape == (64,) and ((rgb >= 0) & (rgb <= 1)).all()
    assert len(set(rgb.tolist())) > 32 and not np.allclose(rgb, flow)
    # Beta(0.3, 0.3) is U-shaped: most draws near 0 or 1.
    assert np.mean((rgb < 0.2) | (rgb > 0.8)) > 0.5
    keys = jax.random.split(jax.random.PRNGKey(5), 40)
    points = jax.vmap(lambda k: sft_mixup.draw_plan(k, settings, ("rgb",), 4, 1, 11).point)(keys)
    assert set(np.asarray(points).tolist()) <= set(range(12))
    assert len(set(np.asarray(points).tolist())) > 6
    fused = sft_mixup.MixupSettings(alpha=0.3, placement="fused", layer=5)
    assert int(sft_mixup.draw_plan(jax.random.PRNGKey(0), fused, ("rgb",), 4, 1, 11).point) == 5
    earlier = sft_mixup.MixupSettings(alpha=0.3, lambdas="per_batch", partner="roll")
    plan = sft_mixup.draw_plan(jax.random.PRNGKey(1), earlier, ("rgb",), 4, 1, 11, active=False)
    np.testing.assert_array_equal(plan.partner, [3, 0, 1, 2])
    np.testing.assert_array_equal(plan.lambdas["rgb"], np.ones(4))
    h = jnp.arange(8.0).reshape(4, 2)
    np.testing.assert_allclose(
        sft_mixup.mix(h, jnp.asarray([1.0, 0.5, 0.0, 0.25]), jnp.asarray([1, 0, 3, 2])),
        [[0, 1], [1, 2], [6, 7], [4.5, 5.5]],
    )


def _recorded(model, params, inputs, names, rng):
    calls = {}

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and context.module.name in names:
            calls[context.module.name] = (args, out)
        return out

    with nn.intercept_methods(record):
        _, state = model.apply(
            {"params": params},
            inputs,
            train=True,
            rngs={"dropout": rng},
            mutable=["intermediates"],
        )
    return calls, state["intermediates"]


@pytest.mark.parametrize("placement", ["within", "fused", "cross"])
def test_each_placement_mixes_where_the_authors_do(placement):
    """within: after the pre-fusion block, each modality with its own λ; fused: after the
    joint block, the joint sequence with the first modality's λ; cross: nothing."""
    config = _tiny_sft_config(alpha=0.3)
    config.update(
        sparse_block="attention",
        n_layers_post_fusion=2,
        latent_mixup=placement,
        latent_mixup_lambdas="per_sample",
        latent_mixup_partner="permutation",
        latent_mixup_layer=1 if placement == "fused" else 0,  # fused: after joint block 0
    )
    model = models.build_model(config, num_classes=4)
    batch = next(train_fixtures.InMemoryData().batches("train", "train", 4, seed=0))
    inputs = {m: jnp.asarray(batch[m]) for m in ("rgb", "spectrogram")}
    params = model.init(jax.random.PRNGKey(0), inputs, train=False)["params"]
    names = {
        "encoderblock_0",
        "encoderblock_0_spectrogram",
        "sparse_pool",
        "sparse_pool_spectrogram",
        "fused_encoderblock_0",
        "fused_encoderblock_1",
    }
    calls, sown = _recorded(model, params, inputs, names, jax.random.PRNGKey(4))
    lambdas = {m: np.asarray(v) for m, v in sown["latent_mixup_lambda"][0].items()}
    partner = np.asarray(sown["latent_mixup_partner"][0])
    assert (partner != np.arange(4)).any() and lambdas["rgb"].shape == (4,)

    def mixed(h, lam):
        h = np.asarray(h)
        return lam[:, None, None] * h + (1 - lam[:, None, None]) * h[partner]

    for block, m in (("encoderblock_0", "rgb"), ("encoderblock_0_spectrogram", "spectrogram")):
        out = np.asarray(calls[block][1])
        sparse_in = np.asarray(calls["sparse_pool" + block[len("encoderblock_0") :]][0][0])
        expected = mixed(out, lambdas[m]) if placement == "within" else out
        np.testing.assert_allclose(sparse_in, expected, rtol=1e-5, atol=1e-6)
    joint_out = np.asarray(calls["fused_encoderblock_0"][1])
    joint_next = np.asarray(calls["fused_encoderblock_1"][0][0])
    expected = mixed(joint_out, lambdas["rgb"]) if placement == "fused" else joint_out
    np.testing.assert_allclose(joint_next, expected, rtol=1e-5, atol=1e-6)


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
    lam = float(np.mean([float(v[0]) for v in lambdas.values()]))  # per batch: λ repeated
    assert 0.01 < lam < 0.99
    weights = batch["batch_mask"]
    mixed = lam * batch["label"] + (1 - lam) * jnp.roll(batch["label"], 1, axis=0)
    expected = losses.classification_loss(logits, mixed, weights, multi_label=False)
    unmixed = losses.classification_loss(logits, batch["label"], weights, multi_label=False)
    assert float(metrics["loss"]) == pytest.approx(float(expected), rel=1e-5)
    assert float(metrics["loss"]) != pytest.approx(float(unmixed), rel=1e-3)
