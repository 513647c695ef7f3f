"""SpecAugment time warp (mbt.data.augment): the map, its random anchors, its settings."""

import dataclasses
import re

import numpy as np
import pytest
import tensorflow as tf

from mbt.data import augment
from mbt.data import settings

NO_MASKS = dict(num_freq_masks=0, num_time_masks=0)


def _warp(**kwargs):
    return settings.SpecAugment(**{**NO_MASKS, **kwargs})


def _lingvo_warp_matrix(length, origin, destination):
    """Lingvo's `_ConstructWarpMatrix` written out in numpy: M[i, j] = hat(s_i - j)."""
    frames = np.arange(length, dtype=np.float64)
    source = np.where(
        frames < destination,
        frames * origin / destination,
        origin + (frames - destination) * (length - origin) / (length - destination),
    )
    return np.maximum(0.0, 1.0 - np.abs(source[:, None] - frames[None, :]))


@pytest.mark.parametrize(
    "origin, destination, expected_source",
    [
        # Stretch the start: frames before 6 read [0, 4) at 2/3 speed, the rest at 3/2.
        (4, 6, [0, 2 / 3, 4 / 3, 2, 8 / 3, 10 / 3, 4, 5.5, 7, 8.5]),
        # Compress the start; the last frame's source 9 1/3 lies past frame 9: clamped to 9.
        (6, 4, [0, 1.5, 3, 4.5, 6, 20 / 3, 22 / 3, 8, 26 / 3, 9]),
    ],
)
def test_warp_time_reads_the_hand_computed_source_positions(origin, destination, expected_source):
    # A ramp: linear interpolation of frame values t returns the source position itself.
    ramp = np.arange(10, dtype=np.float32)[:, None] * np.array([[1.0, 2.0, -3.0]], np.float32)
    out = augment.warp_time(tf.constant(ramp), float(origin), float(destination)).numpy()
    assert out.shape == ramp.shape
    np.testing.assert_allclose(out, np.array(expected_source)[:, None] * ramp[1], atol=1e-5)
    # The same as Lingvo's warp matrix wherever its source lies inside the frames.
    lingvo = _lingvo_warp_matrix(10, origin, destination) @ ramp
    inside = np.array(expected_source) < 9 + 1e-9
    inside[-1] = origin <= destination
    np.testing.assert_allclose(out[inside], lingvo[inside], atol=1e-5)
    if origin > destination:  # Lingvo dims the last frame (weight 2/3 on frame 9, 1/3 lost)
        np.testing.assert_allclose(lingvo[-1], ramp[-1] * (2 / 3), atol=1e-5)


def test_warp_moves_a_marked_row_to_the_destination():
    length, mel = 40, 6
    params = _warp(time_warp_max_frames=8)
    for i in range(20):
        seed = tf.constant([5, i])
        origin, destination = (int(v) for v in augment.time_warp_anchors(length, seed, params))
        marked = np.zeros((length, mel), np.float32)
        marked[origin] = np.arange(1, mel + 1)
        out = augment.time_warp(tf.constant(marked), seed, params).numpy()
        # s(destination) = origin exactly: the marked row lands whole on the destination.
        np.testing.assert_array_equal(out[destination], marked[origin])
        assert np.argmax(out[:, 0]) == destination


