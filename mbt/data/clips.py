"""One stored example → one model input view: window sampling, frame decoding, log-mel.

A view is a time window of the example (`window_seconds` long, where it starts given as a
fraction of the free play `duration - window`) plus, for RGB, a square crop. The RGB clip takes
`num_frames` stored frames `stride` apart from the window start; the audio takes
`audio_seconds` from the same start. With RGB the start is a stored frame's time (the
sampled start rounded down to the frame grid), so sound and picture stay in step. Windows
running past the end of a short example wrap around to its beginning (frames and audio
alike). Only the JPEG frames of the clip are
decoded, and only their crop box (with `full_frame_decode`: the clip's frames whole, then
cropped).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import tensorflow as tf

from mbt.data import audio as audio_lib
from mbt.data import augment


class FrameSpans(NamedTuple):
    """A video's JPEG frames left inside its serialized record: frame i is the bytes
    `record[starts[i] : starts[i] + lengths[i]]` (`mbt.data.example_proto.bytes_spans`).

    A stored example may hold this as its `rgb` instead of the `[T]` strings: a view then
    copies out only the frames it decodes.
    """

    record: tf.Tensor  # string scalar
    starts: tf.Tensor  # int64 [T], bytes
    lengths: tf.Tensor  # int64 [T], bytes


def frame_count(frames: tf.Tensor | FrameSpans) -> tf.Tensor:
    """int32 scalar: how many frames are stored."""
    return tf.shape(frames.starts if isinstance(frames, FrameSpans) else frames)[0]


def gather_frames(frames: tf.Tensor | FrameSpans, indices: tf.Tensor) -> tf.Tensor:
    """Stored frames `indices` (int32 `[K]`): JPEG strings `[K]` or uint8 `[K, H, W, 3]`."""
    if isinstance(frames, FrameSpans):
        return tf.strings.substr(
            frames.record, tf.gather(frames.starts, indices), tf.gather(frames.lengths, indices)
        )
    return tf.gather(frames, indices)


@dataclasses.dataclass(frozen=True)
class ClipSettings:
    """How views are cut from examples (see `mbt.data.pipeline` for the config keys).

    Attributes:
      modalities: subset of ('rgb', 'spectrogram').
      fps: frame rate of the stored frames (Hz).
      num_frames: frames per RGB clip.
      stride: step between clip frames, in stored frames.
      crop_size: side of the square RGB crop (pixels).
      min_resize: short side (pixels) frames are resized to before cropping.
      audio_seconds: length of the audio window (s).
      log_mel: log-mel settings (sample rate, window, hop, mel bins, ...).
      spec_mean, spec_std: normalisation of the log-mel values.
      spec_channels: 1, or 3 (the spectrogram repeated, for RGB-pretrained patch embeddings).
      use_precomputed_spectrogram: take a stored `spectrogram` (100 frames/s) over `audio`.
      rgb_augment: training RGB augmentation.
      spec_augment: training SpecAugment, None for none.
      full_frame_decode: decode JPEG frames whole and crop the pixels (identical to cropping
        frames decoded up front) instead of `tf.io.decode_and_crop_jpeg` (faster, but with
        chroma subsampling the crop's edge pixels can differ).
    """

    modalities: tuple[str, ...]
    fps: float
    num_frames: int = 32
    stride: int = 2
    crop_size: int = 224
    min_resize: int = 256
    audio_seconds: float = 8.0
    log_mel: audio_lib.LogMelSettings = audio_lib.LogMelSettings()
    spec_mean: float = 1.102
    spec_std: float = 2.762
    spec_channels: int = 1
    use_precomputed_spectrogram: bool = True
    rgb_augment: augment.RgbAugment = augment.RgbAugment()
    spec_augment: augment.SpecAugment | None = augment.SpecAugment()
    full_frame_decode: bool = False

    @property
    def audio_samples(self) -> int:
        return int(round(self.audio_seconds * self.log_mel.sample_rate))

    @property
    def spec_frames(self) -> int:
        return self.log_mel.num_frames(self.audio_samples)

    @property
    def spec_frames_per_second(self) -> float:
        return 1000.0 / self.log_mel.hop_ms

    @property
    def window_seconds(self) -> float:
        """Length of the time window the selected modalities span (s)."""
        spans = []
        if "rgb" in self.modalities:
            spans.append(self.num_frames * self.stride / self.fps)
        if "spectrogram" in self.modalities:
            spans.append(self.audio_seconds)
        return max(spans)

    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {}
        if "rgb" in self.modalities:
            shapes["rgb"] = (self.num_frames, self.crop_size, self.crop_size, 3)
        if "spectrogram" in self.modalities:
            shapes["spectrogram"] = (
                self.spec_frames,
                self.log_mel.num_mel_bins,
                self.spec_channels,
            )
        return shapes


def duration_seconds(example: dict, settings: ClipSettings) -> tf.Tensor:
    """float32 scalar: the example's length (s), from the audio if kept, else the frames."""
    if "audio" in example:
        return tf.cast(tf.size(example["audio"]), tf.float32) / settings.log_mel.sample_rate
    if "spectrogram" in example:
        return tf.cast(tf.shape(example["spectrogram"])[0], tf.float32) / (
            settings.spec_frames_per_second
        )
    return tf.cast(frame_count(example["rgb"]), tf.float32) / settings.fps


def _wrapped_indices(first: tf.Tensor, count: int, step: int, length: tf.Tensor) -> tf.Tensor:
    """int32 `[count]`: first, first+step, ... modulo `length` (short examples wrap)."""
    return tf.math.floormod(first + tf.range(count) * step, tf.maximum(length, 1))


def sample_rgb(
    frames: tf.Tensor | FrameSpans,
    start_s: tf.Tensor,
    settings: ClipSettings,
    box_fn,
    seed: tf.Tensor | None,
) -> tf.Tensor:
    """RGB clip of a view.

    Args:
      frames: stored frames: JPEG strings `[T]`, uint8 `[T, H, W, 3]` or `FrameSpans`.
      start_s: float32 scalar, window start (s).
      settings: clip settings.
      box_fn: `box_fn(frame_hw)` → int32 `[y, x, h, w]` crop box in stored pixels.
      seed: int `[2]` for flip/colour augmentation, None for none.

    Returns:
      float32 `[num_frames, crop, crop, 3]` in [-1, 1]; zeros when the example has no frames.
    """
    n, crop = settings.num_frames, settings.crop_size
    num_stored = frame_count(frames)

    def clip_from_frames():
        first = tf.cast(tf.round(start_s * settings.fps), tf.int32)
        wanted = _wrapped_indices(first, n, settings.stride, num_stored)
        distinct, position = tf.unique(wanted)
        chosen = gather_frames(frames, distinct)
        if chosen.dtype == tf.string and settings.full_frame_decode:
            chosen = tf.map_fn(
                lambda jpeg: tf.io.decode_jpeg(jpeg, channels=3),
                chosen,
                fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8),
            )
        if chosen.dtype == tf.string:
            box = box_fn(tf.io.extract_jpeg_shape(chosen[0])[:2])
            cut = tf.map_fn(
                lambda jpeg: tf.io.decode_and_crop_jpeg(jpeg, box, channels=3),
                chosen,
                fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8),
            )
        else:
            box = box_fn(tf.shape(chosen)[1:3])
            cut = chosen[:, box[0] : box[0] + box[2], box[1] : box[1] + box[3], :]
        if seed is not None:
            flip_seed, color_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
            if settings.rgb_augment.random_flip:
                cut = augment.random_flip(cut, flip_seed)  # on uint8 before resizing: cheaper
        resized = tf.image.resize(cut, [crop, crop], method="bilinear")  # float32 in [0, 255]
        if seed is not None and settings.rgb_augment.color:
            # Colour map on [0, 1] values, folded with [0, 255] → [-1, 1] into one pass.
            matrix, offset = augment.color_affine(
                tf.reduce_mean(resized, axis=[1, 2], keepdims=True) / 255.0,
                color_seed,
                settings.rgb_augment,
            )
            clip = tf.clip_by_value(
                tf.einsum("thwc,dc->thwd", resized, matrix * (2.0 / 255.0)) + (2.0 * offset - 1.0),
                -1.0,
                1.0,
            )
        else:
            clip = resized * (2.0 / 255.0) - 1.0
        # tf.unique keeps first-occurrence order: without repeats the clip is already in order.
        return tf.cond(tf.size(distinct) == n, lambda: clip, lambda: tf.gather(clip, position))

    # Audio-only files are stored with zero frames: give a neutral (all-zero) clip.
    clip = tf.cond(num_stored > 0, clip_from_frames, lambda: tf.zeros([n, crop, crop, 3]))
    return tf.ensure_shape(clip, [n, crop, crop, 3])


