"""SFT latent mixup: the plan (λ per example and modality, partners, layer), where each
placement mixes, and the train step's targets from what the model sows."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import train_fixtures
from test_sft import recorded_calls

from mbt import losses
from mbt import models
from mbt import train_step as step_lib
from mbt.models import sft
from mbt.models import sft_mixup


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
    modalities = ("rgb", "flow")

    def draw(settings, seed, active=True):  # one batch size and modality set: one compile
        key = jax.random.PRNGKey(seed)
        return sft_mixup.draw_plan(key, settings, modalities, 64, 1, 11, active)

    settings = sft_mixup.MixupSettings(alpha=0.3)  # the authors': any, per_sample, permutation
    plan = draw(settings, 0)
    assert sorted(np.asarray(plan.partner).tolist()) == list(range(64))
    rgb, flow = np.asarray(plan.lambdas["rgb"]), np.asarray(plan.lambdas["flow"])
    assert rgb.shape == flow.shape == (64,) and ((rgb >= 0) & (rgb <= 1)).all()
    assert len(set(rgb.tolist())) > 32 and not np.allclose(rgb, flow)
    # Beta(0.3, 0.3) is U-shaped: most draws near 0 or 1.
    assert np.mean((rgb < 0.2) | (rgb > 0.8)) > 0.5
    points = {int(draw(settings, s).point) for s in range(20)}
    assert points <= set(range(12)) and len(points) > 5  # layers 0 … 11, drawn per step
    fused = sft_mixup.MixupSettings(alpha=0.3, placement="fused", layer=5)
    assert int(draw(fused, 0).point) == 5
    np.testing.assert_array_equal(draw(settings, 0, active=False).lambdas["flow"], np.ones(64))
    earlier = sft_mixup.MixupSettings(alpha=0.3, lambdas="per_batch", partner="roll")
    plan = draw(earlier, 1)
    np.testing.assert_array_equal(plan.partner, (np.arange(64) - 1) % 64)
    assert len(set(np.asarray(plan.lambdas["rgb"]).tolist())) == 1
    h = jnp.arange(8.0).reshape(4, 2)
    np.testing.assert_allclose(
        sft_mixup.mix(h, jnp.asarray([1.0, 0.5, 0.0, 0.25]), jnp.asarray([1, 0, 3, 2])),
        [[0, 1], [1, 2], [6, 7], [4.5, 5.5]],
    )


@functools.lru_cache(maxsize=1)
def _inputs_and_params():
    config = _tiny_sft_config(alpha=0.0)
    config.update(sparse_block="attention", n_layers_post_fusion=2)
    model = models.build_model(config, num_classes=4)
    batch = next(train_fixtures.InMemoryData().batches("train", "train", 4, seed=0))
    inputs = {m: jnp.asarray(batch[m]) for m in ("rgb", "spectrogram")}
    params = jax.jit(lambda: model.init(jax.random.PRNGKey(0), inputs, train=False))()["params"]
    return inputs, params


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
    inputs, params = _inputs_and_params()  # mixup has no parameters: one tree for all
    names = {
        "encoderblock_0",
        "encoderblock_0_spectrogram",
        "sparse_pool",
        "sparse_pool_spectrogram",
        "fused_encoderblock_0",
        "fused_encoderblock_1",
    }
    (_, state), calls = recorded_calls(
        model,
        params,
        inputs,
        names,
        train=True,
        rngs={"dropout": jax.random.PRNGKey(4)},
        mutable=["intermediates"],
    )
    sown = state["intermediates"]
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


def test_train_step_of_the_authors_variant_mixes_from_the_start_step_and_learns():
    """The trainer's jitted step on the authors' SFT at tiny size (attention-only sparse
    block, max pooling with rgb to one token, latent mixup 'any' with a λ per example and
    modality and a permutation partner, from step 1 on; AdamW with clipping at 0.8): its loss
    is the loss on the targets the model's sown λs and partners give."""
    config = _tiny_sft_config(alpha=0.3)
    sft.use_authors_model(config, {"num_mel_bins": 16, "hop_ms": 10.0})
    config.update(n_layers_post_fusion=1, latent_mixup_after_epochs=1.0)
    config.pool_sizes = {"rgb": 0, "spectrogram": 2}  # 8 rgb tokens → 1; 8 → 4
    family = models.get_family("sft")
    assert family.latent_mixup(config)
    start = family.latent_mixup_start_step(config, steps_per_epoch=1.0)
    assert start == 1
    model = models.build_model(config, num_classes=4)
    batch = next(train_fixtures.InMemoryData().batches("train", "train", 8, seed=0))
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    inputs = {m: batch[m] for m in ("rgb", "spectrogram")}
    params = jax.jit(lambda: model.init(jax.random.PRNGKey(0), inputs, train=False))()["params"]
    # The head starts at zero (uniform logits, the same loss for any target): randomise it.
    kernel = params["output_projection"]["kernel"]
    params["output_projection"]["kernel"] = jax.random.normal(jax.random.PRNGKey(3), kernel.shape)
    optimizer = optax.chain(optax.clip_by_global_norm(0.8), optax.adamw(3e-3, weight_decay=0.0))
    state = step_lib.TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        rng=jax.random.PRNGKey(1),
    )
    cfg = step_lib.StepConfig(
        modalities=("rgb", "spectrogram"),
        multi_label=False,
        latent_mixup=True,
        latent_mixup_start_step=start,
    )
    step = jax.jit(step_lib.make_train_step(model, optimizer, optax.constant_schedule(3e-3), cfg))

    @jax.jit
    def expected_loss(params, step_index, active):
        logits, variables = model.apply(
            {"params": params},
            inputs,
            train=True,
            latent_mixup_active=active,
            rngs={"dropout": jax.random.fold_in(state.rng, step_index)},
            mutable=["intermediates"],
        )
        sown = variables["intermediates"]
        targets = step_lib.latent_mixup_targets(batch["label"], sown)
        loss = losses.classification_loss(logits, targets, batch["batch_mask"], multi_label=False)
        plain = losses.classification_loss(
            logits, batch["label"], batch["batch_mask"], multi_label=False
        )
        return loss, plain, sown

    # Step 0 (before the start): λ = 1, the loss on the plain labels.
    loss, plain, _ = expected_loss(state.params, 0, False)
    state, metrics = step(state, batch, None)
    assert float(metrics["loss"]) == pytest.approx(float(plain), rel=1e-5)
    assert float(loss) == pytest.approx(float(plain), rel=1e-6)
    # Step 1: mixed, with per-example λs and a permutation of the batch.
    loss, plain, sown = expected_loss(state.params, 1, True)
    state, metrics = step(state, batch, None)
    assert float(metrics["loss"]) == pytest.approx(float(loss), rel=1e-5)
    assert float(metrics["loss"]) != pytest.approx(float(plain), rel=1e-3)
    lam = np.asarray(sown["latent_mixup_lambda"][0]["rgb"])
    assert lam.shape == (8,) and len(set(lam.tolist())) == 8
    assert sorted(np.asarray(sown["latent_mixup_partner"][0]).tolist()) == list(range(8))
    losses_after = [float(metrics["loss"])]
    for _ in range(12):
        state, metrics = step(state, batch, None)
        losses_after.append(float(metrics["loss"]))
    assert np.isfinite(losses_after).all()
    assert np.mean(losses_after[-3:]) < 0.7 * np.mean(losses_after[:3])
