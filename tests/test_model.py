"""Tests of the MBT model: parameter tree, fusion semantics, classifiers, tokenizers, sharding."""

import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import script_fixtures
from flax.traverse_util import flatten_dict

from mbt import models
from mbt.models import mbt as mbt_lib
from mbt.models import tokenizers
from mbt.models import vit

D, HEADS, MLP, LAYERS, CLASSES = 16, 2, 32, 3, 5
RGB_SHAPE = (2, 4, 16, 16, 3)  # [B, T, H, W, C] → tubelets (2, 8, 8): 2×2×2 = 8 tokens
SPEC_SHAPE = (2, 32, 16, 1)  # [B, time, mel, C] → patches (8, 8): 4×2 = 8 tokens


def tiny_config(**overrides) -> ml_collections.ConfigDict:
    config = models.default_mbt_config()
    config.variant = None
    config.hidden_size, config.num_heads, config.mlp_dim, config.num_layers = D, HEADS, MLP, LAYERS
    config.tokenizers.rgb.patches = (2, 8, 8)
    config.tokenizers.spectrogram.patches = (8, 8)
    config.fusion_layer = 1
    config.stochastic_droplayer_rate = 0.0
    config.update(overrides)
    return config


def make_inputs(seed=0, modalities=("rgb", "spectrogram")):
    rng = np.random.default_rng(seed)
    shapes = {"rgb": RGB_SHAPE, "spectrogram": SPEC_SHAPE, "flow": RGB_SHAPE[:-1] + (2,)}
    return {m: jnp.asarray(rng.normal(size=shapes[m]), jnp.float32) for m in modalities}


def init(config, inputs, seed=0, jit=False):
    """The model and its parameters; `jit=True` initialises as one compiled program (cheaper
    than op by op for the larger configs)."""
    model = models.build_model(config, CLASSES)
    init_fn = lambda x: model.init({"params": jax.random.PRNGKey(seed)}, x, train=False)  # noqa: E731
    params = (jax.jit(init_fn) if jit else init_fn)(inputs)["params"]
    # The head is zero-initialised (as in Scenic); give it weights so logits carry signal.
    kernel = params["output_projection"]["kernel"]
    params["output_projection"]["kernel"] = jax.random.normal(jax.random.PRNGKey(99), kernel.shape)
    return model, params


def param_shapes(params):
    return {"/".join(k): tuple(v.shape) for k, v in flatten_dict(params).items()}


def block_shapes(prefix):
    hd = D // HEADS
    return {
        f"{prefix}/LayerNorm_0/scale": (D,),
        f"{prefix}/LayerNorm_0/bias": (D,),
        **{
            f"{prefix}/MultiHeadDotProductAttention_0/{n}/kernel": (D, HEADS, hd)
            for n in ("query", "key", "value")
        },
        **{
            f"{prefix}/MultiHeadDotProductAttention_0/{n}/bias": (HEADS, hd)
            for n in ("query", "key", "value")
        },
        f"{prefix}/MultiHeadDotProductAttention_0/out/kernel": (HEADS, hd, D),
        f"{prefix}/MultiHeadDotProductAttention_0/out/bias": (D,),
        f"{prefix}/LayerNorm_1/scale": (D,),
        f"{prefix}/LayerNorm_1/bias": (D,),
        f"{prefix}/MlpBlock_0/Dense_0/kernel": (D, MLP),
        f"{prefix}/MlpBlock_0/Dense_0/bias": (MLP,),
        f"{prefix}/MlpBlock_0/Dense_1/kernel": (MLP, D),
        f"{prefix}/MlpBlock_0/Dense_1/bias": (D,),
    }


def test_parameter_tree_matches_scenic_mbt():
    config = tiny_config()
    _, params = init(config, make_inputs())
    expected = {
        "embedding/kernel": (2, 8, 8, 3, D),
        "embedding/bias": (D,),
        "embedding_spectrogram/kernel": (8, 8, 1, D),
        "embedding_spectrogram/bias": (D,),
        "cls": (1, 1, D),
        "clsspectrogram": (1, 1, D),
        "bottleneck": (1, 4 + 1, D),  # B + 1 with the token classifier
        "Transformer/posembed_input/pos_embedding": (1, 1 + 8, D),
        "Transformer/posembed_input_spectrogram/pos_embedding": (1, 1 + 8, D),
        "Transformer/encoder_norm/scale": (D,),
        "Transformer/encoder_norm/bias": (D,),
        "output_projection/kernel": (D, CLASSES),
        "output_projection/bias": (CLASSES,),
    }
    for layer in range(LAYERS):
        expected.update(block_shapes(f"Transformer/encoderblock_{layer}"))
        expected.update(block_shapes(f"Transformer/encoderblock_{layer}_spectrogram"))
    assert param_shapes(params) == expected


