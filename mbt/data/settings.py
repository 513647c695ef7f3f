"""The input pipeline's settings and their defaults, importable without TensorFlow.

Config files (and `mbt.recipe`) build `config.dataset` from `default_dataset_config()`; the
pipeline (`mbt.data.pipeline`, TensorFlow) reads it. Keys: `mbt/data/pipeline.py` and
docs/config.md.
"""

from __future__ import annotations

import dataclasses

import ml_collections

STORED_SAMPLE_RATE = 16000  # Hz, every builder's stored audio


@dataclasses.dataclass(frozen=True)
class RgbAugment:
    """Training augmentation of RGB clips (each has an off switch).

    Attributes:
      random_flip: flip the whole clip left-right with probability 1/2.
      scale_jitter: resize the short side to `min_resize × s`, s ~ U[scale_min, scale_max]
        (kept ≥ the crop size), before the random crop; otherwise to `min_resize`.
      scale_min, scale_max: range of s.
      color: colour jitter (brightness, contrast, saturation, hue; one draw per clip) with
        probability `color_prob`, then grey-scale with probability `color_drop_prob`.
      brightness: max additive brightness change (images in [0, 1]).
      contrast, saturation: max relative change, factor in [1 - x, 1 + x].
      hue: max hue shift (fraction of the colour circle).
    """

    random_flip: bool = True
    scale_jitter: bool = True
    scale_min: float = 0.9
    scale_max: float = 1.33
    color: bool = False
    color_prob: float = 0.8
    color_drop_prob: float = 0.1
    brightness: float = 0.32
    contrast: float = 0.32
    saturation: float = 0.32
    hue: float = 0.08


@dataclasses.dataclass(frozen=True)
class SpecAugment:
    """SpecAugment masks (Park et al. 2019) on a `[time, mel]` spectrogram.

    Each mask's width is drawn uniformly from {0, ..., max width}, its start uniformly among
    the positions where it fits; masked cells are set to `mask_value` (0 = the mean of a
    normalised spectrogram).
    """

    num_freq_masks: int = 1
    max_freq_width: int = 48
    num_time_masks: int = 1
    max_time_width: int = 192
    mask_value: float = 0.0


def default_dataset_config() -> ml_collections.ConfigDict:
    """`config.dataset` with every key the pipeline reads, at MBT's values."""
    c = ml_collections.ConfigDict()
    c.name = "audioset"
    c.imports = ()
    c.builder_config = ""
    c.data_dir = ""
    c.train_split = ""
    c.eval_split = ""
    c.test_split = ""
    c.modalities = ("rgb", "spectrogram")
    c.video_fps = 0.0
    c.num_frames = 32
    c.stride = 2
    c.frame_size = 224
    c.min_resize = 256
    c.audio_seconds = 8.0
    c.sample_rate = STORED_SAMPLE_RATE
    c.num_mel_bins = 128
    c.window_ms = 25.0
    c.hop_ms = 10.0
    c.fft_length = 1024
    c.fmin = 0.0
    c.fmax = None
    c.mel_power = 2.0
    c.log_offset = 1e-6
    c.spec_mean = 1.102
    c.spec_std = 2.762
    c.spec_channels = 1
    c.use_precomputed_spectrogram = True
    c.spec_augment = ml_collections.ConfigDict(
        dict(
            enabled=True, num_freq_masks=1, max_freq_width=48, num_time_masks=1, max_time_width=192
        )
    )
    c.rgb_augment = ml_collections.ConfigDict(dataclasses.asdict(RgbAugment()))
    c.num_test_clips = 4
    c.num_spatial_crops = 1
    c.shuffle_buffer = 256
    c.synthetic = ml_collections.ConfigDict(
        dict(
            num_clips=0,
            seed=0,
            num_classes=0,
            frame_size=64,
            fps=10.0,
            clip_seconds=2.0,
            edge_cases=True,
        )
    )
    c.tfrecord_pattern = ""
    c.num_classes = 0
    c.class_names = ()
    c.multi_label = True
    c.class_splits = ()
    return c
