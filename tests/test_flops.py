"""Tests of the compute accounting (mbt.tools.flops): analytic counts, XLA agreement, the CLI."""

import math
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
import script_fixtures

from mbt import models
from mbt import siblings
from mbt.models import clstm
from mbt.models import registry
from mbt.models import sft
from mbt.tools import flops

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_SHAPES = {"rgb": (4, 32, 32, 3), "spectrogram": (64, 32, 1)}  # 2·4·4 = 32 and 8·4 = 32 tokens
PAPER_SHAPES = {"rgb": (8, 224, 224, 3), "spectrogram": (800, 128, 1)}


def tiny_mbt(**overrides):
    config = models.default_mbt_config()
    config.variant = None
    config.hidden_size, config.num_heads, config.mlp_dim, config.num_layers = 64, 2, 128, 2
    config.tokenizers.rgb.patches = (2, 8, 8)
    config.tokenizers.spectrogram.patches = (8, 8)
    config.fusion_layer = 1
    config.update(overrides)
    return config


def paper_mbt(**overrides):
    """MBT-B/16 at the paper's Fig. 3 shapes: 8 sampled frames (1568 tokens), 400 audio tokens."""
    config = models.default_mbt_config()
    config.tokenizers.rgb = {
        "kind": "temporal_sampling",
        "patches": (16, 16),
        "n_sampled_frames": 8,
    }
    config.update(overrides)
    return config


def tiny_sft(**overrides):
    """Width-64 SFT: 1 unimodal + sparse-pool + 2 joint blocks; 32 + 32 tokens pooled by 4 / 3."""
    config = sft.default_config()
    config.variant = None
    config.hidden_size, config.num_heads, config.mlp_dim = 64, 2, 128
    config.n_layers_post_fusion = 2
    config.tokenizers.rgb.patches = (2, 8, 8)
    config.tokenizers.spectrogram.patches = (8, 8)
    config.pool_sizes = {"rgb": 4, "spectrogram": 3}
    config.update(overrides)
    return config


def tiny_clstm(**overrides):
    config = clstm.default_config()
    config.num_layers, config.features, config.spatial_strides = 2, (8, 16), (2, 2)
    config.update(overrides)
    return config


def test_vit_b16_on_one_image_is_17_56_gflops():
    config = models.default_mbt_config()
    config.modalities = ("image",)
    config.tokenizers = {"image": {"kind": "2d", "patches": (16, 16)}}
    count = flops.mbt_macs(config, {"image": (224, 224, 3)}, 1000)
    assert count.tokens == {"image": 197}
    assert count.total / 1e9 == pytest.approx(17.56, abs=0.1)
    # The components that make up the count, per example (multiply-adds).
    assert count.macs["patch_embedding"] == 196 * 16 * 16 * 3 * 768
    assert count.macs["attention_logits"] == 12 * 197 * 197 * 768
    assert count.macs["mlp"] == 12 * 2 * 197 * 768 * 3072
    assert count.macs["head"] == 768 * 1000


def test_encoder_block_with_longer_keys():
    self_attention = flops.encoder_block_macs(10, 8, 32)
    cross = flops.encoder_block_macs(10, 8, 32, num_key_tokens=30)
    assert cross["attention_logits"] == 3 * self_attention["attention_logits"]
    assert cross["mlp"] == self_attention["mlp"]  # the MLP runs on the queries only
    assert cross["qkv_out_projections"] == 2 * 10 * 64 + 2 * 30 * 64


@pytest.mark.parametrize("fusion", ["bottleneck", "cross", "concat"])
def test_analytic_agrees_with_xla(fusion):
    report = flops.analyse(tiny_mbt(fusion=fusion), TINY_SHAPES, 10, xla="lowered")
    # XLA counts a multiply-add as 2 and adds the elementwise ops the analytic count leaves out
    # (≈ 3.5 % at width 64); a missing attention or embedding term would be > 6 % off.
    assert 1.0 <= report.ratio < 1.06, report.lines()
    assert report.num_params > 0


def test_analytic_agrees_with_xla_on_vit_b_lowering():
    report = flops.analyse(
        paper_mbt(fusion="cross", fusion_layer=10), PAPER_SHAPES, 527, xla="lowered"
    )
    assert 1.0 <= report.ratio < 1.02, report.lines()


