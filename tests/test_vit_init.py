"""ViT → MBT initialisation: the three checkpoint formats, the mapping rules, and the report.

Tiny ViT checkpoints (width 16, patches 8x8, a 4x4 position grid) are written inside the tests
in each on-disk layout; nothing is downloaded.
"""

import functools
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import serialization

from mbt import models
from mbt.pretrained import default_init_from_config
from mbt.pretrained import formats
from mbt.pretrained import init_from
from mbt.pretrained import train_state
from mbt.pretrained import vit_init

D, HEADS, MLP, PATCH, GRID, CLASSES = 16, 2, 32, 8, 4, 5
VIT_RENAMES = {
    "MultiHeadDotProductAttention_0": "MultiHeadDotProductAttention_1",
    "LayerNorm_1": "LayerNorm_2",
    "MlpBlock_0": "MlpBlock_3",
}
RGB_SHAPE = (4, 16, 16, 3)  # per example → tubelets (2, 8, 8): grid (2, 2, 2)
SPEC_SHAPE = (32, 16, 1)  # → patches (8, 8): grid (4, 2)


def make_vit(seed=0, layers=2, posemb=None):
    """Canonical tiny ViT weights in Scenic naming (flat keys), with a CLS position."""
    rng = np.random.default_rng(seed)
    normal = lambda *shape: rng.normal(size=shape).astype(np.float32)  # noqa: E731
    w = {
        "embedding/kernel": normal(PATCH, PATCH, 3, D),
        "embedding/bias": normal(D),
        "cls": normal(1, 1, D),
        "pos_embedding": normal(1, 1 + GRID * GRID, D) if posemb is None else posemb,
        "Transformer/encoder_norm/scale": normal(D),
        "Transformer/encoder_norm/bias": normal(D),
        "head/kernel": normal(D, CLASSES),
        "head/bias": normal(CLASSES),
        "pre_logits/kernel": normal(D, D),
        "pre_logits/bias": normal(D),
    }
    for layer in range(layers):
        for key in sorted(vit_init.BLOCK_KEYS):
            shape = {
                "query": (D, HEADS, D // HEADS),
                "key": (D, HEADS, D // HEADS),
                "value": (D, HEADS, D // HEADS),
                "out": (HEADS, D // HEADS, D),
            }
            name = key.split("/")[1]
            if key.endswith("kernel"):
                shape = shape.get(name) or ((D, MLP) if name == "Dense_0" else (MLP, D))
            elif name in ("query", "key", "value"):
                shape = (HEADS, D // HEADS)
            else:
                shape = (MLP,) if name == "Dense_0" else (D,)
            w[f"Transformer/encoderblock_{layer}/{key}"] = normal(*shape)
    return w


def write_vit_npz(path, w):
    """The `vision_transformer` layout: renamed block members, CLS position in the posemb."""
    out = {}
    for key, value in w.items():
        if key == "pos_embedding":
            key = "Transformer/posembed_input/pos_embedding"
        for ours, theirs in VIT_RENAMES.items():
            key = key.replace(f"/{ours}/", f"/{theirs}/")
        out[key] = value
    np.savez(path, **out)
    return str(path)


def write_big_vision_npz(path, w):
    """big_vision: `params/` prefix, scanned (stacked) blocks, no CLS position, optimizer keys."""
    out = {"opt/momentum/cls": np.zeros(3, np.float32)}
    stacked = {}
    for key, value in w.items():
        if key.startswith("Transformer/encoderblock_"):
            stacked.setdefault(key.split("/", 2)[2], []).append(value)
        elif key == "pos_embedding":
            out["params/pos_embedding"] = value[:, 1:]
        else:
            out[f"params/{key}"] = value
    for key, values in stacked.items():
        out[f"params/Transformer/encoderblock/{key}"] = np.stack(values)
    np.savez(path, **out)
    return str(path)


def write_flax_checkpoint(directory, w, step, layout="optimizer/target", orbax=False):
    """A Scenic ViT train state `checkpoint_<step>`, head named output_projection: a msgpack
    file, or with `orbax` the orbax directory flax's `save_checkpoint` writes today."""
    flat = {}
    for key, value in w.items():
        key = {"pos_embedding": "Transformer/posembed_input/pos_embedding"}.get(key, key)
        flat[key.replace("head/", "output_projection/")] = value
    params = formats.unflatten(flat)
    state = (
        {"optimizer": {"target": params, "state": {"step": step}}, "global_step": step}
        if layout == "optimizer/target"
        else {"params": params, "global_step": step}
    )
    directory.mkdir(exist_ok=True)
    if orbax:
        ocp.PyTreeCheckpointer().save(str(directory / f"checkpoint_{step}"), state)
    else:
        (directory / f"checkpoint_{step}").write_bytes(serialization.msgpack_serialize(state))
    return str(directory)


def tiny_model_config(**overrides):
    config = models.default_mbt_config()
    config.variant = None
    config.hidden_size, config.num_heads, config.mlp_dim, config.num_layers = D, HEADS, MLP, 2
    config.tokenizers.rgb.patches = (2, PATCH, PATCH)
    config.tokenizers.spectrogram.patches = (PATCH, PATCH)
    config.fusion_layer = 1
    config.stochastic_droplayer_rate = 0.0
    config.update(overrides)
    return config


def input_shapes_of(model_config):
    shapes = {"rgb": RGB_SHAPE, "spectrogram": SPEC_SHAPE}
    return {m: shapes[m] for m in model_config.modalities}


def fresh_params(model_config, input_shapes, fill=7.0):
    """Params of the right shapes without running init (values `fill`, to spot fresh ones)."""
    model = models.build_model(model_config, CLASSES)
    dummy = {m: jax.ShapeDtypeStruct((1,) + tuple(s), jnp.float32) for m, s in input_shapes.items()}
    abstract = jax.eval_shape(
        lambda x: model.init({"params": jax.random.PRNGKey(0)}, x, train=False), dummy
    )
    return jax.tree.map(lambda s: np.full(s.shape, fill, s.dtype), abstract["params"])


def full_config(model_config, checkpoint_path, **init_from_overrides):
    config = ml_collections.ConfigDict(
        {"model": model_config, "init_from": default_init_from_config()}
    )
    config.init_from.checkpoint_path = checkpoint_path
    config.init_from.update(init_from_overrides)
    return config


@functools.cache
def jitted_apply(model):
    return jax.jit(lambda params, inputs: model.apply({"params": params}, inputs, train=False))


@pytest.fixture(scope="module")
def vit_npz(tmp_path_factory):
    return write_vit_npz(tmp_path_factory.mktemp("vit") / "ViT-tiny.npz", make_vit())


# --- formats -----------------------------------------------------------------------------


def test_three_formats_detected_and_read_to_the_same_weights(tmp_path, vit_npz):
    w = make_vit()
    big_vision = write_big_vision_npz(tmp_path / "bv.npz", w)
    flax_dir, orbax_dir = tmp_path / "flax", tmp_path / "flax_orbax"
    write_flax_checkpoint(flax_dir, make_vit(seed=1), step=3)  # older: must not be picked
    write_flax_checkpoint(flax_dir, w, step=7)
    write_flax_checkpoint(orbax_dir, make_vit(seed=1), step=3, layout="params", orbax=True)
    write_flax_checkpoint(orbax_dir, w, step=7, layout="params", orbax=True)

    assert formats.detect_format(vit_npz) == "vit_npz"
    assert formats.detect_format(big_vision) == "big_vision_npz"
    assert formats.detect_format(str(flax_dir)) == "flax"
    assert formats.detect_format(str(orbax_dir)) == "flax"
    paths = (vit_npz, big_vision, str(flax_dir), str(orbax_dir))
    loaded = {path: vit_init.load_vit(path) for path in paths}
    reference = loaded[vit_npz]
    assert reference.num_layers == 2
    np.testing.assert_array_equal(reference.posemb_cls, w["pos_embedding"][0, 0])
    np.testing.assert_array_equal(
        reference.posemb_grid, w["pos_embedding"][0, 1:].reshape(GRID, GRID, D)
    )
    np.testing.assert_array_equal(
        reference.arrays["block_1/MultiHeadDotProductAttention_0/query/kernel"],
        w["Transformer/encoderblock_1/MultiHeadDotProductAttention_0/query/kernel"],
    )
    assert (
        reference.sources["block_1/LayerNorm_1/scale"]
        == "Transformer/encoderblock_1/LayerNorm_2/scale"
    )
    for path, vit in loaded.items():
        assert sorted(vit.arrays) == sorted(reference.arrays), path
        for key, value in reference.arrays.items():
            np.testing.assert_array_equal(vit.arrays[key], value, err_msg=f"{path}: {key}")
        np.testing.assert_array_equal(vit.posemb_grid, reference.posemb_grid)
    assert loaded[big_vision].posemb_cls is None  # big_vision adds no position to the CLS
    assert loaded[big_vision].unrecognised == ["opt/momentum/cls"]
    assert (
        loaded[big_vision].sources["block_1/LayerNorm_1/scale"]
        == "params/Transformer/encoderblock/LayerNorm_1/scale[1]"
    )
    assert loaded[big_vision].sources["pos_embedding"] == "params/pos_embedding"
    np.testing.assert_array_equal(loaded[str(flax_dir)].posemb_cls, reference.posemb_cls)
    np.testing.assert_array_equal(loaded[str(orbax_dir)].posemb_cls, reference.posemb_cls)


def test_unreadable_checkpoints_are_clear_errors(tmp_path):
    garbage = tmp_path / "checkpoint_1"
    garbage.write_bytes(b"\x00\x01 not msgpack")
    with pytest.raises(ValueError, match="checkpoint_1"):
        vit_init.load_vit(str(garbage), "flax")
    with pytest.raises(FileNotFoundError, match="neither a file nor a directory"):
        train_state.locate(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="checkpoint_<step>"):
        train_state.locate(str(tmp_path / "empty"))
    np.savez(tmp_path / "not_vit.npz", foo=np.zeros(3))
    with pytest.raises(ValueError, match="embedding/kernel"):
        vit_init.load_vit(str(tmp_path / "not_vit.npz"))


# --- mapping rules and report ------------------------------------------------------------


def test_report_categories_copies_and_unused_keys(vit_npz):
    """3-layer bottleneck MBT from a 2-layer ViT, grids from config.dataset."""
    model_config = tiny_model_config(num_layers=3)
    params = fresh_params(model_config, input_shapes_of(model_config))
    config = full_config(model_config, vit_npz)
    config.dataset = {"num_frames": RGB_SHAPE[0], "frame_size": RGB_SHAPE[1], "num_mel_bins": 16}
    new, report = init_from(config, params)

    flat_new, flat_fresh = formats.flatten(new), formats.flatten(params)
    assert [e.path for e in report.entries] == list(flat_fresh)  # every parameter, once
    assert jax.tree.structure(new) == jax.tree.structure(params)
    assert all(
        flat_new[k].shape == v.shape and flat_new[k].dtype == np.float32
        for k, v in flat_fresh.items()
    )
    expected = {}
    for path in flat_fresh:
        if path.startswith(("Transformer/encoderblock_0", "Transformer/encoderblock_1")):
            expected[path] = "loaded"
        elif path.startswith("Transformer/encoderblock_2"):
            expected[path] = "fresh"
    expected.update(
        {
            "embedding/kernel": "inflated",
            "embedding/bias": "loaded",
            "embedding_spectrogram/kernel": "resized",
            "embedding_spectrogram/bias": "loaded",
            "Transformer/posembed_input/pos_embedding": "resized",
            "Transformer/posembed_input_spectrogram/pos_embedding": "resized",
            "bottleneck": "resized",
            "cls": "loaded",
            "clsspectrogram": "loaded",
            "Transformer/encoder_norm/scale": "loaded",
            "Transformer/encoder_norm/bias": "loaded",
            "output_projection/kernel": "fresh",
            "output_projection/bias": "fresh",
        }
    )
    assert {e.path: e.category for e in report.entries} == expected
    for path, category in expected.items():
        if category == "fresh":
            np.testing.assert_array_equal(flat_new[path], flat_fresh[path])
    assert set(report.unused_checkpoint_keys) == {
        "head/kernel",
        "head/bias",
        "pre_logits/kernel",
        "pre_logits/bias",
    }
    table = report.table()
    assert all(path in table for path in flat_fresh)
    assert "inflated 1" in report.summary() and "fresh" in str(report)

    w = make_vit()
    vit_block = "Transformer/encoderblock_1/MlpBlock_0/Dense_0/kernel"
    for branch in ("encoderblock_1", "encoderblock_1_spectrogram"):
        np.testing.assert_array_equal(
            flat_new[f"Transformer/{branch}/MlpBlock_0/Dense_0/kernel"], w[vit_block]
        )
        np.testing.assert_array_equal(  # LayerNorm_2 of vision_transformer → LayerNorm_1
            flat_new[f"Transformer/{branch}/LayerNorm_1/scale"],
            w["Transformer/encoderblock_1/LayerNorm_1/scale"],
        )
    for cls in ("cls", "clsspectrogram"):  # every modality's CLS, not only rgb's
        np.testing.assert_array_equal(flat_new[cls], w["cls"])
    np.testing.assert_allclose(
        flat_new["embedding_spectrogram/kernel"],
        w["embedding/kernel"].sum(axis=2, keepdims=True),
        rtol=1e-6,
    )
    kernel_3d = flat_new["embedding/kernel"]
    np.testing.assert_array_equal(kernel_3d[1], w["embedding/kernel"])  # central frame t//2
    assert not kernel_3d[0].any()


def test_resize_grid_is_bilinear_and_keeps_constants():
    constant = np.full((4, 4, 3), 2.5, np.float32)
    for size in ((4, 4), (2, 2), (7, 3), (50, 8), (1, 1)):
        np.testing.assert_allclose(vit_init.resize_grid(constant, size), 2.5, rtol=1e-6)
    grid = np.random.default_rng(0).normal(size=(4, 4, 3)).astype(np.float32)
    np.testing.assert_allclose(vit_init.resize_grid(grid, (4, 4)), grid, rtol=1e-6)
    # Halving with half-pixel centres samples between pixel pairs: 2x2 block means.
    halved = grid.reshape(2, 2, 2, 2, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(vit_init.resize_grid(grid, (2, 2)), halved, rtol=1e-5, atol=1e-6)
    ramp = np.array([0.0, 1.0], np.float32)[:, None, None]
    np.testing.assert_allclose(vit_init.resize_grid(ramp, (4, 1))[:, 0, 0], [0, 0.25, 0.75, 1])
    np.testing.assert_allclose(vit_init.resize_tokens(np.full((16, 2), 3.0), 5), 3.0)


@pytest.mark.parametrize("inflation", vit_init.INFLATIONS)
def test_inflated_kernels_sum_to_the_2d_kernel(inflation):
    """On a static video a tubelet sums its frames' responses: equal to the 2-D kernel's."""
    kernel = np.random.default_rng(1).normal(size=(PATCH, PATCH, 3, D)).astype(np.float32)
    inflated = vit_init.inflate(kernel, 4, inflation)
    assert inflated.shape == (4, PATCH, PATCH, 3, D)
    np.testing.assert_allclose(inflated.sum(axis=0), kernel, rtol=1e-5, atol=1e-6)
    if inflation == "central_frame":
        assert [bool(inflated[t].any()) for t in range(4)] == [False, False, True, False]
    else:
        np.testing.assert_allclose(inflated[0], kernel / 4, rtol=1e-6)


def test_position_embeddings_from_a_constant_grid_and_temporal_options(tmp_path):
    posemb = np.full((1, 1 + GRID * GRID, D), 0.5, np.float32)
    posemb[0, 0] = -1.0  # the CLS position
    path = write_vit_npz(tmp_path / "const.npz", make_vit(posemb=posemb))
    model_config = tiny_model_config()
    shapes = input_shapes_of(model_config)
    params = fresh_params(model_config, shapes)

    new, _ = init_from(full_config(model_config, path), params, shapes)
    rgb = new["Transformer"]["posembed_input"]["pos_embedding"][0]
    spec = new["Transformer"]["posembed_input_spectrogram"]["pos_embedding"][0]
    for table in (rgb, spec):
        np.testing.assert_array_equal(table[0], -1.0)  # CLS position kept
        np.testing.assert_allclose(table[1:], 0.5, rtol=1e-6)
    np.testing.assert_allclose(new["bottleneck"], 0.5, rtol=1e-6)

    learned, report = init_from(
        full_config(model_config, path, temporal_posemb="learned"), params, shapes
    )
    frames = learned["Transformer"]["posembed_input"]["pos_embedding"][0, 1:].reshape(2, 4, D)
    step_offset = frames - 0.5  # per time step, the same offset at every spatial position
    np.testing.assert_allclose(step_offset, np.repeat(step_offset[:, :1], 4, axis=1), atol=1e-6)
    assert float(np.abs(step_offset[0] - step_offset[1]).max()) > 1e-3
    assert (
        "temporal"
        in report.entries[
            [e.path for e in report.entries].index("Transformer/posembed_input/pos_embedding")
        ].note
    )

    untouched, report = init_from(
        full_config(model_config, path, temporal_posemb="none"), params, shapes
    )
    assert report.category_of("Transformer/posembed_input/pos_embedding") == "fresh"
    np.testing.assert_array_equal(untouched["Transformer"]["posembed_input"]["pos_embedding"], 7.0)
    assert report.category_of("Transformer/posembed_input_spectrogram/pos_embedding") == "resized"


def test_big_vision_checkpoint_without_cls_position_gives_zero_cls_position(tmp_path):
    path = write_big_vision_npz(tmp_path / "bv.npz", make_vit())
    model_config = tiny_model_config(modalities=("spectrogram",))
    shapes = input_shapes_of(model_config)
    new, report = init_from(
        full_config(model_config, path), fresh_params(model_config, shapes), shapes
    )
    assert report.checkpoint_format == "big_vision_npz"
    np.testing.assert_array_equal(
        new["Transformer"]["posembed_input_spectrogram"]["pos_embedding"][0, 0], 0.0
    )
    np.testing.assert_array_equal(new["cls"], make_vit()["cls"])  # single modality: 'cls'


# --- numerical equivalences (jitted forward passes) ---------------------------------------


def test_central_frame_inflated_model_on_static_video_equals_2d_model(vit_npz):
    """rgb-only: tubelets (2, 8, 8) with central-frame inflation on a static 4-frame video give
    the same logits as the 2-D model (temporal sampling of 2 frames) with tiled posemb."""
    base = dict(modalities=("rgb",), classifier="token")
    config_3d = tiny_model_config(**base)
    config_2d = tiny_model_config(**base)
    config_2d.tokenizers.rgb = {
        "kind": "temporal_sampling",
        "patches": (PATCH, PATCH),
        "n_sampled_frames": 2,
    }
    frame = np.random.default_rng(3).normal(size=(2, 1) + RGB_SHAPE[1:]).astype(np.float32)
    video = {"rgb": np.repeat(frame, RGB_SHAPE[0], axis=1)}
    logits = {}
    for name, model_config in (("3d", config_3d), ("2d", config_2d)):
        shapes = input_shapes_of(model_config)
        params, report = init_from(
            full_config(model_config, vit_npz, restore_output_projection=True),
            fresh_params(model_config, shapes),
            shapes,
        )
        assert not report.by_category()["fresh"]  # everything comes from the ViT
        logits[name] = np.asarray(
            jitted_apply(models.build_model(model_config, CLASSES))(params, video)
        )
    assert float(np.abs(logits["2d"]).max()) > 1e-2
    np.testing.assert_allclose(logits["3d"], logits["2d"], rtol=1e-4, atol=1e-4)


def test_one_channel_summed_kernel_equals_three_tiled_channels(vit_npz):
    spectrogram = np.random.default_rng(4).normal(size=(2,) + SPEC_SHAPE).astype(np.float32)
    logits = {}
    for channels in (1, 3):
        model_config = tiny_model_config(modalities=("spectrogram",))
        shapes = {"spectrogram": SPEC_SHAPE[:2] + (channels,)}
        params, report = init_from(
            full_config(model_config, vit_npz, restore_output_projection=True),
            fresh_params(model_config, shapes),
            shapes,
        )
        expected = "resized" if channels == 1 else "loaded"
        assert report.category_of("embedding_spectrogram/kernel") == expected
        inputs = {"spectrogram": np.repeat(spectrogram, channels, axis=-1)}
        logits[channels] = np.asarray(
            jitted_apply(models.build_model(model_config, CLASSES))(params, inputs)
        )
    assert float(np.abs(logits[1]).max()) > 1e-2
    np.testing.assert_allclose(logits[1], logits[3], rtol=1e-4, atol=1e-4)


# --- errors ------------------------------------------------------------------------------


def test_errors_name_the_parameter_key_or_value(vit_npz):
    model_config = tiny_model_config()
    shapes = input_shapes_of(model_config)
    params = fresh_params(model_config, shapes)

    with pytest.raises(ValueError, match=r"config\.init_from\.input_shapes\.rgb"):
        init_from(full_config(model_config, vit_npz), params)
    with pytest.raises(ValueError, match=r"config\.init_from\.temporal_posemb='sideways'"):
        init_from(full_config(model_config, vit_npz, temporal_posemb="sideways"), params, shapes)
    with pytest.raises(ValueError, match=r"config\.init_from\.checkpoint_format='h5'"):
        init_from(full_config(model_config, vit_npz, checkpoint_format="h5"), params, shapes)
    with pytest.raises(ValueError, match="posembed_input_spectrogram"):
        init_from(full_config(model_config, vit_npz), params, dict(shapes, spectrogram=(64, 16, 1)))

    small_patches = tiny_model_config()
    small_patches.tokenizers.spectrogram.patches = (4, 4)
    small_shapes = {"rgb": RGB_SHAPE, "spectrogram": (16, 8, 1)}
    with pytest.raises(ValueError, match=r"embedding_spectrogram/kernel.*patches"):
        init_from(
            full_config(small_patches, vit_npz),
            fresh_params(small_patches, small_shapes),
            small_shapes,
        )

    wide = tiny_model_config(hidden_size=32, num_heads=2)
    with pytest.raises(ValueError, match=r"embedding/kernel.*hidden_size"):
        init_from(full_config(wide, vit_npz), fresh_params(wide, shapes), shapes)

    seven_classes = jax.tree.map(lambda x: x, params)
    seven_classes["output_projection"] = {
        "kernel": np.zeros((D, 7), np.float32),
        "bias": np.zeros((7,), np.float32),
    }
    with pytest.raises(ValueError, match=r"output_projection/kernel.*\(16, 7\)"):
        init_from(
            full_config(model_config, vit_npz, restore_output_projection=True),
            seven_classes,
            shapes,
        )


def test_pretrained_package_imports_and_reads_orbax_without_tensorflow(tmp_path):
    script = textwrap.dedent(f"""
        import importlib.util, sys

        # As if not installed: importing them fails, find_spec (etils' probe) says None.
        sys.modules.update(tensorflow=None, tensorflow_datasets=None)
        assert importlib.util.find_spec('tensorflow') is None
        import mbt.pretrained, mbt.pretrained.vit_init, mbt.pretrained.scenic_checkpoint
        import numpy as np, orbax.checkpoint as ocp
        from mbt.pretrained import train_state
        state = {{'params': {{'cls': np.ones((1, 1, 4), np.float32)}}, 'global_step': 5}}
        ocp.PyTreeCheckpointer().save('{tmp_path}/checkpoint_5', state)
        stored = train_state.read_params('{tmp_path}')
        assert stored.step == 5 and stored.params['cls'].sum() == 4, stored
        print('ok')
    """)
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        timeout=120,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
