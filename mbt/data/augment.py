"""Training-time augmentation: crop boxes, flips and colour for RGB clips; SpecAugment.

All randomness is stateless (`tf.random.stateless_*` with an explicit `[2]` int seed), so an
example's augmentation depends only on its seed and the pipeline is reproducible under
parallel `map` and when resumed part-way.

RGB cropping works in the coordinates of the stored frames: "resize the short side to
`short_side` pixels, then crop `crop_size`²" is done as "cut the corresponding box out of
the stored frame (decoding only that box), then resize it to `crop_size`²", which gives the
same picture with less decoding and resizing.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf


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


def _band_mask(length: int | tf.Tensor, count: int, max_width: int, seed: tf.Tensor) -> tf.Tensor:
  """bool `[length]`, True inside `count` random bands of width ≤ max_width each."""
  if count <= 0 or max_width <= 0:
    return tf.zeros([length], tf.bool)
  width_seed, start_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  max_width = tf.minimum(max_width, length)
  widths = tf.random.stateless_uniform([count], width_seed, 0, max_width + 1, dtype=tf.int32)
  # Start uniform in [0, length - width]: scale a uniform [0, 1) draw per band.
  unit = tf.random.stateless_uniform([count], start_seed)
  starts = tf.cast(unit * tf.cast(length - widths + 1, tf.float32), tf.int32)
  positions = tf.range(length)[:, None]
  inside = (positions >= starts[None, :]) & (positions < (starts + widths)[None, :])
  return tf.reduce_any(inside, axis=1)


def spec_augment(spectrogram: tf.Tensor, seed: tf.Tensor, params: SpecAugment) -> tf.Tensor:
  """Frequency and time masking.

  Args:
    spectrogram: float `[time, mel]`.
    seed: int `[2]` stateless seed.
    params: mask counts and maximum widths.

  Returns:
    float `[time, mel]` with masked rows/columns set to `params.mask_value`.
  """
  time_seed, freq_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  shape = tf.shape(spectrogram)
  time_masked = _band_mask(shape[0], params.num_time_masks, params.max_time_width, time_seed)
  freq_masked = _band_mask(shape[1], params.num_freq_masks, params.max_freq_width, freq_seed)
  masked = time_masked[:, None] | freq_masked[None, :]
  return tf.where(masked, tf.cast(params.mask_value, spectrogram.dtype), spectrogram)


def crop_box(frame_hw: tf.Tensor, short_side: tf.Tensor, crop_size: int,
             offset_fraction: tf.Tensor) -> tf.Tensor:
  """Box in stored-frame pixels equal to a `crop_size`² crop after resizing.

  Args:
    frame_hw: int32 `[2]` stored frame height and width.
    short_side: float scalar, the short side (pixels) the frame is resized to.
    crop_size: side of the square crop in resized pixels.
    offset_fraction: float `[2]` in [0, 1], where the crop sits along y and x
      (0 = top/left, 0.5 = centre, 1 = bottom/right).

  Returns:
    int32 `[4]`: `[y, x, height, width]` in stored-frame pixels (inside the frame).
  """
  hw = tf.cast(frame_hw, tf.float32)
  scale = short_side / tf.reduce_min(hw)
  side = tf.clip_by_value(tf.round(crop_size / scale), 1.0, tf.reduce_min(hw))
  offset = tf.round((hw - side) * offset_fraction)
  side_i = tf.cast(side, tf.int32)
  return tf.concat([tf.cast(offset, tf.int32), tf.stack([side_i, side_i])], axis=0)


def random_crop_params(frame_hw: tf.Tensor, min_resize: int, crop_size: int,
                       params: RgbAugment, seed: tf.Tensor) -> tf.Tensor:
  """Random training crop box `[y, x, height, width]` (int32) with scale jitter."""
  scale_seed, offset_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  short_side = tf.constant(float(min_resize))
  if params.scale_jitter:
    short_side *= tf.random.stateless_uniform([], scale_seed, params.scale_min, params.scale_max)
  short_side = tf.maximum(short_side, float(crop_size))
  return crop_box(frame_hw, short_side, crop_size, tf.random.stateless_uniform([2], offset_seed))


def color_jitter(clip: tf.Tensor, seed: tf.Tensor, params: RgbAugment) -> tf.Tensor:
  """Colour augmentation of a clip, float `[T, H, W, 3]` in [0, 1] (same draw for all frames)."""
  seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 7))

  def jitter(x):
    if params.brightness > 0:
      x = tf.image.stateless_random_brightness(x, params.brightness, seeds[0])
    if params.contrast > 0:
      x = tf.image.stateless_random_contrast(x, 1 - params.contrast, 1 + params.contrast,
                                             seeds[1])
    if params.saturation > 0:
      x = tf.image.stateless_random_saturation(x, 1 - params.saturation,
                                               1 + params.saturation, seeds[2])
    if params.hue > 0:
      x = tf.image.stateless_random_hue(x, params.hue, seeds[3])
    return tf.clip_by_value(x, 0.0, 1.0)

  def drop(x):
    return tf.tile(tf.image.rgb_to_grayscale(x), [1, 1, 1, 3])

  if params.brightness or params.contrast or params.saturation or params.hue:
    apply = tf.random.stateless_uniform([], seeds[4]) < params.color_prob
    clip = tf.cond(apply, lambda: jitter(clip), lambda: clip)
  if params.color_drop_prob > 0:
    apply = tf.random.stateless_uniform([], seeds[5]) < params.color_drop_prob
    clip = tf.cond(apply, lambda: drop(clip), lambda: clip)
  return clip


def random_flip(clip: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Flips every frame of `[T, H, W, C]` left-right with probability 1/2."""
  flip = tf.random.stateless_uniform([], seed) < 0.5
  return tf.cond(flip, lambda: tf.reverse(clip, axis=[2]), lambda: clip)
