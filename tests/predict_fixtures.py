"""Shared by test_export.py and test_predict.py: a tiny MBT with random parameters, its config
(a 'vggsound/tiny' dataset at 10 fps, short side 64) and a few media files."""

import functools

import jax
import ml_collections
import numpy as np

from mbt import models
from mbt.data import media
from mbt.data import pipeline
from mbt.data import synthetic

CLASS_NAMES = ("kettle", "marbles", "bell", "paper", "owl", "zipper")
RGB_SHAPE = (4, 16, 16, 3)  # tubelets 2x8x8 -> 2x2x2 tokens
SPEC_SHAPE = (32, 16, 1)  # 0.32 s at 10 ms hop, 16 mel bins; patches 8x8 -> 4x2 tokens
FPS, SHORT_SIDE = 10.0, 64  # vggsound/tiny stores frames like this


def tiny_config(fusion: str = "bottleneck") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    model = models.default_mbt_config()
    model.variant = None
    model.hidden_size, model.num_layers, model.num_heads, model.mlp_dim = 16, 2, 2, 32
    model.tokenizers.rgb.patches = (2, 8, 8)
    model.tokenizers.spectrogram.patches = (8, 8)
    model.fusion, model.fusion_layer, model.n_bottlenecks = fusion, 1, 2
    model.stochastic_droplayer_rate = 0.0
    config.model = model
    dataset = pipeline.default_dataset_config()
    dataset.name, dataset.builder_config = "vggsound", "tiny"
    dataset.num_frames, dataset.stride = RGB_SHAPE[0], 2
    dataset.frame_size, dataset.min_resize = RGB_SHAPE[1], 16
    dataset.audio_seconds, dataset.num_mel_bins = 0.32, SPEC_SHAPE[1]
    dataset.num_test_clips, dataset.num_spatial_crops = 2, 3
    config.dataset = dataset
    config.test_combine = "mean_logits"
    return config


def dataset_meta(multi_label: bool = False) -> pipeline.DatasetMeta:
    return pipeline.DatasetMeta(
        num_classes=len(CLASS_NAMES),
        class_names=CLASS_NAMES,
        class_splits=None,
        multi_label=multi_label,
        modalities=("rgb", "spectrogram"),
        input_shapes={"rgb": RGB_SHAPE, "spectrogram": SPEC_SHAPE},
        num_examples={"train": 10, "test": 3},
    )


def random_params(model, seed: int = 0) -> dict:
    """The model's parameter tree filled with N(0, 0.3^2) (the zero-initialised head too)."""
    inputs = {
        "rgb": np.zeros((1,) + RGB_SHAPE, np.float32),
        "spectrogram": np.zeros((1,) + SPEC_SHAPE, np.float32),
    }
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), inputs, train=False))
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: (0.3 * rng.standard_normal(s.shape)).astype(np.float32), shapes["params"]
    )


@functools.cache
def jitted_apply(model):
    """One compile per distinct model (flax modules with equal fields hash equal)."""
    return jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))


def write_media(
    directory, name: str, seconds: float, *, video: bool = True, audio: bool = True, seed: int = 0
) -> str:
    """A synthetic-dataset-style clip: a drifting grating (48x64, 10 fps) and a tone
    (22.05 kHz, so the reader resamples); `video=False` writes a .wav."""
    rng = np.random.default_rng(seed)
    grid = synthetic.ClassGrid(len(CLASS_NAMES))
    events = [synthetic.Event(0.0, seconds, [seed % grid.num_patterns], [seed % grid.num_tones])]
    path = str(directory / name)
    sound = synthetic.render_audio(grid, events, seconds, 22050, rng)
    if not video:
        media.write_wav(path, sound, 22050)
        return path
    frames = synthetic.render_frames(grid, events, int(round(seconds * FPS)), FPS, 48, 64, rng)
    media.write_clip(path, frames, FPS, sound if audio else None, 22050, preset="ultrafast")
    return path