def sample_spectrogram(
    example: dict, start_s: tf.Tensor, settings: ClipSettings, seed: tf.Tensor | None
) -> tf.Tensor:
    """Normalised log-mel of a view: float32 `[spec_frames, mel_bins, spec_channels]`.

    From the stored `spectrogram` when present and preferred, else computed from `audio`.
    `seed` (int `[2]`) turns on SpecAugment.
    """
    frames, bins = settings.spec_frames, settings.log_mel.num_mel_bins
    if "spectrogram" in example and (
        settings.use_precomputed_spectrogram or "audio" not in example
    ):
        stored = example["spectrogram"]
        first = tf.cast(tf.round(start_s * settings.spec_frames_per_second), tf.int32)
        rows = _wrapped_indices(first, frames, 1, tf.shape(stored)[0])
        log_mel = tf.gather(stored, rows)
    else:
        waveform = example["audio"]
        first = tf.cast(tf.round(start_s * settings.log_mel.sample_rate), tf.int32)
        samples = _wrapped_indices(first, settings.audio_samples, 1, tf.size(waveform))
        window = tf.cond(
            tf.size(waveform) > 0,
            lambda: tf.gather(waveform, samples),
            lambda: tf.zeros([settings.audio_samples]),
        )
        log_mel = audio_lib.log_mel_spectrogram(window, settings.log_mel)
    log_mel = tf.ensure_shape(log_mel, [frames, bins])
    spec = audio_lib.normalize(log_mel, settings.spec_mean, settings.spec_std)
    if seed is not None and settings.spec_augment is not None:
        spec = augment.spec_augment(spec, seed, settings.spec_augment)
    return tf.tile(spec[:, :, None], [1, 1, settings.spec_channels])


