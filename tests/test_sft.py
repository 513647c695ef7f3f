"""Tests of the Sparse Fusion Transformer: parameter tree, pooling, CLS fusion, latent mixup,
the authors' variant (pool and mixup functions alone: tests/test_sft_pooling.py,
tests/test_latent_mixup.py)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import train_fixtures
from flax.traverse_util import flatten_dict

from mbt import models
from mbt import sharding
from mbt import train
from mbt.models import sft
from mbt.models import sft_attention

D, HEADS, MLP, CLASSES = 16, 2, 32, 5
RGB_SHAPE = (2, 4, 16, 16, 3)  # tubelets (2, 8, 8) → 2×2×2 = 8 tokens
SPEC_SHAPE = (2, 48, 16, 1)  # patches (8, 8) → 6×2 = 12 tokens
POOL = {"rgb": 2, "spectrogram": 5}  # 8 → 4 tokens; 12 → 2 tokens (2 dropped by VALID pooling)


def tiny_config(**overrides):
    config = sft.default_config()
    config.variant = None
    config.update(
        hidden_size=D, num_heads=HEADS, mlp_dim=MLP, n_layers_pre_fusion=1, n_layers_post_fusion=2
    )
    config.tokenizers.rgb.patches = (2, 8, 8)
    config.tokenizers.spectrogram.patches = (8, 8)
    config.pool_sizes.update(POOL)
    config.update(overrides)
    return config


def make_inputs(seed=0, batch=2):
    rng = np.random.default_rng(seed)
    return {
        "rgb": jnp.asarray(rng.normal(size=(batch,) + RGB_SHAPE[1:]), jnp.float32),
        "spectrogram": jnp.asarray(rng.normal(size=(batch,) + SPEC_SHAPE[1:]), jnp.float32),
    }


def init(config, inputs, seed=0):
    model = models.build_model(config, CLASSES)
    # Jitted: eager initialisation of these models takes several times longer.
    key = jax.random.PRNGKey(seed)
    params = jax.jit(lambda: model.init({"params": key}, inputs, train=False))()["params"]
    # Zero-initialised head: give it weights so logits depend on the features.
    kernel = params["output_projection"]["kernel"]
    params["output_projection"]["kernel"] = jax.random.normal(jax.random.PRNGKey(7), kernel.shape)
    return model, params


def recorded_calls(model, params, inputs, names, **apply_kwargs):
    """Runs the model (jitted: op by op, each operation would be a program held in memory)
    and returns `{module name: (call args, output)}` for the named modules."""

    def run(params, inputs):
        calls = {}

        def record(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if context.method_name == "__call__" and context.module.name in names:
                calls[context.module.name] = (args, out)
            return out

        with nn.intercept_methods(record):
            logits = model.apply({"params": params}, inputs, **apply_kwargs)
        return logits, calls

    return jax.jit(run)(params, inputs)


def block_paths(prefix):
    attention = [
        f"{prefix}/MultiHeadDotProductAttention_0/{n}/{p}"
        for n in ("query", "key", "value", "out")
        for p in ("kernel", "bias")
    ]
    return (
        {f"{prefix}/LayerNorm_{i}/{p}" for i in (0, 1) for p in ("scale", "bias")}
        | {f"{prefix}/MlpBlock_0/Dense_{i}/{p}" for i in (0, 1) for p in ("kernel", "bias")}
        | set(attention)
    )


def test_parameter_tree_and_logits_shape():
    config = tiny_config(representation_size=8)
    model, params = init(config, make_inputs())
    shapes = {"/".join(k): v.shape for k, v in flatten_dict(params).items()}
    expected = {
        "embedding/kernel",
        "embedding/bias",
        "embedding_spectrogram/kernel",
        "embedding_spectrogram/bias",
        "cls",
        "clsspectrogram",
        "Transformer/posembed_input/pos_embedding",
        "Transformer/posembed_input_spectrogram/pos_embedding",
        "Transformer/encoder_norm/scale",
        "Transformer/encoder_norm/bias",
        "pre_logits/kernel",
        "pre_logits/bias",
        "output_projection/kernel",
        "output_projection/bias",
    }
    for prefix in (
        "encoderblock_0",
        "encoderblock_0_spectrogram",
        "sparse_pool",
        "sparse_pool_spectrogram",
        "fused_encoderblock_0",
        "fused_encoderblock_1",
    ):
        expected |= block_paths(f"Transformer/{prefix}")
    assert set(shapes) == expected
    assert shapes["cls"] == shapes["clsspectrogram"] == (1, 1, D)
    assert shapes["Transformer/posembed_input/pos_embedding"] == (1, 1 + 8, D)
    assert shapes["Transformer/posembed_input_spectrogram/pos_embedding"] == (1, 1 + 12, D)
    assert shapes["output_projection/kernel"] == (8, CLASSES)
    logits = model.apply({"params": params}, make_inputs(1), train=False)
    assert logits.shape == (2, CLASSES) and logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(logits)).all()


def _param_paths(config):
    model = models.build_model(config, CLASSES)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), make_inputs(), train=False))
    return {"/".join(k) for k in flatten_dict(shapes["params"])}


def test_authors_sparse_block_holds_attention_only():
    authors, earlier = (
        _param_paths(tiny_config(sparse_block="attention")),
        _param_paths(tiny_config()),
    )
    for name in ("sparse_pool", "sparse_pool_spectrogram"):
        assert {p for p in authors if p.startswith(f"Transformer/{name}/")} == {
            f"Transformer/{name}/MultiHeadDotProductAttention_0/{n}/{p}"
            for n in ("query", "key", "value", "out")
            for p in ("kernel", "bias")
        }
    # Everything else is the earlier variant's tree: those checkpoints' other blocks still fit.
    assert authors < earlier
    assert all("/sparse_pool" in p for p in earlier - authors)


def test_fused_cls_is_sum_of_modality_cls_and_joint_tokens_are_max_pooled():
    config = tiny_config()
    inputs = make_inputs()
    model, params = init(config, inputs)
    names = {"sparse_pool", "sparse_pool_spectrogram", "fused_encoderblock_0"}
    (_, state), calls = recorded_calls(
        model, params, inputs, names, train=False, mutable=["intermediates"]
    )
    rgb_out = calls["sparse_pool"][1]
    spec_out = calls["sparse_pool_spectrogram"][1]
    joint_in = calls["fused_encoderblock_0"][0][0]
    assert joint_in.shape == (2, 1 + 8 // 2 + 12 // 5, D)
    expected_cls = rgb_out[:, 0] + spec_out[:, 0]
    np.testing.assert_allclose(joint_in[:, 0], expected_cls, atol=1e-6)
    sown = state["intermediates"]["Transformer"]
    np.testing.assert_allclose(sown["fused_cls"][0], expected_cls, atol=1e-6)
    np.testing.assert_allclose(sown["cls_at_fusion"][0]["spectrogram"], spec_out[:, 0])
    # Pooled tokens follow the fused CLS in modality order: block maxima of each sequence.
    rgb_max = np.asarray(rgb_out[:, 1:]).reshape(2, 4, 2, D).max(axis=2)
    spec_max = np.asarray(spec_out[:, 1:11]).reshape(2, 2, 5, D).max(axis=2)
    np.testing.assert_allclose(joint_in[:, 1:5], rgb_max)
    np.testing.assert_allclose(joint_in[:, 5:], spec_max)


def _reference_cls_attention(block_params, x_BxLxD):
    """CLS→token attention, head-averaged, written out with raw einsums (independent check)."""
    ln = block_params["LayerNorm_0"]
    mean = x_BxLxD.mean(-1, keepdims=True)
    var = ((x_BxLxD - mean) ** 2).mean(-1, keepdims=True)
    normed = (x_BxLxD - mean) / np.sqrt(var + 1e-6) * ln["scale"] + ln["bias"]
    att = block_params["MultiHeadDotProductAttention_0"]
    q = np.einsum("bd,dnh->bnh", normed[:, 0], att["query"]["kernel"]) + att["query"]["bias"]
    k = np.einsum("bld,dnh->blnh", normed, att["key"]["kernel"]) + att["key"]["bias"]
    logits = np.einsum("bnh,blnh->bnl", q, k) / np.sqrt(q.shape[-1])
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return weights.mean(axis=1)[:, 1:]


def test_cls_topk_pooling_keeps_tokens_the_cls_attends_to_most():
    config = tiny_config(pool_type="cls_topk", n_layers_post_fusion=1)
    inputs = make_inputs(3)
    model, params = init(config, inputs)
    names = {"sparse_pool", "sparse_pool_spectrogram", "fused_encoderblock_0"}
    _, calls = recorded_calls(model, params, inputs, names, train=False)
    joint_in = np.asarray(calls["fused_encoderblock_0"][0][0])
    assert joint_in.shape == (2, 1 + 4 + 2, D)  # k = tokens // pool size
    offset = 1
    for name, m, k in (("sparse_pool", "rgb", 4), ("sparse_pool_spectrogram", "spectrogram", 2)):
        block_in = np.asarray(calls[name][0][0])
        block_out = np.asarray(calls[name][1])
        block_params = jax.tree.map(np.asarray, params["Transformer"][name])
        scores = _reference_cls_attention(block_params, block_in)
        weights = sft_attention.encoder_block_attention_weights(
            params["Transformer"][name], jnp.asarray(block_in), HEADS, cls_only=True
        )
        np.testing.assert_allclose(scores, weights[:, 0, 1:], rtol=1e-4, atol=1e-6)
        top = np.sort(np.argsort(-scores, axis=1)[:, :k], axis=1)
        expected = np.take_along_axis(block_out[:, 1:], top[..., None], axis=1)
        np.testing.assert_allclose(joint_in[:, offset : offset + k], expected, err_msg=m)
        offset += k


def test_window_padding_and_attention_pooling_reach_the_joint_blocks():
    # rgb 8 tokens: avg windows of 3 with 1 padding → (8 + 2) // 3 = 3 tokens; spectrogram
    # 12 tokens, pool size 0 → derived from pool_k = 5: kernel 3, padding 1 → 4 tokens.
    for pool_type in ("attn",):  # the window arithmetic of each pool: test_sft_pooling.py
        config = tiny_config(
            pool_type=pool_type,
            sparse_block="attention",
            pool_sizes={"rgb": 3, "spectrogram": 0},
            pool_paddings={"rgb": 1},
            pool_k=5,
            n_layers_post_fusion=1,
        )
        inputs = make_inputs(2)
        model, params = init(config, inputs)
        names = {"sparse_pool", "sparse_pool_spectrogram", "fused_encoderblock_0"}
        _, calls = recorded_calls(model, params, inputs, names, train=False)
        joint_in = np.asarray(calls["fused_encoderblock_0"][0][0])
        assert joint_in.shape == (2, 1 + 3 + 4, D)
        offset = 1
        for name, window in (("sparse_pool", (3, 1)), ("sparse_pool_spectrogram", (3, 1))):
            out, weights = (np.asarray(a) for a in calls[name][1])
            tokens = np.pad(out[:, 1:], ((0, 0), window[1:] * 2, (0, 0)))
            k = tokens.shape[1] // 3
            blocks = tokens[:, : 3 * k].reshape(2, k, 3, D)
            if pool_type == "avg":
                expected = blocks.mean(axis=2)
            else:  # weights: mean attention each token receives from the non-CLS queries
                w = np.pad(weights[:, 1:, 1:].mean(axis=1), ((0, 0), window[1:] * 2))
                w = w[:, : 3 * k].reshape(2, k, 3, 1)
                expected = (blocks * w).sum(2) / (w.sum(2) + 3e-5)
            np.testing.assert_allclose(joint_in[:, offset : offset + k], expected, rtol=2e-5)
            offset += k


def test_random_pools_are_fixed_at_evaluation_and_drawn_in_training():
    config = tiny_config(pool_type="random", pool_k=3, sparse_block="attention")
    inputs = make_inputs(6)
    model, params = init(config, inputs)
    evaluate = jax.jit(lambda p: model.apply({"params": p}, inputs, train=False))
    np.testing.assert_array_equal(evaluate(params), evaluate(params))
    train = jax.jit(
        lambda p, key: model.apply({"params": p}, inputs, train=True, rngs={"dropout": key})
    )
    draws = [np.asarray(train(params, jax.random.PRNGKey(s))) for s in range(3)]
    assert not np.allclose(draws[0], draws[1]) or not np.allclose(draws[0], draws[2])


def test_latent_mixup_sows_lambdas_partners_and_mixes_only_distinct_examples():
    config = tiny_config(latent_mixup_alpha=0.4)  # the earlier variant: per batch, roll
    inputs = make_inputs(5)
    model, params = init(config, inputs)
    plain = models.build_model(tiny_config(), CLASSES)
    rngs = {"dropout": jax.random.PRNGKey(2)}
    logits, state = model.apply(
        {"params": params}, inputs, train=True, rngs=rngs, mutable=["intermediates"]
    )
    lambdas = state["intermediates"]["latent_mixup_lambda"][0]
    point = int(state["intermediates"]["latent_mixup_point"][0])
    assert set(lambdas) == {"rgb", "spectrogram"}
    for lam in lambdas.values():  # one λ per modality, repeated for every example
        assert lam.shape == (2,) and lam[0] == lam[1] and 0.0 <= float(lam[0]) <= 1.0
    np.testing.assert_array_equal(state["intermediates"]["latent_mixup_partner"][0], [1, 0])
    assert 0 <= point <= config.n_layers_pre_fusion + 1
    unmixed = plain.apply({"params": params}, inputs, train=True, rngs=rngs)
    assert not np.allclose(logits, unmixed, atol=1e-5)
    # A batch of identical examples is its own mixing partner: mixup changes nothing.
    same = {m: jnp.repeat(x[:1], 2, axis=0) for m, x in inputs.items()}
    np.testing.assert_allclose(
        model.apply({"params": params}, same, train=True, rngs=rngs),
        plain.apply({"params": params}, same, train=True, rngs=rngs),
        atol=1e-5,
    )
    # Inactive (the unmixed first epochs): λ = 1, the logits of the model without mixup.
    off, state = model.apply(
        {"params": params},
        inputs,
        train=True,
        latent_mixup_active=False,
        rngs=rngs,
        mutable=["intermediates"],
    )
    np.testing.assert_allclose(off, unmixed, atol=1e-6)
    assert all(np.all(v == 1.0) for v in state["intermediates"]["latent_mixup_lambda"][0].values())
    # Evaluation never mixes and sows nothing.
    _, state = model.apply({"params": params}, inputs, train=False, mutable=["intermediates"])
    assert "latent_mixup_lambda" not in state.get("intermediates", {})


def _authors_tiny_config(**overrides):
    config = tiny_config()
    data = {"num_mel_bins": 16, "hop_ms": 10.0}
    config.update(sft.authors_model_overrides(config, data))
    config.update(n_layers_post_fusion=1, pool_sizes={"rgb": 0, "spectrogram": 4})
    config.update(overrides)
    return config


def test_the_trainer_starts_latent_mixup_after_the_configured_epochs_and_shards_every_param():
    config = train_fixtures.tiny_config(**{"lr.warmup_steps": 0, "mesh_shape": (4, 2)})
    config.model = _authors_tiny_config(latent_mixup_after_epochs=1.0)
    data = train_fixtures.InMemoryData()
    setup = train.Setup(config, data.meta, train.resolve_splits(config, data))
    assert setup.step_cfg.latent_mixup
    assert setup.step_cfg.latent_mixup_start_step == round(setup.steps_per_epoch) > 1
    assert sharding.uncovered_paths(setup.abstract_state, sharding.rules_for(config.model)) == []


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"pool_type": "median"}, "pool_type"),
        ({"num_layers": 12}, "num_layers=12"),
        ({"n_layers_post_fusion": -1}, "n_layers_post_fusion"),
        ({"latent_mixup_alpha": -0.5}, "latent_mixup_alpha"),
        ({"hidden_size": 15}, "divisible"),
        ({"pool_paddings": {"rgb": 2}}, r"pool_paddings.rgb=2 exceeds half the pool size 2"),
        ({"pool_sizes": {"rgb": 0, "spectrogram": 5}, "pool_k": 0}, r"pool_k=0"),
        ({"pool_type": "topk", "pool_k": -1}, r"pool_k=-1"),
        ({"sparse_block": "mlp"}, r"sparse_block='mlp'"),
        ({"sparse_attention_mask": "fixed"}, r"needs config.model.sparse_block='attention'"),
        (
            {"sparse_block": "attention", "sparse_attention_mask": "fixed"}
            | {"sparse_attention_expressivity": 32},
            r"sparse_attention_expressivity=32 must be below",
        ),
        ({"latent_mixup": "temporal"}, r"latent_mixup='temporal'"),
        ({"latent_mixup_lambdas": "static"}, r"latent_mixup_lambdas='static'"),
        ({"latent_mixup_partner": "flip"}, r"latent_mixup_partner='flip'"),
        ({"latent_mixup_after_epochs": -1.0}, r"latent_mixup_after_epochs"),
        (
            {"latent_mixup_alpha": 0.3, "latent_mixup": "within", "n_layers_pre_fusion": 0},
            r"latent_mixup='within' has no layer to mix at",
        ),
        (
            {"latent_mixup_alpha": 0.3, "latent_mixup": "fused", "latent_mixup_layer": 0},
            r"latent_mixup_layer=0 is outside \[1, 3\)",
        ),
    ],
)
def test_bad_config_names_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        models.build_model(tiny_config(**overrides), CLASSES)


def test_missing_or_oversized_pool_size_is_reported():
    config = tiny_config()
    del config.pool_sizes["spectrogram"]
    with pytest.raises(ValueError, match="pool_sizes.spectrogram"):
        models.build_model(config, CLASSES)
    config = tiny_config()
    config.pool_sizes.rgb = 9  # only 8 rgb tokens
    model = models.build_model(config, CLASSES)
    with pytest.raises(ValueError, match="pool_sizes.rgb=9 cannot pool modality 'rgb'"):
        jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), make_inputs(), train=False))
    model = models.build_model(tiny_config(pool_type="topk", pool_k=9), CLASSES)
    with pytest.raises(ValueError, match="pool_k=9 cannot pool modality 'rgb'"):
        jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), make_inputs(), train=False))