def test_bottleneck_flat_in_fusion_layer_while_cross_grows_as_it_falls():
    def gflops(fusion, layer):
        return (
            flops.mbt_macs(paper_mbt(fusion=fusion, fusion_layer=layer), PAPER_SHAPES, 527).total
            / 1e9
        )

    def scenic_cross_gflops(layer):
        config = paper_mbt(fusion="cross", fusion_layer=layer)
        return flops.mbt_macs(config, PAPER_SHAPES, 527, scenic_cross=True).total / 1e9

    bottleneck = [gflops("bottleneck", layer) for layer in range(13)]
    cross = [gflops("cross", layer) for layer in range(13)]
    scenic_cross = [scenic_cross_gflops(layer) for layer in range(13)]
    assert max(bottleneck) / min(bottleneck) < 1.01
    for series in (cross, scenic_cross):  # strictly more compute for earlier fusion
        assert all(a > b for a, b in zip(series, series[1:]))
        assert series[12] == pytest.approx(bottleneck[12])  # Lf = 12: both are late fusion
    assert cross[0] > 1.2 * bottleneck[0]
    assert scenic_cross[0] > 2.1 * bottleneck[0]  # each block also on the other's 1569 tokens


def test_cross_fusion_counts_own_token_queries_over_all_keys():
    """Fused cross layers: per modality, Q/out projections and MLP on its L_m tokens, K/V and
    attention over all; Scenic's reference count runs each modality's block on all tokens."""
    config = tiny_mbt(fusion="cross", fusion_layer=1)  # 2 layers: one unfused, one fused
    count = flops.mbt_macs(config, TINY_SHAPES, 10)
    scenic = flops.mbt_macs(config, TINY_SHAPES, 10, scenic_cross=True)
    assert count.tokens["rgb"] == count.tokens["spectrogram"] == 33

    def block(n, keys=None):
        return sum(flops.encoder_block_macs(n, 64, 128, num_key_tokens=keys).values())

    shared = count.macs["patch_embedding"] + count.macs["head"] + 2 * block(33)
    assert count.total == shared + 2 * block(33, keys=66)
    assert scenic.total == shared + 2 * block(66)
    assert count.tokens["cross keys (per modality)"] == 66


def test_the_family_provides_the_analytic_count(monkeypatch):
    """A family registered outside `mbt.models` supplies `analytic_macs` itself."""

    class HookedFamily(type(models.get_family("mbt"))):
        name = "hooked"

        def analytic_macs(self, model_config, input_shapes, num_classes):
            count = flops.AnalyticCount()
            count.add({"everything": 1234})
            return count

    monkeypatch.setitem(registry._FAMILIES, "hooked", HookedFamily())
    report = flops.analyse(tiny_mbt(name="hooked"), TINY_SHAPES, 10, xla="none")
    assert report.analytic.total == 1234 and report.xla is None


def test_missing_input_shape_names_the_key():
    config = flops.ml_collections.ConfigDict({"model": tiny_mbt(), "dataset": {"name": "audioset"}})
    with pytest.raises(ValueError, match="config.dataset.num_frames and frame_size"):
        flops.input_shapes_from_config(config)
    with pytest.raises(ValueError, match="--rgb_shape"):
        flops.parse_shape("8,a", "rgb_shape")


