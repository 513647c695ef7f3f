"""mbt.tools.attention: capturing attention leaves the model alone, the per-layer matrices and
the rollout follow the fusion modes' token layouts (checked against the model's own input
dependencies), and the CLI writes a PNG of the documented size and the arrays."""

import contextlib
import functools
import io

import jax
import numpy as np
import predict_fixtures as fx
import pytest
from PIL import Image

from mbt import export
from mbt import models
from mbt.tools import attention
from mbt.tools import attention_plot

# Tiny MBTs of 2 layers (predict_fixtures: fusion_layer 1, 2 bottlenecks + 1 for the token
# classifier); rgb 2x2x2 tubelets and a 4x2 log-mel grid, 9 tokens each with the CLS.
CASES = {
    "bottleneck": dict(fusion="bottleneck"),
    "bottleneck_early": dict(fusion="bottleneck", fusion_layer=0),
    "bottleneck_shared_gap": dict(fusion="bottleneck", share_encoder=True, classifier="gap"),
    "concat": dict(fusion="concat"),
    "concat_late": dict(fusion="concat", fusion_layer=2),
    "cross": dict(fusion="cross"),
}
SHAPES = {"rgb": fx.RGB_SHAPE, "spectrogram": fx.SPEC_SHAPE}


def tiny_model(case):
    config = fx.tiny_config(CASES[case]["fusion"])
    config.model.update(CASES[case])
    return config, models.build_model(config.model, len(fx.CLASS_NAMES))


@functools.cache
def captured(case):
    """(model, params, inputs, captured logits, sown) of a case."""
    _, model = tiny_model(case)
    params = fx.random_params(model)
    rng = np.random.default_rng(1)
    inputs = {m: rng.standard_normal((1,) + s).astype(np.float32) for m, s in SHAPES.items()}
    logits, sown = attention.capture(model, params, inputs)
    return model, params, inputs, logits, sown


def test_rollout_is_the_product_of_residual_normalised_layers():
    rng = np.random.default_rng(0)
    first = rng.dirichlet(np.ones(3), size=3)
    second = rng.dirichlet(np.ones(3), size=3)
    second[2] = 0.0  # a token this layer does not update
    expected = (0.5 * second + 0.5 * np.eye(3)) @ (0.5 * first + 0.5 * np.eye(3))
    expected[2] = 0.5 * first[2] + 0.5 * np.eye(3)[2]
    got = attention.rollout([first[None], second[None]])
    np.testing.assert_allclose(got[0], expected, atol=1e-12)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-12)


@pytest.mark.parametrize("case", ["bottleneck", "concat", "cross"])
def test_capture_leaves_parameters_and_logits_unchanged(case):
    model, params, inputs, logits, sown = captured(case)
    np.testing.assert_array_equal(logits, fx.jitted_apply(model)(params, inputs))
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), inputs, train=False))
    assert set(shapes) == {"params"}  # init sows nothing
    same = jax.tree.map(lambda s, p: s.shape == p.shape, shapes["params"], params)
    assert all(jax.tree.leaves(same))
    # One capture per block call (concat: one shared block in the fused layer), each softmax
    # rows averaged over the heads, [B, Q, K].
    weights = jax.tree.leaves(sown)
    assert len(weights) == (3 if case == "concat" else 4)
    for w in weights:
        assert w.ndim == 3 and w.shape[0] == 1
        np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("case", list(CASES))
def test_matrices_and_rollout_rows_are_distributions(case):
    model, _, _, _, sown = captured(case)
    layout = attention.token_layout(model, SHAPES)
    gap = model.classifier == "gap"
    num_bottlenecks = (2 + (0 if gap else 1)) if model.fusion == "bottleneck" else 0
    assert layout.size == 2 * (8 + (0 if gap else 1)) + num_bottlenecks
    matrices = attention.layer_matrices(model, layout, sown)
    kinds = attention.layer_kinds(model)
    assert len(matrices) == 2
    for matrix, kind in zip(matrices, kinds):
        assert matrix.shape == (1, layout.size, layout.size) and (matrix >= 0).all()
        sums = matrix[0].sum(-1)
        updated = layout.num_modality_tokens + (num_bottlenecks if kind == "bottleneck" else 0)
        np.testing.assert_allclose(sums[:updated], 1.0, atol=1e-6)
        np.testing.assert_array_equal(sums[updated:], 0.0)  # bottleneck before fusion
    rolled = attention.rollout(matrices)
    assert (rolled >= 0).all()
    np.testing.assert_allclose(rolled.sum(-1), 1.0, atol=1e-6)

    result = attention.attention_maps(model, sown, SHAPES)
    expected = ["gap"] if gap else ["cls_rgb", "cls_spectrogram"]
    if num_bottlenecks:
        expected.append("bottleneck")
    assert list(result.maps) == expected
    for query, by_modality in result.maps.items():
        assert by_modality["rgb"].shape == (2, 2, 2)
        assert by_modality["spectrogram"].shape == (4, 2)
        assert 0.0 < sum(result.shares[query].values()) <= 1.0 + 1e-9