def test_gap_bottleneck_has_b_tokens_and_representation_layer():
    config = tiny_config(classifier="gap", representation_size=7)
    _, params = init(config, make_inputs())
    shapes = param_shapes(params)
    assert shapes["bottleneck"] == (1, 4, D)
    assert "cls" not in shapes and "clsspectrogram" not in shapes
    assert shapes["Transformer/posembed_input/pos_embedding"] == (1, 8, D)
    assert shapes["pre_logits/kernel"] == (D, 7)
    assert shapes["output_projection/kernel"] == (7, CLASSES)


def test_token_classifier_returns_per_modality_logits_in_training_and_their_mean_in_eval():
    model, params = init(tiny_config(), make_inputs())
    inputs = make_inputs(1)
    train_out = model.apply({"params": params}, inputs, train=True)
    assert set(train_out) == {"rgb", "spectrogram"}
    eval_out = model.apply({"params": params}, inputs, train=False)
    assert eval_out.shape == (2, CLASSES)
    np.testing.assert_allclose(
        eval_out, (train_out["rgb"] + train_out["spectrogram"]) / 2, rtol=1e-5, atol=1e-5
    )


def _rgb_logits(model, params, inputs, train=True):
    out = model.apply({"params": params}, inputs, train=train)
    return out["rgb"] if isinstance(out, dict) else out


def test_late_fusion_rgb_logits_ignore_spectrogram_and_mid_fusion_does_not():
    inputs = make_inputs(1)
    changed = dict(inputs, spectrogram=inputs["spectrogram"] + 3.0)
    late, late_params = init(tiny_config(fusion_layer=LAYERS), make_inputs())
    np.testing.assert_array_equal(
        _rgb_logits(late, late_params, inputs), _rgb_logits(late, late_params, changed)
    )
    mid, mid_params = init(tiny_config(fusion_layer=1), make_inputs())
    diff = jnp.abs(_rgb_logits(mid, mid_params, inputs) - _rgb_logits(mid, mid_params, changed))
    assert float(diff.max()) > 1e-4


def test_test_with_bottlenecks_false_is_late_fusion_at_evaluation():
    inputs = make_inputs(1)
    changed = dict(inputs, spectrogram=inputs["spectrogram"] * -2.0)
    model, params = init(tiny_config(test_with_bottlenecks=False, classifier="token"), inputs)
    # Evaluation without bottlenecks must equal a late-fusion model with the same weights.
    full_a = model.apply({"params": params}, inputs, train=False)
    full_b = model.apply({"params": params}, changed, train=False)
    late_config = tiny_config(fusion_layer=LAYERS)
    late_model = models.build_model(late_config, CLASSES)
    late_params = params  # the late model keeps an (unused) bottleneck, as Scenic's does
    np.testing.assert_allclose(
        full_a, late_model.apply({"params": late_params}, inputs, train=False), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        full_b,
        late_model.apply({"params": late_params}, changed, train=False),
        rtol=1e-5,
        atol=1e-5,
    )