def test_cli_on_a_tiny_config_file(tmp_path):
    config_file = tmp_path / "tiny_config.py"
    config_file.write_text(
        textwrap.dedent("""
        import ml_collections
        from mbt import models

        def get_config():
            model = models.default_mbt_config()
            model.variant = None
            model.hidden_size, model.num_heads, model.mlp_dim, model.num_layers = 64, 2, 128, 2
            model.tokenizers.rgb.patches = (2, 8, 8)
            model.tokenizers.spectrogram.patches = (8, 8)
            model.fusion_layer = 1
            dataset = ml_collections.ConfigDict(dict(
                name='vggsound', num_frames=4, frame_size=32, audio_seconds=0.64,
                num_mel_bins=32, spec_channels=1))
            return ml_collections.ConfigDict(dict(model=model, dataset=dataset))
        """)
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mbt.tools.flops",
            f"--config={config_file}",
            "--spectrogram_shape=64,16,1",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "rgb [4, 32, 32, 3], spectrogram [64, 16, 1]" in out
    assert "classes: 309" in out  # VGGSound's head
    expected = flops.mbt_macs(tiny_mbt(), {"rgb": (4, 32, 32, 3), "spectrogram": (64, 16, 1)}, 309)
    assert f"analytic GFLOPs/example (1 multiply-add = 1 FLOP): {expected.total / 1e9:.4g}" in out
    assert "XLA / (2 x analytic): 1.0" in out
    assert "peak activation memory estimate" in out


def test_fusion_flops_script_writes_table_and_plot(tmp_path):
    script = script_fixtures.load_script("fusion_flops")
    script.main(["--out", str(tmp_path), "--xla_points", "0"])
    table = (tmp_path / "fusion_flops.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [int(r.split("|")[1]) for r in rows] == list(range(13))
    # Lf = 0: bottleneck, cross, concat, cross / bottleneck, Scenic's cross and its ratio.
    assert "| 0 | 217.9 | 267.7 | 239.9 | 1.23 | 478.7 | 2.20 |" in table
    assert (tmp_path / "fusion_flops.png").stat().st_size > 10_000


def test_sft_analytic_count_by_stage():
    count = flops.sft_macs(tiny_sft(), TINY_SHAPES, 10)
    # 32 tokens each (+ CLS); pooled 32 // 4 = 8 and 32 // 3 = 10; joint = fused CLS + 18.
    assert count.tokens == {
        "rgb": 33,
        "rgb pooled": 8,
        "spectrogram": 33,
        "spectrogram pooled": 10,
        "joint": 19,
    }
    block33, block19 = (sum(flops.encoder_block_macs(n, 64, 128).values()) for n in (33, 19))
    assert count.stages == {
        "patch_embedding": 32 * (2 * 8 * 8 * 3) * 64 + 32 * (8 * 8) * 64,
        "pre_fusion_blocks": 2 * block33,
        "sparse_pool_blocks": 2 * block33,
        "pooling": 0,
        "post_fusion_blocks": 2 * block19,
        "head": 64 * 10,
    }
    assert sum(count.stages.values()) == count.total
    topk = flops.sft_macs(tiny_sft(pool_type="cls_topk"), TINY_SHAPES, 10)
    # The CLS-attention scores: CLS query, 33 keys, 33 logits, per modality.
    assert topk.total - count.total == 2 * (64 * 64 + 33 * 64 * 64 + 33 * 64)


def test_sft_analytic_count_of_the_authors_sparse_block_and_windows():
    # Attention-only sparse block; rgb one window (pool size 0, pool_k 1), spectrogram
    # windows of 6 with padding 2: (32 + 4) // 6 = 6 tokens; attention-weighted average.
    config = tiny_sft(
        sparse_block="attention",
        pool_type="attn",
        pool_sizes={"rgb": 0, "spectrogram": 6},
        pool_paddings={"spectrogram": 2},
        pool_k=1,
    )
    count = flops.sft_macs(config, TINY_SHAPES, 10)
    assert (count.tokens["rgb pooled"], count.tokens["spectrogram pooled"]) == (1, 6)
    assert count.tokens["joint"] == 8
    block33 = flops.encoder_block_macs(33, 64, 128)
    assert count.stages["sparse_pool_blocks"] == 2 * (sum(block33.values()) - block33["mlp"])
    assert count.stages["pooling"] == 2 * 32 * 64  # the weighting, no score recomputation


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"pool_type": "cls_topk"},
        {"pool_type": "avg", "representation_size": 32},
        {"n_layers_pre_fusion": 0},
        {"sparse_block": "attention", "pool_sizes": {"rgb": 0, "spectrogram": 6}, "pool_k": 1},
        {"pool_type": "attn_topk", "pool_k": 6},
        {"sparse_block": "attention", "pool_type": "attn", "pool_paddings": {"rgb": 2}},
    ],
)
def test_sft_analytic_agrees_with_xla(overrides):
    report = flops.analyse(tiny_sft(**overrides), TINY_SHAPES, 10, xla="lowered")
    # As for MBT at width 64: ≈ 3.5 % of elementwise ops on top of the matrix products.
    assert 1.0 <= report.ratio < 1.06, report.lines()