@pytest.mark.parametrize("case", ["bottleneck", "bottleneck_early", "cross"])
def test_rgb_cls_rollout_reaches_audio_exactly_when_its_logits_depend_on_audio(case):
    """The rollout's paths are the model's: the rgb CLS (read by the rgb head in training)
    has rollout mass on the audio patches iff its logits change with the audio. Bottleneck
    fusion at the last of 2 layers cannot get audio to the rgb CLS (the bottleneck it reads
    carries no audio yet); fused from layer 0 it can."""
    model, params, inputs, _, sown = captured(case)
    audio_share = attention.attention_maps(model, sown, SHAPES).shares["cls_rgb"]["spectrogram"]
    per_modality = jax.jit(lambda x: model.apply({"params": params}, x, train=True)["rgb"])
    other_audio = np.random.default_rng(2).standard_normal(inputs["spectrogram"].shape)
    changed = {**inputs, "spectrogram": other_audio.astype(np.float32)}
    depends = not np.array_equal(per_modality(inputs), per_modality(changed))
    assert depends == (case in ("bottleneck_early", "cross"))
    assert (audio_share > 1e-6) == depends
    if not depends:
        assert audio_share == 0.0


@pytest.mark.parametrize("case", ["bottleneck", "cross"])
def test_a_fused_layers_matrix_places_each_blocks_attention(case):
    model, _, _, _, sown = captured(case)
    layout = attention.token_layout(model, SHAPES)
    layer1 = attention.attention_maps(model, sown, SHAPES, layer=1).matrix
    blocks = sown["Transformer"]
    rgb_w, spec_w = (
        blocks[name]["MultiHeadDotProductAttention_0"]["weights_mean_over_heads"][0][0]
        for name in ("encoderblock_1", "encoderblock_1_spectrogram")
    )
    rgb, spec = layout.indices("rgb"), layout.indices("spectrogram")
    if case == "cross":  # spectrogram tokens attend to [rgb ; spectrogram]
        np.testing.assert_allclose(layer1[np.ix_(spec, rgb)], spec_w[:, :9], atol=1e-6)
        np.testing.assert_allclose(layer1[np.ix_(rgb, spec)], rgb_w[:, :9], atol=1e-6)
        np.testing.assert_allclose(layer1[np.ix_(rgb, rgb)], rgb_w[:, 9:], atol=1e-6)
    else:  # each block on [own ; 3 bottleneck]; bottleneck rows averaged over the blocks
        bottleneck = layout.bottleneck_indices()
        np.testing.assert_allclose(layer1[np.ix_(rgb, spec)], 0.0)
        np.testing.assert_allclose(
            layer1[np.ix_(bottleneck, bottleneck)],
            (rgb_w[9:, 9:] + spec_w[9:, 9:]) / 2,
            atol=1e-6,
        )
        np.testing.assert_allclose(layer1[np.ix_(bottleneck, rgb)], rgb_w[9:, :9] / 2, atol=1e-6)


def test_other_model_families_are_refused():
    config = models.default_config("sft")
    with pytest.raises(ValueError, match="MBT model"):
        attention.token_layout(models.build_model(config, 3), SHAPES)


def run_main(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = attention.main(argv)
    return code, out.getvalue(), err.getvalue()


def test_cli_writes_the_png_and_arrays(tmp_path):
    config, model = tiny_model("bottleneck")
    workdir = tmp_path / "workdir"
    params = fx.random_params(model)
    export.save_export(export.default_export_dir(workdir), params, config, fx.dataset_meta())
    clip = fx.write_media(tmp_path, "clip.mp4", 2.0)
    out = tmp_path / "figures" / "maps.png"  # the folder is made

    code, stdout, stderr = run_main([f"--workdir={workdir}", clip, f"--out={out}", "--save_arrays"])
    assert code == 0, stderr
    # 2 tubelet time steps + the 2-cell log-mel; input row + rgb CLS, audio CLS, bottleneck.
    assert Image.open(out).size == (160 + 160 * (2 + 2), 40 + 160 * 4)
    assert attention_plot.figure_pixels(2, True, 3) == (800, 680)
    arrays = np.load(tmp_path / "figures" / "maps.npz")
    assert str(arrays["method"]) == "rollout"
    assert list(arrays["queries"]) == ["cls_rgb", "cls_spectrogram", "bottleneck"]
    np.testing.assert_allclose(arrays["matrix"].sum(-1), 1.0, atol=1e-5)
    assert arrays["cls_spectrogram_over_spectrogram"].shape == (4, 2)
    assert arrays["bottleneck_over_rgb"].shape == (2, 2, 2)
    assert arrays["frames"].shape == (2, 16, 16, 3) and arrays["logmel"].shape == (32, 16)
    assert arrays["token_kind"].tolist().count("bottleneck") == 3
    assert "rollout" in stdout

    # Layer 0 does not fuse: no bottleneck row.
    code, _, stderr = run_main([f"--workdir={workdir}", clip, f"--out={out}", "--layer=0"])
    assert code == 0, stderr
    assert Image.open(out).size == (800, 40 + 160 * 3)

    code, _, stderr = run_main([f"--workdir={workdir}", clip, f"--out={out}", "--layer=2"])
    assert code == 2 and "layers 0..1" in stderr

    silent = fx.write_media(tmp_path, "silent.mp4", 1.0, audio=False)
    code, _, stderr = run_main([f"--workdir={workdir}", silent, f"--out={out}"])
    assert code == 1 and "no audio track" in stderr