def test_cross_modal_gradient_flows_only_through_bottleneck_tokens():
    """d(rgb logits)/d(spectrogram) is non-zero, and exactly zero once the spectrogram's
    bottleneck outputs are zeroed and not updated (cut out of the gradient)."""
    config = tiny_config(fusion_layer=1, n_bottlenecks=2)
    model, params = init(config, make_inputs())
    inputs = make_inputs(2)
    n_bottleneck_tokens = 2 + 1

    def rgb_score(spectrogram, cut):
        def interceptor(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            name = context.module.name or ""
            if (
                cut
                and context.method_name == "__call__"
                and name.endswith("_spectrogram")
                and name.startswith("encoderblock_")
                and int(name.split("_")[1]) >= config.fusion_layer
            ):
                own = out[:, :-n_bottleneck_tokens]
                zeros = jax.lax.stop_gradient(jnp.zeros_like(out[:, -n_bottleneck_tokens:]))
                out = jnp.concatenate([own, zeros], axis=1)
            return out

        with nn.intercept_methods(interceptor):
            logits = model.apply(
                {"params": params}, dict(inputs, spectrogram=spectrogram), train=True
            )
        return jnp.sum(logits["rgb"] ** 2)

    # Jitted (the interceptor acts while tracing): op by op, each of the model's operations
    # would be a program of its own held in memory (~0.6 GB for this test).
    score_grad = jax.jit(jax.grad(rgb_score), static_argnums=1)
    grad_fused = score_grad(inputs["spectrogram"], False)
    grad_cut = score_grad(inputs["spectrogram"], True)
    assert float(jnp.abs(grad_fused).max()) > 1e-6
    assert float(jnp.abs(grad_cut).max()) == 0.0


def test_concat_early_fusion_with_shared_weights_equals_one_plain_transformer():
    config = tiny_config(fusion="concat", fusion_layer=0, share_encoder=True, classifier="gap")
    inputs = make_inputs(3)
    model, params = init(config, inputs)
    assert not any("_spectrogram" in k and "encoderblock" in k for k in param_shapes(params))
    got = model.apply({"params": params}, inputs, train=False)

    # Reference: tokenise, add position embeddings, run the blocks over the concatenation.
    t = params["Transformer"]
    rgb = (
        jax.lax.conv_general_dilated(
            inputs["rgb"],
            params["embedding"]["kernel"],
            (2, 8, 8),
            "VALID",
            dimension_numbers=("NTHWC", "THWIO", "NTHWC"),
        )
        + params["embedding"]["bias"]
    )
    spec = (
        jax.lax.conv_general_dilated(
            inputs["spectrogram"],
            params["embedding_spectrogram"]["kernel"],
            (8, 8),
            "VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        + params["embedding_spectrogram"]["bias"]
    )
    rgb = rgb.reshape(2, -1, D) + t["posembed_input"]["pos_embedding"]
    spec = spec.reshape(2, -1, D) + t["posembed_input_spectrogram"]["pos_embedding"]
    x = jnp.concatenate([rgb, spec], axis=1)
    block = vit.EncoderBlock(mlp_dim=MLP, num_heads=HEADS)
    for layer in range(LAYERS):
        x = block.apply({"params": t[f"encoderblock_{layer}"]}, x, True)
    x = nn.LayerNorm().apply({"params": t["encoder_norm"]}, x)
    want = (
        x.mean(axis=1) @ params["output_projection"]["kernel"] + params["output_projection"]["bias"]
    )
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fusion", mbt_lib.FUSIONS)
def test_gap_classifier_works_with_every_fusion_mode(fusion):
    model, params = init(tiny_config(fusion=fusion, classifier="gap"), make_inputs())
    out = model.apply(
        {"params": params}, make_inputs(1), train=True, rngs={"dropout": jax.random.PRNGKey(0)}
    )
    assert out.shape == (2, CLASSES) and bool(jnp.all(jnp.isfinite(out)))


def test_cross_fusion_uses_modality_specific_blocks_on_joint_context():
    inputs = make_inputs(1)
    changed = dict(inputs, spectrogram=inputs["spectrogram"] + 1.0)
    model, params = init(tiny_config(fusion="cross", fusion_layer=2), inputs)
    assert "encoderblock_2_spectrogram" in params["Transformer"]
    a, b = _rgb_logits(model, params, inputs), _rgb_logits(model, params, changed)
    assert float(jnp.abs(a - b).max()) > 1e-4


def test_cross_fusion_layer_runs_each_block_on_others_then_own_tokens():
    """One fused layer: modality m's output = its block on [others ; own], own part kept (the
    model computes only that part: queries, MLP and outputs of its own tokens)."""
    encoder = mbt_lib.FusionEncoder(
        modalities=("rgb", "spectrogram"),
        num_layers=1,
        num_heads=HEADS,
        mlp_dim=MLP,
        fusion="cross",
        fusion_layer=0,
    )
    rng = np.random.default_rng(3)
    tokens = {
        "rgb": jnp.asarray(rng.normal(size=(2, 5, D)), jnp.float32),
        "spectrogram": jnp.asarray(rng.normal(size=(2, 3, D)), jnp.float32),
    }
    params = encoder.init(jax.random.PRNGKey(0), tokens, None, train=False)["params"]
    out = encoder.apply({"params": params}, tokens, None, train=False)
    block = vit.EncoderBlock(mlp_dim=MLP, num_heads=HEADS)
    embedded = {
        m: tokens[m] + params[f"posembed_input{'' if m == 'rgb' else '_' + m}"]["pos_embedding"]
        for m in tokens
    }
    rgb = block.apply(
        {"params": params["encoderblock_0"]},
        jnp.concatenate([embedded["spectrogram"], embedded["rgb"]], 1),
        True,
    )[:, 3:]
    spec = block.apply(
        {"params": params["encoderblock_0_spectrogram"]},
        jnp.concatenate([embedded["rgb"], embedded["spectrogram"]], 1),
        True,
    )[:, 5:]
    expected = nn.LayerNorm().apply(
        {"params": params["encoder_norm"]}, jnp.concatenate([rgb, spec], 1)
    )
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def _cross_config(n_modalities, **overrides):
    """Cross fusion over modalities of different lengths: rgb 9, spectrogram 17, flow 5 tokens."""
    modalities = ("rgb", "spectrogram", "flow")[:n_modalities]
    config = tiny_config(fusion="cross", modalities=modalities, **overrides)
    config.tokenizers.spectrogram.patches = (4, 8)
    config.tokenizers.flow = {"kind": "temporal_sampling", "patches": (8, 8), "n_sampled_frames": 1}
    return config


# Each attention path, with and without remat, over 2 and 3 modalities and Lf = 0, 1, 2 (each
# case costs several seconds of compiling on a CPU, so the pairs are covered, not the product).
@pytest.mark.parametrize(
    "n_modalities, fusion_layer, attention, remat",
    [
        (2, 0, "fused", False),
        (2, 2, "einsum", True),
        (3, 1, "fused", True),
        (3, 1, "einsum", False),
    ],
)
def test_cross_fusion_on_own_tokens_equals_scenic_block_on_all_tokens(
    attention, remat, n_modalities, fusion_layer
):
    """Logits (evaluation) and parameter gradients (training, with stochastic depth, whose
    [B, 1, 1] draws are the same both ways) equal those of the Scenic computation."""
    config = _cross_config(
        n_modalities,
        fusion_layer=fusion_layer,
        attention=attention,
        remat=remat,
        stochastic_droplayer_rate=0.5,
    )
    inputs = make_inputs(6, config.modalities)
    model, params = init(config, inputs, jit=True)
    rngs = {"dropout": jax.random.PRNGKey(7)}

    def loss(p):
        logits = model.apply({"params": p}, inputs, train=True, rngs=rngs)
        return sum(jnp.sum(v**2) for v in logits.values())

    def logits_and_grads():  # traced (and compiled) afresh at each call: a new function
        evaluate = lambda p: model.apply({"params": p}, inputs, train=False)  # noqa: E731
        return jax.jit(lambda p: (evaluate(p), jax.grad(loss)(p)))(params)

    logits, grads = logits_and_grads()
    # The reference: cross fusion as Scenic (and this model before) computes it, each modality's
    # block on the whole [others ; own] sequence, own outputs kept.
    with script_fixtures.load_script("cross_fusion_benchmark").scenic_cross():
        scenic_logits, scenic_grads = logits_and_grads()
    assert float(jnp.abs(scenic_logits).max()) > 1e-2  # the head carries signal
    np.testing.assert_allclose(logits, scenic_logits, rtol=1e-5, atol=1e-5)
    assert jax.tree.structure(grads) == jax.tree.structure(scenic_grads)
    for path, g in flatten_dict(grads).items():
        want = flatten_dict(scenic_grads)[path]
        # float32 sums in another order: 1e-5 of each array's largest entry, plus a floor for
        # the key biases, whose exact gradient is 0 (softmax ignores a shift shared by all
        # keys), so that only rounding noise (~1e-5) remains.
        atol = 1e-5 * float(jnp.abs(want).max()) + 5e-5
        np.testing.assert_allclose(g, want, rtol=0, atol=atol, err_msg="/".join(path))


@pytest.mark.parametrize("attention", ["fused", "einsum"])
def test_encoder_block_with_context_is_the_own_part_of_the_block_on_the_concatenation(attention):
    rng = np.random.default_rng(8)
    x = jnp.asarray(rng.normal(size=(2, 5, D)), jnp.float32)
    context = jnp.asarray(rng.normal(size=(2, 7, D)), jnp.float32)
    block = vit.EncoderBlock(mlp_dim=MLP, num_heads=HEADS, attention=attention, droplayer_p=0.5)
    params = block.init(jax.random.PRNGKey(0), x, True)["params"]
    joint = jnp.concatenate([context, x], axis=1)
    outputs = []
    for train in (False, True):
        rngs = {"dropout": jax.random.PRNGKey(3)}
        got = block.apply({"params": params}, x, not train, context, rngs=rngs)
        want = block.apply({"params": params}, joint, not train, rngs=rngs)[:, context.shape[1] :]
        assert got.shape == x.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        outputs.append(got)
    assert float(jnp.abs(outputs[0] - outputs[1]).max()) > 1e-3  # stochastic depth dropped some


def test_cross_fusion_trains_with_dropout_and_attention_dropout():
    """Dropout masks cover only the computed (own) tokens, so they differ from Scenic's draws;
    training still runs (remat included), and evaluation is deterministic. With attention
    dropout the einsum path runs whatever `attention` says."""
    config = _cross_config(
        3,
        fusion_layer=1,
        attention="fused",
        remat=True,
        dropout_rate=0.2,
        attention_dropout_rate=0.2,
    )
    inputs = make_inputs(9, config.modalities)
    model, params = init(config, inputs, jit=True)

    def loss(p, key):
        logits = model.apply({"params": p}, inputs, train=True, rngs={"dropout": key})
        return sum(jnp.sum(v**2) for v in logits.values())

    @jax.jit
    def run(p):
        a, grads = jax.value_and_grad(loss)(p, jax.random.PRNGKey(0))
        b = loss(p, jax.random.PRNGKey(1))
        evaluate = lambda: model.apply({"params": p}, inputs, train=False)  # noqa: E731
        return a, b, grads, evaluate(), evaluate()

    a, b, grads, eval_1, eval_2 = run(params)
    assert bool(jnp.isfinite(a)) and abs(float(a) - float(b)) > 1e-6
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    np.testing.assert_array_equal(eval_1, eval_2)


def test_bottleneck_layers_share_the_mean_of_the_modalities_bottleneck_outputs():
    """Two fused layers by hand: [own ; bottleneck] per modality, new bottleneck = their mean."""
    encoder = mbt_lib.FusionEncoder(
        modalities=("rgb", "spectrogram"),
        num_layers=2,
        num_heads=HEADS,
        mlp_dim=MLP,
        fusion="bottleneck",
        fusion_layer=0,
    )
    rng = np.random.default_rng(4)
    tokens = {
        "rgb": jnp.asarray(rng.normal(size=(2, 5, D)), jnp.float32),
        "spectrogram": jnp.asarray(rng.normal(size=(2, 3, D)), jnp.float32),
    }
    bottleneck = jnp.asarray(rng.normal(size=(2, 2, D)), jnp.float32)
    params = encoder.init(jax.random.PRNGKey(0), tokens, bottleneck, train=False)["params"]
    out = encoder.apply({"params": params}, tokens, bottleneck, train=False)
    block = vit.EncoderBlock(mlp_dim=MLP, num_heads=HEADS)
    own = {
        m: tokens[m] + params[f"posembed_input{'' if m == 'rgb' else '_' + m}"]["pos_embedding"]
        for m in tokens
    }
    for layer in range(2):
        shared = []
        for m in ("rgb", "spectrogram"):
            name = f"encoderblock_{layer}" + ("" if m == "rgb" else "_spectrogram")
            n_own = own[m].shape[1]
            y = block.apply(
                {"params": params[name]}, jnp.concatenate([own[m], bottleneck], 1), True
            )
            own[m] = y[:, :n_own]
            shared.append(y[:, n_own:])
        bottleneck = (shared[0] + shared[1]) / 2
    expected = nn.LayerNorm().apply(
        {"params": params["encoder_norm"]}, jnp.concatenate([own["rgb"], own["spectrogram"]], 1)
    )
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_three_modalities_with_their_own_names():
    modalities = ("rgb", "spectrogram", "flow")
    config = tiny_config(modalities=modalities)
    config.tokenizers.flow = {"kind": "temporal_sampling", "patches": (8, 8), "n_sampled_frames": 2}
    inputs = make_inputs(0, modalities)
    model, params = init(config, inputs)
    shapes = param_shapes(params)
    assert shapes["embedding_flow/kernel"] == (8, 8, 2, D)
    assert shapes["clsflow"] == (1, 1, D)
    assert shapes["Transformer/posembed_input_flow/pos_embedding"] == (1, 1 + 2 * 2 * 2, D)
    assert "Transformer/encoderblock_0_flow/LayerNorm_0/scale" in shapes
    out = model.apply({"params": params}, inputs, train=True)
    assert set(out) == set(modalities)


def test_fused_attention_matches_einsum_attention_and_remat_matches_plain():
    inputs = make_inputs(4)
    model, params = init(tiny_config(attention="fused"), inputs)
    einsum_model = models.build_model(tiny_config(attention="einsum"), CLASSES)
    remat_model = models.build_model(tiny_config(attention="fused", remat=True), CLASSES)

    def loss(m, p):
        return jnp.sum(m.apply({"params": p}, inputs, train=False) ** 2)

    # Jitted: op by op, the three models' operations would each be a program held in memory
    # (~0.8 GB for this test).
    ref = jax.jit(lambda p: model.apply({"params": p}, inputs, train=False))(params)
    einsum_out = jax.jit(lambda p: einsum_model.apply({"params": p}, inputs, train=False))(params)
    np.testing.assert_allclose(einsum_out, ref, rtol=1e-5, atol=1e-5)
    g_plain = jax.jit(jax.grad(lambda p: loss(model, p)))(params)
    g_remat = jax.jit(jax.grad(lambda p: loss(remat_model, p)))(params)
    for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_remat)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_bfloat16_activations_keep_float32_parameters():
    config = tiny_config(dtype="bfloat16")
    model, params = init(config, make_inputs())
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    out = model.apply({"params": params}, make_inputs(1), train=False)
    assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))


