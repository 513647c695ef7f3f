"""Tests of the Sparse Fusion Transformer: parameter tree, pooling, CLS fusion, latent mixup."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.traverse_util import flatten_dict

from mbt import models
from mbt.models import sft

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
    params = model.init({"params": jax.random.PRNGKey(seed)}, inputs, train=False)["params"]
    # Zero-initialised head: give it weights so logits depend on the features.
    kernel = params["output_projection"]["kernel"]
    params["output_projection"]["kernel"] = jax.random.normal(jax.random.PRNGKey(7), kernel.shape)
    return model, params


def recorded_calls(model, params, inputs, names, **apply_kwargs):
    """Runs the model and returns `{module name: (call args, output)}` for the named modules."""
    calls = {}

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and context.module.name in names:
            calls[context.module.name] = (args, out)
        return out

    with nn.intercept_methods(record):
        logits = model.apply({"params": params}, inputs, **apply_kwargs)
    return logits, calls


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


def test_pool_tokens_max_avg_topk_arithmetic():
    tokens = jnp.asarray(np.random.default_rng(0).normal(size=(2, 7, 3)), jnp.float32)
    max_pooled = sft.pool_tokens(tokens, 3, "max")
    avg_pooled = sft.pool_tokens(tokens, 3, "avg")
    assert max_pooled.shape == avg_pooled.shape == (2, 2, 3)  # 7 // 3; token 6 dropped
    for block in range(2):
        window = np.asarray(tokens[:, 3 * block : 3 * block + 3])
        np.testing.assert_allclose(max_pooled[:, block], window.max(axis=1))
        np.testing.assert_allclose(avg_pooled[:, block], window.mean(axis=1), rtol=1e-6)

    scores = jnp.asarray([[0.1, 0.9, 0.0, 0.5, 0.2, 0.8, 0.3], [0.7, 0.0, 0.6, 0.1, 0.2, 0.3, 0.9]])
    top = sft.pool_tokens(tokens, 3, "topk", scores)
    assert top.shape == (2, 2, 3)
    # Highest two scores, kept in sequence order: (1, 5) and (0, 6).
    np.testing.assert_array_equal(top[0], tokens[0, jnp.asarray([1, 5])])
    np.testing.assert_array_equal(top[1], tokens[1, jnp.asarray([0, 6])])
    with pytest.raises(ValueError, match="exceeds"):
        sft.pool_tokens(tokens, 8, "max")


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


def test_topk_pooling_keeps_tokens_the_cls_attends_to_most():
    config = tiny_config(pool_type="topk", n_layers_post_fusion=1)
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
        np.testing.assert_allclose(
            scores,
            sft.cls_attention_scores(params["Transformer"][name], jnp.asarray(block_in), HEADS),
            rtol=1e-4,
            atol=1e-6,
        )
        top = np.sort(np.argsort(-scores, axis=1)[:, :k], axis=1)
        expected = np.take_along_axis(block_out[:, 1:], top[..., None], axis=1)
        np.testing.assert_allclose(joint_in[:, offset : offset + k], expected, err_msg=m)
        offset += k


def test_latent_mixup_sows_lambdas_and_mixes_only_distinct_examples():
    config = tiny_config(latent_mixup_alpha=0.4)
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
    assert all(0.0 <= float(v) <= 1.0 for v in lambdas.values())
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
    # Evaluation never mixes and sows nothing.
    _, state = model.apply({"params": params}, inputs, train=False, mutable=["intermediates"])
    assert "latent_mixup_lambda" not in state.get("intermediates", {})


def test_jitted_gradient_step_lowers_the_loss():
    config = tiny_config(pool_type="avg", latent_mixup_alpha=0.3, n_layers_post_fusion=1)
    inputs = make_inputs(4, batch=4)
    labels = jax.nn.one_hot(jnp.arange(4) % CLASSES, CLASSES)
    model, params = init(config, inputs)
    optimizer = optax.adam(1e-2)

    @jax.jit
    def step(params, opt_state, key):
        def loss_fn(p):
            logits, state = model.apply(
                {"params": p}, inputs, train=True, rngs={"dropout": key}, mutable=["intermediates"]
            )
            lambdas = state["intermediates"]["latent_mixup_lambda"][0]
            lam = jnp.mean(jnp.stack(list(lambdas.values())))
            targets = lam * labels + (1 - lam) * jnp.roll(labels, 1, axis=0)
            return optax.softmax_cross_entropy(logits, targets).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss, grads

    opt_state = optimizer.init(params)
    key = jax.random.PRNGKey(0)
    params, opt_state, first_loss, grads = step(params, opt_state, key)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    for name in ("encoderblock_0_spectrogram", "sparse_pool", "fused_encoderblock_0"):
        assert np.abs(np.asarray(grads["Transformer"][name]["LayerNorm_0"]["scale"])).sum() > 0
    for i in range(1, 10):
        params, opt_state, _, _ = step(params, opt_state, jax.random.PRNGKey(i))
    # Same key → same mixing point and λs as the first step: the losses are comparable.
    _, _, last_loss, _ = step(params, opt_state, key)
    assert np.isfinite(first_loss) and last_loss < 0.8 * first_loss


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"pool_type": "median"}, "pool_type"),
        ({"num_layers": 12}, "num_layers=12"),
        ({"n_layers_post_fusion": -1}, "n_layers_post_fusion"),
        ({"latent_mixup_alpha": -0.5}, "latent_mixup_alpha"),
        ({"hidden_size": 15}, "divisible"),
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
    with pytest.raises(ValueError, match="pool_sizes.rgb=9"):
        model.init(jax.random.PRNGKey(0), make_inputs(), train=False)