def test_no_warp_at_zero_settings_or_equal_anchors():
    spec = tf.random.stateless_normal([30, 8], [1, 2])
    seed = tf.constant([3, 4])
    for params in (
        _warp(),  # default: time_warp_max_frames=0, static
        _warp(time_warp_max_frames=10, time_warp_max_ratio=0.0),  # Scenic's switch-off
        _warp(time_warp_max_frames=0, time_warp_max_ratio=0.0, time_warp_bound="dynamic"),
    ):
        assert not params.time_warp_enabled
        np.testing.assert_array_equal(augment.spec_augment(spec, seed, params), spec)
    np.testing.assert_array_equal(augment.warp_time(spec, 7.0, 7.0), spec)
    # Fewer than 3 frames: nothing to warp.
    short = tf.constant([[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(
        augment.time_warp(short, seed, _warp(time_warp_max_frames=5)), short
    )


def test_warp_keeps_shape_and_range_and_is_deterministic():
    params = _warp(time_warp_max_frames=12)
    warp = tf.function(lambda spec, seed: augment.spec_augment(spec, seed, params))
    spec = tf.random.stateless_uniform([64, 16], [7, 7], -3.0, 5.0)
    low, high = float(tf.reduce_min(spec)), float(tf.reduce_max(spec))
    outputs = []
    for i in range(12):
        out = warp(spec, tf.constant([1, i])).numpy()
        assert out.shape == (64, 16) and out.dtype == np.float32
        assert low - 1e-5 <= out.min() and out.max() <= high + 1e-5
        outputs.append(out)
    np.testing.assert_array_equal(warp(spec, tf.constant([1, 3])), outputs[3])
    assert sum(not np.array_equal(o, spec.numpy()) for o in outputs) >= 10


def _anchors(length, params, count=300):
    draws = [augment.time_warp_anchors(length, tf.constant([9, i]), params) for i in range(count)]
    origin, destination = np.array([[float(o), float(d)] for o, d in draws]).T
    return origin, destination


def test_anchor_bounds_static_and_dynamic():
    length = 50
    origin, destination = _anchors(length, _warp(time_warp_max_frames=5))
    assert origin.min() >= 1 and origin.max() <= length - 2
    assert destination.min() >= 1 and destination.max() <= length - 1
    shift = destination - origin
    assert np.all(np.abs(shift) <= 5)
    # Unclipped shifts cover {-5, ..., 5}, both ends included.
    interior = (origin > 5) & (origin < length - 6)
    assert set(shift[interior].astype(int)) == set(range(-5, 6))
    assert origin.max() - origin.min() > 40  # the origin spreads over the frames
    # The ratio bound clips a static warp: floor(0.05 x 50) = 2 frames.
    origin, destination = _anchors(length, _warp(time_warp_max_frames=5, time_warp_max_ratio=0.05))
    assert np.abs(destination - origin).max() == 2
    # Dynamic: the bound is floor(0.2 x 50) = 10 frames whatever time_warp_max_frames says.
    dynamic = _warp(time_warp_max_frames=1, time_warp_max_ratio=0.2, time_warp_bound="dynamic")
    origin, destination = _anchors(length, dynamic)
    shift = np.abs(destination - origin)
    assert shift.max() <= 10 and shift.max() >= 8


def test_masks_come_after_the_warp_and_draw_as_before():
    # A constant spectrogram warps to itself, so the masks must be exactly those drawn without
    # a warp: the warp has its own seed, and masks are not stretched by it.
    spec = tf.ones([120, 32])
    masks = settings.SpecAugment(num_freq_masks=2, max_freq_width=8, num_time_masks=2)
    warped = dataclasses.replace(masks, time_warp_max_frames=30)
    for i in range(5):
        seed = tf.constant([2, i])
        np.testing.assert_array_equal(
            augment.spec_augment(spec, seed, warped), augment.spec_augment(spec, seed, masks)
        )


def test_settings_from_the_config_and_their_errors():
    defaults = settings.default_dataset_config().spec_augment
    params = settings.spec_augment_settings(defaults)
    assert params == settings.SpecAugment() and not params.time_warp_enabled
    # Scenic's MBT config (configs/audioset/balanced_audioset_base.py): off via the ratio.
    scenic = settings.spec_augment_settings(
        dict(defaults.to_dict(), time_warp_max_frames=1.0, time_warp_max_ratio=0)
    )
    assert scenic.time_warp_max_frames == 1 and not scenic.time_warp_enabled
    park = settings.spec_augment_settings(dict(defaults.to_dict(), time_warp_max_frames=80))
    assert park.time_warp_enabled
    assert settings.spec_augment_settings(dict(defaults.to_dict(), enabled=False)) is None
    for key, value, message in (
        ("time_warp_bound", "adaptive", "time_warp_bound='adaptive'; allowed: static, dynamic"),
        ("time_warp_max_frames", 2.5, "time_warp_max_frames=2.5 must be an integer >= 0"),
        ("time_warp_max_ratio", -0.1, "time_warp_max_ratio=-0.1 must be >= 0"),
        ("num_time_masks", -1, "num_time_masks=-1 must be an integer >= 0"),
    ):
        with pytest.raises(ValueError, match=re.escape("config.dataset.spec_augment." + message)):
            settings.spec_augment_settings(dict(defaults.to_dict(), **{key: value}))
