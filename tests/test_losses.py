"""Losses: values against hand computations, label smoothing, split heads, per-modality heads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbt import losses


def test_softmax_cross_entropy_matches_hand_computation():
    logits = jnp.array([[2.0, 0.0, -1.0]])
    targets = jnp.array([[0.0, 1.0, 0.0]])
    expected = -(0.0 - np.log(np.exp(2.0) + 1.0 + np.exp(-1.0)))
    np.testing.assert_allclose(losses.softmax_cross_entropy(logits, targets), [expected], rtol=1e-6)


def test_sigmoid_cross_entropy_sums_binary_losses_and_is_stable():
    logits = jnp.array([[3.0, -2.0]])
    targets = jnp.array([[1.0, 1.0]])
    expected = np.log1p(np.exp(-3.0)) + np.log1p(np.exp(2.0))
    np.testing.assert_allclose(losses.sigmoid_cross_entropy(logits, targets), [expected], rtol=1e-6)
    huge = losses.sigmoid_cross_entropy(jnp.array([[1e4, -1e4]]), jnp.array([[0.0, 1.0]]))
    np.testing.assert_allclose(huge, [2e4], rtol=1e-6)


def test_label_smoothing_moves_mass_uniformly_and_keeps_the_sum():
    targets = jnp.array([[0.0, 1.0, 0.0, 0.0]])
    smoothed = losses.smooth_labels(targets, 0.3)
    np.testing.assert_allclose(smoothed, [[0.075, 0.775, 0.075, 0.075]], rtol=1e-6)
    np.testing.assert_allclose(jnp.sum(smoothed), 1.0, rtol=1e-6)
    assert losses.smooth_labels(targets, 0.0) is targets


def test_label_smoothing_changes_the_loss_as_computed_by_hand():
    logits = jnp.array([[1.0, 0.0]])
    log_p = jax.nn.log_softmax(logits)[0]
    loss = losses.classification_loss(
        logits, jnp.array([[1.0, 0.0]]), multi_label=False, smoothing=0.2
    )
    np.testing.assert_allclose(loss, -(0.9 * log_p[0] + 0.1 * log_p[1]), rtol=1e-6)


def test_split_heads_are_independent_softmaxes_summed_or_averaged():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)
    targets = np.zeros((3, 5), np.float32)
    targets[:, 1] = 1  # verb 1 of 2
    targets[:, 2 + 0] = 1  # noun 0 of 3
    verb = losses.softmax_cross_entropy(logits[:, :2], targets[:, :2])
    noun = losses.softmax_cross_entropy(logits[:, 2:], targets[:, 2:])
    summed = losses.split_softmax_cross_entropy(logits, targets, (2, 3))
    averaged = losses.split_softmax_cross_entropy(logits, targets, (2, 3), head_reduction="mean")
    np.testing.assert_allclose(summed, verb + noun, rtol=1e-6)
    np.testing.assert_allclose(averaged, (verb + noun) / 2, rtol=1e-6)
    # Smoothing is per head: a 2-class head spreads 0.2 as 0.1 per class.
    smoothed = losses.split_softmax_cross_entropy(logits, targets, (2, 3), smoothing=0.2)
    verb_s = losses.softmax_cross_entropy(logits[:, :2], jnp.array([[0.1, 0.9]] * 3))
    noun_s = losses.softmax_cross_entropy(
        logits[:, 2:], jnp.array([[0.8 + 0.2 / 3, 0.2 / 3, 0.2 / 3]] * 3)
    )
    np.testing.assert_allclose(smoothed, verb_s + noun_s, rtol=1e-5)
    with pytest.raises(ValueError, match="class_splits"):
        losses.split_softmax_cross_entropy(logits, targets, (2, 2))
    with pytest.raises(ValueError, match="head_reduction"):
        losses.split_softmax_cross_entropy(logits, targets, (2, 3), head_reduction="max")


def test_weights_drop_padding_examples():
    logits = jnp.array([[5.0, 0.0], [0.0, 5.0]])
    targets = jnp.array([[1.0, 0.0], [1.0, 0.0]])
    per_example = losses.softmax_cross_entropy(logits, targets)
    masked = losses.classification_loss(logits, targets, jnp.array([1.0, 0.0]), multi_label=False)
    np.testing.assert_allclose(masked, per_example[0], rtol=1e-6)


def test_token_classifier_dict_averages_per_modality_heads():
    rgb = jnp.array([[2.0, 0.0]])
    spec = jnp.array([[0.0, 2.0]])
    targets = jnp.array([[1.0, 0.0]])
    both = losses.classification_loss({"rgb": rgb, "spectrogram": spec}, targets, multi_label=False)
    single = [losses.classification_loss(x, targets, multi_label=False) for x in (rgb, spec)]
    np.testing.assert_allclose(both, np.mean(single), rtol=1e-6)


def test_per_modality_targets_go_to_their_own_head_and_mean_for_one_head():
    logits = {"rgb": jnp.array([[1.0, -1.0]]), "spectrogram": jnp.array([[0.5, 0.5]])}
    targets = {"rgb": jnp.array([[0.8, 0.2]]), "spectrogram": jnp.array([[0.4, 0.6]])}
    loss = losses.classification_loss(logits, targets, multi_label=False)
    expected = np.mean(
        [losses.softmax_cross_entropy(logits[m], targets[m])[0] for m in ("rgb", "spectrogram")]
    )
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    # One head (gap) with per-modality targets: trained on their mean, [0.6, 0.4].
    single = losses.classification_loss(logits["rgb"], targets, multi_label=False)
    np.testing.assert_allclose(
        single, losses.softmax_cross_entropy(logits["rgb"], jnp.array([[0.6, 0.4]]))[0], rtol=1e-6
    )