def test_stochastic_depth_grows_linearly_and_only_acts_in_training():
    assert [vit.droplayer_rate(i, 4, 0.3) for i in range(4)] == pytest.approx([0, 0.1, 0.2, 0.3])
    model, params = init(tiny_config(stochastic_droplayer_rate=0.9), make_inputs())
    inputs = make_inputs(5)
    a = model.apply({"params": params}, inputs, train=True, rngs={"dropout": jax.random.PRNGKey(0)})
    b = model.apply({"params": params}, inputs, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
    assert float(jnp.abs(a["rgb"] - b["rgb"]).max()) > 1e-5
    e1 = model.apply({"params": params}, inputs, train=False)
    e2 = model.apply({"params": params}, inputs, train=False)
    np.testing.assert_array_equal(e1, e2)


def test_temporal_sampling_indices_and_tubelet_initialisers():
    np.testing.assert_array_equal(
        tokenizers.sampled_frame_indices(32, 8), np.round(np.arange(1, 9) * 32 / 9).astype(int)
    )
    np.testing.assert_array_equal(tokenizers.sampled_frame_indices(4, 8), np.arange(4))
    key = jax.random.PRNGKey(0)
    central = tokenizers.central_frame_initializer()(key, (3, 4, 4, 3, 8))
    assert float(jnp.abs(central[0]).max()) == 0.0 and float(jnp.abs(central[2]).max()) == 0.0
    assert float(jnp.abs(central[1]).max()) > 0.0
    average = tokenizers.average_frame_initializer()(key, (4, 4, 4, 3, 8))
    for frame in range(4):  # same key and 2-D shape, so the same base kernel, divided by t
        np.testing.assert_allclose(average[frame], central[1] / 4, rtol=1e-6)


def test_central_frame_tubelets_on_static_video_equal_2d_patches_of_one_frame():
    video = jnp.broadcast_to(make_inputs(6)["rgb"][:, :1], RGB_SHAPE)  # every frame the same
    spec_3d = tokenizers.TokenizerSpec(
        "3d_conv", (2, 8, 8), kernel_init="central_frame_initializer"
    )
    spec_2d = tokenizers.TokenizerSpec("temporal_sampling", (8, 8), n_sampled_frames=2)

    class Embed(nn.Module):
        spec: tokenizers.TokenizerSpec

        @nn.compact
        def __call__(self, x):
            return tokenizers.embed(x, self.spec, D, name="embedding")

    p3 = Embed(spec_3d).init(jax.random.PRNGKey(0), video)["params"]
    kernel_2d = p3["embedding"]["kernel"][1]  # the central frame of a 2-frame tubelet
    p2 = {"embedding": {"kernel": kernel_2d, "bias": p3["embedding"]["bias"]}}
    tokens_3d = Embed(spec_3d).apply({"params": p3}, video)
    tokens_2d = Embed(spec_2d).apply({"params": p2}, video)
    np.testing.assert_allclose(tokens_3d, tokens_2d, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("fusion", "sum", "config.model.fusion='sum'"),
        ("classifier", "cls", "config.model.classifier"),
        ("fusion_layer", LAYERS + 1, "0..3"),
        ("name", "vivit", "config.model.name='vivit'"),
    ],
)
def test_config_errors_name_the_key_and_allowed_values(key, value, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")):
        models.build_model(tiny_config(**{key: value}), CLASSES)


def test_missing_tokenizer_for_unknown_modality_is_a_clear_error():
    with pytest.raises(ValueError, match=r"config\.model\.tokenizers\.depth"):
        models.build_model(tiny_config(modalities=("rgb", "depth")), CLASSES)


def test_presets():
    assert vit.preset("B/16") == vit.ViTSize(768, 12, 12, 3072, 16)
    assert vit.preset("L/14").num_layers == 24 and vit.preset("Ti/16").hidden_size == 192
    with pytest.raises(ValueError, match="variant"):
        vit.preset("H/14")


def test_model_jits_under_an_8_device_mesh():
    devices = np.array(jax.devices())
    assert devices.size == 8, "tests run with 8 simulated CPU devices (tests/conftest.py)"
    mesh = jax.sharding.Mesh(devices.reshape(4, 2), ("data", "model"))
    rng = np.random.default_rng(7)
    inputs = {
        "rgb": jnp.asarray(rng.normal(size=(8,) + RGB_SHAPE[1:]), jnp.float32),
        "spectrogram": jnp.asarray(rng.normal(size=(8,) + SPEC_SHAPE[1:]), jnp.float32),
    }
    model, params = init(tiny_config(), inputs)
    batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    sharded_inputs = jax.device_put(inputs, batch_sharding)
    sharded_params = jax.device_put(params, replicated)
    forward = jax.jit(
        lambda p, x: model.apply({"params": p}, x, train=False),
        in_shardings=(replicated, batch_sharding),
        out_shardings=batch_sharding,
    )
    got = forward(sharded_params, sharded_inputs)
    assert got.sharding.spec == jax.sharding.PartitionSpec("data")
    want = model.apply({"params": params}, inputs, train=False)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_auto_attention_is_cudnn_on_nvidia_gpus_in_half_precision_and_einsum_elsewhere():
    bf16, f16, f32 = jnp.bfloat16, jnp.float16, jnp.float32
    assert vit.resolve_attention("auto", bf16, 64, "gpu") == "cudnn"
    assert vit.resolve_attention("auto", f16, 64, "cuda") == "cudnn"
    assert vit.resolve_attention("auto", f32, 64, "gpu") == "einsum"  # cuDNN takes no float32
    assert vit.resolve_attention("auto", bf16, 12, "gpu") == "einsum"  # not a multiple of 8
    assert vit.resolve_attention("auto", bf16, 160, "gpu") == "einsum"  # over 128
    assert vit.resolve_attention("auto", bf16, 64, "cpu") == "einsum"
    assert vit.resolve_attention("auto", bf16, 64, "tpu") == "einsum"
    assert vit.resolve_attention("fused", f32, 64, "cpu") == "fused"
    assert vit.resolve_attention("einsum", bf16, 64, "gpu") == "einsum"
    assert vit.resolve_attention("cudnn", f32, 64, "cpu") == "cudnn"  # the module says why not
    assert "float32" in vit.cudnn_attention_problem(f32, 64, "gpu")
    assert "'cpu'" in vit.cudnn_attention_problem(bf16, 64, "cpu")
    # here (CPU) the default model runs exactly the einsum path
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(2, 6, D)), jnp.float32)
    blocks = {a: vit.EncoderBlock(mlp_dim=MLP, num_heads=HEADS, attention=a) for a in ATTN}
    params = blocks["auto"].init(jax.random.PRNGKey(0), x, True)["params"]
    out = {a: blocks[a].apply({"params": params}, x, True) for a in ATTN}
    np.testing.assert_array_equal(out["auto"], out["einsum"])
    assert float(jnp.abs(out["auto"] - out["fused"]).max()) < 1e-5