def test_sft_b16_analytic_agrees_with_xla_lowering():
    report = flops.analyse(sft.default_config(), PAPER_SHAPES, 527, xla="lowered")
    assert report.analytic_gflops == pytest.approx(26.11, abs=0.01)  # 784 + 400 → 49 + 25 tokens
    assert 1.0 <= report.ratio < 1.01, report.lines()


def test_conv_taps_skip_the_padding():
    assert flops.conv_taps(8, 3) == 22 and flops.conv_taps(8, 1) == 8
    assert flops.conv_taps(2, 5) == 4 and flops.conv_taps(5, 4) == 5 * 4 - 3 - 1


ONE_FRAME = {"rgb": (1, 32, 32, 3), "spectrogram": (16, 32, 1)}


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"fusion_layer": 1},
        {"fusion_layer": 2},
        {"downsample": "conv", "kernel_size": (3, 5)},
        {"audio_map_size": (12, 20), "fusion_layer": 1},
        {"modalities": ("spectrogram",), "audio_slices": 1},
    ],
)
def test_clstm_analytic_agrees_with_xla_on_one_frame(overrides):
    """With T = 1 the scan runs once, so XLA's count (one loop body) is the whole pass."""
    config = tiny_clstm(**overrides)
    shapes = {m: ONE_FRAME[m] for m in config.modalities}
    report = flops.analyse(config, shapes, 10, xla="lowered")
    assert 1.0 <= report.ratio < 1.05, report.lines()


def test_clstm_count_grows_with_time_steps_and_xla_counts_every_step():
    four = {"rgb": (4, 32, 32, 3), "spectrogram": (64, 32, 1)}
    one = flops.clstm_macs(tiny_clstm(), ONE_FRAME, 10)
    count = flops.clstm_macs(tiny_clstm(), four, 10)
    for name in ("convlstm_input_conv", "convlstm_hidden_conv", "resize"):
        assert count.macs[name] == 4 * one.macs[name]
    # Layer 0 on 16×16 maps (rgb 3 + audio 1 channels → 8; 46 real taps per row of 16 outputs),
    # layer 1 on 8×8 (8 → 16; 22 taps), one step; gates are 4·F wide.
    assert one.stages["layer_0"] == (46 * 46) * (4 * 32 + 8 * 32)
    assert one.stages["layer_1"] == (22 * 22) * (8 * 64 + 16 * 64)
    assert one.macs["head"] == 16 * 10
    # The recurrence is unrolled (no while loop), so XLA counts all 4 steps, as analysed.
    report = flops.analyse(tiny_clstm(), four, 10, xla="lowered")
    assert not report.xla.has_while_loop and 1.0 <= report.ratio < 1.05, report.lines()
    assert not any("lower bound" in line for line in report.lines())


@pytest.mark.parametrize(
    "config_file", ["configs/synthetic.py:model=sft", "configs/synthetic.py:model=clstm"]
)
def test_flops_tool_on_the_synthetic_sft_and_clstm_configs(config_file):
    """What `python -m mbt.tools.flops --config=<file>` runs; the parameter count is real."""
    config = siblings.load_config_file(os.path.join(REPO, config_file))
    shapes = flops.input_shapes_from_config(config)
    num_classes = flops.num_classes_from_config(config)
    report = flops.analyse(config.model, shapes, num_classes, xla="lowered")
    model = models.build_model(config.model, num_classes)
    inputs = {m: np.zeros((1,) + s, np.float32) for m, s in shapes.items()}
    # Really initialised (jitted: eager init of these models takes several times longer).
    params = jax.jit(
        lambda x: model.init(
            {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}, x, train=False
        )
    )(inputs)["params"]
    real = sum(math.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(params))
    assert report.num_params == real
    text = "\n".join(report.lines())
    assert f"parameters: {real:,}" in text
    assert report.analytic is not None and report.analytic.total > 0
    assert "analytic GFLOPs/example (1 multiply-add = 1 FLOP)" in text
    if config.model.name == "sft":
        assert 1.0 <= report.ratio < 1.07, text  # width 32: elementwise ops weigh ≈ 5.7 %
    else:
        assert 1.0 <= report.ratio < 1.05, text  # 4 frames, all counted (unrolled)
