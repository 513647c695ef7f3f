"""The input pipeline's settings and their defaults, importable without TensorFlow.

Config files (and `mbt.recipe`) build `config.dataset` from `default_dataset_config()`; the
pipeline (`mbt.data.pipeline`, TensorFlow) reads it. Keys: `mbt/data/pipeline.py` and
docs/config.md.
"""

from __future__ import annotations

import dataclasses
import math
import os

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


TIME_WARP_BOUNDS = ("static", "dynamic")


def _is_count(value) -> bool:
    """An integer >= 0 (an integral float such as Scenic's `1.0` too)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return value >= 0 and float(value).is_integer()


@dataclasses.dataclass(frozen=True)
class SpecAugment:
    """SpecAugment (Park et al. 2019) on a `[time, mel]` spectrogram: time warp, then masks.

    Masks: each mask's width is drawn uniformly from {0, ..., max width}, its start uniformly
    among the positions where it fits; masked cells are set to `mask_value` (0 = the mean of
    a normalised spectrogram).

    Time warp (Lingvo's `SpectrumAugmenter`, which Scenic's MBT input pipeline calls; the
    same parameter names): with T frames, a piecewise-linear map of the time axis that fixes
    0 and T moves an origin frame o ~ U{1, ..., T - 2} to d = clip(o + w, 1, T - 1), and
    every output frame is linearly interpolated from the two input frames around its source
    position (`mbt.data.augment.warp_time`). The shift w is
      - `time_warp_bound='static'`: an integer ~ U{-W, ..., W}, W = `time_warp_max_frames`,
        then clipped to ±floor(`time_warp_max_ratio` × T);
      - `'dynamic'`: trunc(U(-1, 1) × floor(`time_warp_max_ratio` × T)) (no frame bound).
    As in Lingvo the warp is off when `time_warp_max_ratio` <= 0, or W = 0 with a static
    bound; the default W = 0 keeps it off.
    """

    num_freq_masks: int = 1
    max_freq_width: int = 48
    num_time_masks: int = 1
    max_time_width: int = 192
    mask_value: float = 0.0
    time_warp_max_frames: int = 0
    time_warp_max_ratio: float = 1.0
    time_warp_bound: str = "static"

    @property
    def time_warp_enabled(self) -> bool:
        """Whether the parameters warp at all (Lingvo's off switches)."""
        if self.time_warp_max_ratio <= 0:
            return False
        return self.time_warp_bound == "dynamic" or self.time_warp_max_frames > 0

    def validate(self) -> None:
        """Raises ValueError naming the `config.dataset.spec_augment` key of a bad value."""
        for key in ("num_freq_masks", "max_freq_width", "num_time_masks", "max_time_width"):
            value = getattr(self, key)
            if not _is_count(value):
                raise ValueError(
                    f"config.dataset.spec_augment.{key}={value!r} must be an integer >= 0"
                )
        value = self.time_warp_max_frames
        if not _is_count(value):
            raise ValueError(
                f"config.dataset.spec_augment.time_warp_max_frames={value!r} must be an "
                "integer >= 0 (frames; 0 = no warp with time_warp_bound='static')"
            )
        ratio = self.time_warp_max_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio >= 0:
            raise ValueError(
                "config.dataset.spec_augment.time_warp_max_ratio="
                f"{self.time_warp_max_ratio!r} must be >= 0 (fraction of the frames; 0 = "
                "no warp)"
            )
        if self.time_warp_bound not in TIME_WARP_BOUNDS:
            raise ValueError(
                f"config.dataset.spec_augment.time_warp_bound={self.time_warp_bound!r}; "
                f"allowed: {', '.join(TIME_WARP_BOUNDS)}"
            )


def spec_augment_settings(values) -> SpecAugment | None:
    """`SpecAugment` from the `config.dataset.spec_augment` mapping (None when disabled),
    validated."""
    if not values.get("enabled", True):
        return None
    defaults = dataclasses.asdict(SpecAugment())
    params = SpecAugment(**{k: values.get(k, v) for k, v in defaults.items() if k != "mask_value"})
    params.validate()
    return dataclasses.replace(
        params,
        num_freq_masks=int(params.num_freq_masks),
        max_freq_width=int(params.max_freq_width),
        num_time_masks=int(params.num_time_masks),
        max_time_width=int(params.max_time_width),
        time_warp_max_frames=int(params.time_warp_max_frames),
        time_warp_max_ratio=float(params.time_warp_max_ratio),
    )


# SpecAugment as the MBT paper states it: one frequency mask of <= 48 mel bins, one time mask
# of <= 192 frames, no time warp (the default; `mbt.recipe.SPEC_AUGMENT_RECIPES['paper']`).
PAPER_SPEC_AUGMENT = dict(
    num_freq_masks=1,
    max_freq_width=48,
    num_time_masks=1,
    max_time_width=192,
    time_warp_max_frames=0,
    time_warp_max_ratio=1.0,
    time_warp_bound="static",
)


def default_grain_threads(cores: int | None = None) -> int:
    """`dataset.grain_threads` by default: one grain thread per 4 CPU cores this process may
    use (`cores`, default its affinity), from 1 to 4. Each thread prepares one batch at a time
    and already cuts that batch's examples in parallel; on a 2-core host one thread gave the
    most clips per CPU-second (level with tf.data; four gave 12-15 % more clips per second of
    wall time at 0.84-1.00x tf.data's clips per CPU-second, results/benchmark_input_loaders.md),
    and hosts with more cores get more batches in flight."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(4, (cores or 1) // 4))


@dataclasses.dataclass(frozen=True)
class DatasetMeta:
    """What the trainer needs to know about the data.

    Attributes:
      num_classes: length of the label vectors.
      class_names: one name per label position.
      class_splits: label group sizes (EPIC: (97, 300)) or None.
      multi_label: labels are multi-hot (sigmoid loss) rather than one-hot.
      modalities: modalities in the batches.
      input_shapes: per-example shape of each modality, no batch dim, e.g.
        {'rgb': (32, 224, 224, 3), 'spectrogram': (800, 128, 1)}.
      num_examples: examples per split name (bad inputs already skipped by the builder).
    """

    num_classes: int
    class_names: tuple[str, ...]
    class_splits: tuple[int, ...] | None
    multi_label: bool
    modalities: tuple[str, ...]
    input_shapes: dict[str, tuple[int, ...]]
    num_examples: dict[str, int]


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
    c.train_fraction = 1.0
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
    c.spec_augment = ml_collections.ConfigDict(dict(enabled=True, **PAPER_SPEC_AUGMENT))
    c.rgb_augment = ml_collections.ConfigDict(dataclasses.asdict(RgbAugment()))
    c.num_test_clips = 4
    c.num_spatial_crops = 1
    c.shuffle_buffer = 256
    c.tfds_autocache = True
    c.loader = "auto"
    c.file_format = "tfrecord"
    c.grain_threads = default_grain_threads()
    c.grain_workers = 0
    c.keep_freed_buffers = True
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
    # Random batches of these shapes and the dataset's classes instead of its files
    # (mbt.data.random_input): for trying a machine or cluster before a dataset is built.
    c.random_input = ml_collections.ConfigDict(
        dict(enabled=False, train_examples=1024, test_examples=64)
    )
    c.tfrecord_pattern = ""
    c.num_classes = 0
    c.class_names = ()
    c.multi_label = True
    c.class_splits = ()
    return c


def train_fraction_size(num_examples: int, fraction: float) -> int:
    """How many examples of a train split of `num_examples` training reads at `fraction`.

    `ceil(fraction * num_examples)` (at least 1, so any fraction in (0, 1] trains on
    something); the pipeline reads the first that many examples of the split in stored
    order, over all hosts together (`config.dataset.train_fraction`, docs/config.md).
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"config.dataset.train_fraction={fraction!r} must be in (0, 1]")
    # The small tolerance keeps e.g. 0.3 * 10 (= 3.0000000000000004) at 3 examples.
    return max(1, math.ceil(fraction * num_examples - 1e-9))