@pytest.mark.parametrize("q_len,kv_len", [(7, 7), (7, 12), (6, 9), (6, 10)])
def test_even_length_attention_equals_attention_over_the_unpadded_sequences(q_len, kv_len):
    # the padding and masking that cuDNN's training rule needs, checked through XLA's kernel
    rng = np.random.default_rng(q_len * kv_len)
    q, k, v = (
        jnp.asarray(rng.normal(size=(2, n, 3, 8)), jnp.float32) for n in (q_len, kv_len, kv_len)
    )
    want = vit.einsum_attention(q, k, v)
    got = vit.even_length_attention(q, k, v, "xla")
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    project = lambda f: lambda q, k, v: jnp.sum(f(q, k, v) * want)  # noqa: E731
    grads_want = jax.grad(project(vit.einsum_attention), argnums=(0, 1, 2))(q, k, v)
    grads_got = jax.grad(
        project(lambda *a: vit.even_length_attention(*a, "xla")), argnums=(0, 1, 2)
    )(q, k, v)
    for g, w in zip(grads_got, grads_want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_cudnn_attention_needs_an_nvidia_gpu_of_compute_capability_8_or_newer(monkeypatch):
    # no GPU here: a stand-in for what jax.devices('gpu') reports on one
    gpu = types.SimpleNamespace(
        compute_capability="7.5", client=types.SimpleNamespace(platform_version="cuda 12080")
    )
    monkeypatch.setattr(vit.jax, "devices", lambda backend=None: [gpu])
    bf16 = jnp.bfloat16
    assert "compute capability is 7.5" in vit.cudnn_attention_problem(bf16, 64, "gpu")
    assert vit.resolve_attention("auto", bf16, 64, "gpu") == "einsum"
    gpu.compute_capability = "8.6"  # Ampere: head dims up to 128
    assert vit.resolve_attention("auto", bf16, 128, "gpu") == "cudnn"
    assert "up to 128 on this GPU" in vit.cudnn_attention_problem(bf16, 192, "gpu")
    gpu.compute_capability = "9.0"  # Hopper: up to 256
    assert vit.cudnn_attention_problem(bf16, 64, "gpu") is None
    assert vit.resolve_attention("auto", bf16, 64, "gpu") == "cudnn"
    assert vit.resolve_attention("auto", bf16, 256, "gpu") == "cudnn"
    assert "up to 256 on this GPU" in vit.cudnn_attention_problem(bf16, 264, "gpu")
    assert "multiples of 8" in vit.cudnn_attention_problem(bf16, 100, "gpu")
    # an explicit attention='cudnn' checks the head dim of its queries too
    monkeypatch.setattr(vit.jax, "default_backend", lambda: "gpu")
    query = jnp.ones((1, 4, 1, 264), bf16)
    with pytest.raises(ValueError, match=r"'cudnn' cannot run: the head dim .* is 264"):
        vit.cudnn_attention(query, query, query)
    gpu.client.platform_version = "rocm 60300"
    assert "'rocm', not an NVIDIA GPU" in vit.cudnn_attention_problem(bf16, 64, "gpu")


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="cuDNN can run here")
def test_cudnn_attention_where_it_cannot_run_says_why_and_what_to_use():
    x = jnp.ones((2, 6, D), jnp.bfloat16)
    block = vit.EncoderBlock(mlp_dim=MLP, num_heads=HEADS, attention="cudnn", dtype=jnp.bfloat16)
    with pytest.raises(
        ValueError, match=r"attention='cudnn' cannot run: the backend is 'cpu'.*'auto'"
    ):
        block.init(jax.random.PRNGKey(0), x, True)


ATTN = ("auto", "einsum", "fused")