def make_view(
    example: dict,
    settings: ClipSettings,
    *,
    time_fraction: tf.Tensor,
    crop_position: tf.Tensor | None,
    seed: tf.Tensor | None,
) -> dict:
    """Model inputs of one view of `example`.

    Args:
      example: stored example (docs/design.md) with the selected modalities' data.
      settings: clip settings.
      time_fraction: float32 scalar in [0, 1]: the window starts at
        `time_fraction × max(0, duration - window_seconds)` (0.5 = centred).
      crop_position: float32 scalar in [0, 1]: where a crop of the frame resized to
        `min_resize` sits along the frame's long side (0 = left/top, 0.5 = centre,
        1 = right/bottom; centred across the short side); None for a random crop with scale
        jitter (training).
      seed: int `[2]` stateless seed for the training augmentation; None for none.

    Returns:
      dict with `rgb` `[num_frames, crop, crop, 3]` and/or `spectrogram`
      `[spec_frames, mel_bins, spec_channels]`, float32.
    """
    free = tf.maximum(duration_seconds(example, settings) - settings.window_seconds, 0.0)
    start_s = time_fraction * free
    if "rgb" in settings.modalities:
        # Start at a stored frame, so the audio window begins at the first frame's time.
        start_s = tf.floor(start_s * settings.fps + 1e-4) / settings.fps  # 1e-4: float error
    rgb_seed = spec_seed = crop_seed = None
    if seed is not None:
        rgb_seed, spec_seed, crop_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    view = {}
    if "rgb" in settings.modalities:
        if crop_position is None:

            def box_fn(hw):
                return augment.random_crop_params(
                    hw, settings.min_resize, settings.crop_size, settings.rgb_augment, crop_seed
                )
        else:

            def box_fn(hw):
                centre = tf.constant(0.5)
                fraction = tf.where(
                    hw[0] > hw[1],
                    tf.stack([crop_position, centre]),
                    tf.stack([centre, crop_position]),
                )
                return augment.crop_box(
                    hw, tf.constant(float(settings.min_resize)), settings.crop_size, fraction
                )

        view["rgb"] = sample_rgb(example["rgb"], start_s, settings, box_fn, rgb_seed)
    if "spectrogram" in settings.modalities:
        view["spectrogram"] = sample_spectrogram(example, start_s, settings, spec_seed)
    return view


def test_view_position(view: tf.Tensor, num_clips: int, num_crops: int):
    """(time_fraction, crop_position) of test view `view` in [0, num_clips × num_crops).

    Views are clip-major: view = clip × num_crops + crop. Clips are evenly spaced from the
    start to the end of the example (one clip: centred); crops sit at the start, centre and
    end of the frame's long side (one crop: centred).
    """
    view = tf.cast(view, tf.int32)
    clip, crop = view // num_crops, view % num_crops
    time_fraction = (
        tf.constant(0.5) if num_clips == 1 else tf.cast(clip, tf.float32) / float(num_clips - 1)
    )
    crop_position = (
        tf.constant(0.5) if num_crops == 1 else tf.cast(crop, tf.float32) / float(num_crops - 1)
    )
    return time_fraction, crop_position


def validate(settings: ClipSettings) -> None:
    """Raises ValueError naming the config key of an impossible setting."""
    checks = [
        (settings.num_frames >= 1, "num_frames", settings.num_frames, "must be >= 1"),
        (settings.stride >= 1, "stride", settings.stride, "must be >= 1"),
        (settings.crop_size >= 1, "frame_size", settings.crop_size, "must be >= 1"),
        (
            settings.min_resize >= settings.crop_size,
            "min_resize",
            settings.min_resize,
            f"must be >= frame_size={settings.crop_size}",
        ),
        (settings.audio_seconds > 0, "audio_seconds", settings.audio_seconds, "must be > 0"),
        (
            settings.spec_channels in (1, 3),
            "spec_channels",
            settings.spec_channels,
            "must be 1 or 3",
        ),
        (
            settings.fps > 0 and math.isfinite(settings.fps),
            "video_fps",
            settings.fps,
            "must be > 0",
        ),
        (settings.spec_std > 0, "spec_std", settings.spec_std, "must be > 0"),
    ]
    for ok, key, value, rule in checks:
        if not ok:
            raise ValueError(f"config.dataset.{key}={value!r} {rule}")
    settings.log_mel.validate()
    jitter = settings.rgb_augment
    if jitter.scale_jitter and not 0 < jitter.scale_min <= jitter.scale_max:
        raise ValueError(
            "config.dataset.rgb_augment: need 0 < scale_min <= scale_max, got "
            f"{jitter.scale_min}, {jitter.scale_max}"
        )
