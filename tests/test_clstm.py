"""Tests of the early-fusion C-LSTM: parameter tree, audio slicing, where streams meet, training."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.traverse_util import flatten_dict

from mbt import models
from mbt.models import clstm

CLASSES = 3
RGB_SHAPE = (2, 3, 8, 8, 3)  # [B, T, H, W, C]
SPEC_SHAPE = (2, 12, 8, 1)  # [B, time, mel, C] → 3 slices of 4×8


def tiny_config(**overrides):
    config = clstm.default_config()
    config.update(num_layers=2, features=(4, 6), spatial_strides=(2, 1), kernel_size=(3, 3))
    config.update(overrides)
    return config


def make_inputs(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "rgb": jnp.asarray(rng.normal(size=RGB_SHAPE), jnp.float32),
        "spectrogram": jnp.asarray(rng.normal(size=SPEC_SHAPE), jnp.float32),
    }


def init(config, inputs):
    model = models.build_model(config, CLASSES)
    params = model.init({"params": jax.random.PRNGKey(0)}, inputs, train=False)["params"]
    return model, params


def shapes_of(params):
    return {"/".join(k): v.shape for k, v in flatten_dict(params).items()}


def cell_shapes(prefix, in_channels, features):
    return {
        f"{prefix}/cell/ih/kernel": (3, 3, in_channels, 4 * features),
        f"{prefix}/cell/ih/bias": (4 * features,),
        f"{prefix}/cell/hh/kernel": (3, 3, features, 4 * features),
        f"{prefix}/cell/hh/bias": (4 * features,),
    }


@pytest.mark.parametrize("fusion_layer", [0, 1, 2])
def test_parameter_tree_and_logits_shape(fusion_layer):
    model, params = init(tiny_config(fusion_layer=fusion_layer), make_inputs())
    if fusion_layer == 0:  # inputs fused: 3 rgb + 1 audio channels
        expected = {**cell_shapes("convlstm_0", 4, 4), **cell_shapes("convlstm_1", 4, 6)}
        head_in = 6
    elif fusion_layer == 1:
        expected = {
            **cell_shapes("convlstm_0_rgb", 3, 4),
            **cell_shapes("convlstm_0_spectrogram", 1, 4),
            **cell_shapes("convlstm_1", 8, 6),
        }
        head_in = 6
    else:  # late: pooled features of both streams concatenated
        expected = {
            **cell_shapes("convlstm_0_rgb", 3, 4),
            **cell_shapes("convlstm_0_spectrogram", 1, 4),
            **cell_shapes("convlstm_1_rgb", 4, 6),
            **cell_shapes("convlstm_1_spectrogram", 4, 6),
        }
        head_in = 12
    expected.update(
        {"output_projection/kernel": (head_in, CLASSES), "output_projection/bias": (CLASSES,)}
    )
    assert shapes_of(params) == expected
    logits = model.apply({"params": params}, make_inputs(1), train=False)
    assert logits.shape == (2, CLASSES) and logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(logits)).all()


def test_conv_downsampling_adds_a_strided_convolution():
    config = tiny_config(downsample="conv", fusion_layer=1)
    model, params = init(config, make_inputs())
    shapes = shapes_of(params)
    assert shapes["convlstm_0_rgb/downsample/kernel"] == (2, 2, 3, 4)
    assert shapes["convlstm_0_spectrogram/downsample/kernel"] == (2, 2, 1, 4)
    # The shared layer has stride 1: no downsampling module; its input is already 4 + 4 channels.
    assert "convlstm_1/downsample/kernel" not in shapes
    assert shapes["convlstm_1/cell/ih/kernel"] == (3, 3, 4 + 4, 4 * 6)


def test_audio_is_cut_into_one_slice_per_frame():
    spectrogram = jnp.arange(2 * 14 * 5, dtype=jnp.float32).reshape(2, 14, 5, 1)
    frames = clstm.audio_to_frames(spectrogram, 3)
    assert frames.shape == (2, 3, 4, 5, 1)  # 14 // 3 = 4 bins per frame; 2 bins dropped
    for t in range(3):
        np.testing.assert_array_equal(frames[:, t], spectrogram[:, 4 * t : 4 * t + 4])
    resized = clstm.audio_to_frames(spectrogram, 3, map_size=(8, 8))
    assert resized.shape == (2, 3, 8, 8, 1)
    with pytest.raises(ValueError, match="cannot be cut into 20 frames"):
        clstm.audio_to_frames(spectrogram, 20)


def pooled_pair(model, params, inputs, changed, name):
    """Sown features `name` for `inputs` and `changed` (one apply: examples are independent)."""
    both = {m: jnp.concatenate([inputs[m], changed[m]], axis=0) for m in inputs}
    _, state = model.apply({"params": params}, both, train=False, mutable=["intermediates"])
    features = np.asarray(state["intermediates"][name][0])
    return np.split(features, 2)


def test_late_fusion_keeps_video_features_independent_of_audio():
    inputs = make_inputs(2)
    louder = dict(inputs, spectrogram=inputs["spectrogram"] * 3.0 + 1.0)
    late, late_params = init(tiny_config(fusion_layer=2), inputs)
    video, video_louder = pooled_pair(late, late_params, inputs, louder, "pooled_rgb")
    np.testing.assert_array_equal(video, video_louder)
    audio, audio_louder = pooled_pair(late, late_params, inputs, louder, "pooled_spectrogram")
    assert np.abs(audio - audio_louder).max() > 1e-4
    for fusion_layer in (0, 1):
        model, params = init(tiny_config(fusion_layer=fusion_layer), inputs)
        before, after = pooled_pair(model, params, inputs, louder, "pooled_fused")
        assert np.abs(before - after).max() > 1e-4, f"fusion_layer={fusion_layer}"


def test_jitted_training_fits_a_tiny_batch():
    inputs = make_inputs(3)
    labels = jax.nn.one_hot(jnp.asarray([0, 2]), CLASSES)
    model, params = init(tiny_config(fusion_layer=0, dropout_rate=0.1), inputs)
    optimizer = optax.adam(3e-2)

    @jax.jit
    def step(params, opt_state, key):
        def loss_fn(p):
            logits = model.apply({"params": p}, inputs, train=True, rngs={"dropout": key})
            return optax.softmax_cross_entropy(logits, labels).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss, grads

    opt_state = optimizer.init(params)
    params, opt_state, first_loss, grads = step(params, opt_state, jax.random.PRNGKey(0))
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    assert np.abs(np.asarray(grads["convlstm_0"]["cell"]["ih"]["kernel"])).sum() > 0
    for i in range(1, 30):
        params, opt_state, loss, _ = step(params, opt_state, jax.random.PRNGKey(i))
    assert np.isfinite(first_loss) and loss < 0.5 * first_loss


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"fusion_layer": 3}, "fusion_layer=3"),
        ({"features": (4, 6, 8)}, "features"),
        ({"spatial_strides": (0, 1)}, "spatial_strides"),
        ({"downsample": "avg"}, "downsample"),
        ({"kernel_size": (3,)}, "kernel_size"),
        ({"modalities": ()}, "modalities"),
    ],
)
def test_bad_config_names_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        models.build_model(tiny_config(**overrides), CLASSES)


def test_downsampling_too_far_is_reported():
    model = models.build_model(tiny_config(spatial_strides=(2, 8)), CLASSES)
    with pytest.raises(ValueError, match="spatial_strides"):
        model.init(jax.random.PRNGKey(0), make_inputs(), train=False)
