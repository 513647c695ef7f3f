"""Mixup and modality mixup: input and label arithmetic, lambda sampling, alpha = 0."""

import jax.numpy as jnp
import numpy as np

from mbt import losses
from mbt import mixup


def _batch():
    inputs = {
        "rgb": jnp.arange(3 * 2, dtype=jnp.float32).reshape(3, 2),
        "spectrogram": 10 + jnp.arange(3 * 4, dtype=jnp.float32).reshape(3, 4),
    }
    labels = jnp.eye(3, dtype=jnp.float32)
    return inputs, labels


def test_each_example_is_mixed_with_the_previous_one_per_modality():
    inputs, labels = _batch()
    lambdas = {"rgb": np.float32(0.7), "spectrogram": np.float32(0.2)}
    mixed, targets = mixup.mixup(inputs, labels, lambdas, per_modality_targets=True)
    # Example 0 is mixed with example 2 (roll by one), 1 with 0, 2 with 1.
    np.testing.assert_allclose(
        mixed["rgb"][0], 0.7 * inputs["rgb"][0] + 0.3 * inputs["rgb"][2], rtol=1e-6
    )
    np.testing.assert_allclose(
        mixed["spectrogram"][1],
        0.2 * inputs["spectrogram"][1] + 0.8 * inputs["spectrogram"][0],
        rtol=1e-6,
    )
    np.testing.assert_allclose(targets["rgb"][0], [0.7, 0.0, 0.3], rtol=1e-6)
    np.testing.assert_allclose(targets["spectrogram"][0], [0.2, 0.0, 0.8], rtol=1e-6)
    np.testing.assert_allclose(targets["spectrogram"][2], [0.0, 0.8, 0.2], rtol=1e-6)


def test_plain_mixup_shares_one_lambda_and_leaves_unnamed_modalities_alone():
    inputs, labels = _batch()
    inputs["flow"] = jnp.ones((3, 2), jnp.float32)
    lambdas = mixup.sample_lambdas(0, 5, 0.5, ("rgb", "spectrogram"), mixmod=False)
    assert set(lambdas) == {"rgb", "spectrogram"}
    lam = float(lambdas["rgb"])
    assert 0.0 < lam < 1.0 and float(lambdas["spectrogram"]) == lam
    mixed, targets = mixup.mixup(inputs, labels, lambdas, per_modality_targets=False)
    np.testing.assert_allclose(
        targets, lam * labels + (1 - lam) * jnp.roll(labels, 1, 0), rtol=1e-6
    )
    np.testing.assert_allclose(jnp.sum(targets, axis=1), 1.0, rtol=1e-6)
    for name in ("rgb", "spectrogram"):
        np.testing.assert_allclose(
            mixed[name], lam * inputs[name] + (1 - lam) * jnp.roll(inputs[name], 1, 0), rtol=1e-6
        )
    np.testing.assert_array_equal(mixed["flow"], inputs["flow"])


def test_mixmod_trains_each_head_on_its_own_lambda_and_one_head_on_the_mean():
    inputs, labels = _batch()
    lambdas = mixup.sample_lambdas(0, 1, 0.5, ("spectrogram", "rgb"), mixmod=True)
    lam_rgb, lam_spec = float(lambdas["rgb"]), float(lambdas["spectrogram"])
    assert abs(lam_rgb - lam_spec) > 1e-4
    mixed, targets = mixup.mixup(inputs, labels, lambdas, per_modality_targets=True)
    for name, lam in (("rgb", lam_rgb), ("spectrogram", lam_spec)):
        np.testing.assert_allclose(
            targets[name], lam * labels + (1 - lam) * jnp.roll(labels, 1, 0), rtol=1e-6
        )
        np.testing.assert_allclose(
            mixed[name], lam * inputs[name] + (1 - lam) * jnp.roll(inputs[name], 1, 0), rtol=1e-6
        )
    logits = jnp.array([[1.0, 0.0, -1.0], [0.0, 2.0, 0.0], [0.5, 0.5, 0.0]])
    # Token classifier: each modality's head is scored against its own mixed targets.
    per_head = losses.classification_loss(
        {"rgb": logits, "spectrogram": -logits}, targets, multi_label=False
    )
    expected = (
        losses.classification_loss(logits, targets["rgb"], multi_label=False)
        + losses.classification_loss(-logits, targets["spectrogram"], multi_label=False)
    ) / 2
    np.testing.assert_allclose(per_head, expected, rtol=1e-6)
    # A single head (gap) is trained on the mean-lambda labels.
    mean_lam = (lam_rgb + lam_spec) / 2
    np.testing.assert_allclose(
        losses.classification_loss(logits, targets, multi_label=False),
        losses.classification_loss(
            logits, mean_lam * labels + (1 - mean_lam) * jnp.roll(labels, 1, 0), multi_label=False
        ),
        rtol=1e-6,
    )


def test_lambdas_are_beta_distributed_and_reproducible_per_step():
    draws = np.array(
        [mixup.sample_lambdas(3, step, 0.5, ("rgb",), mixmod=False)["rgb"] for step in range(2000)]
    )
    # Beta(0.5, 0.5): mean 1/2, variance 1/8, mass piled near 0 and 1.
    assert abs(draws.mean() - 0.5) < 0.03
    assert abs(draws.var() - 0.125) < 0.01
    assert np.mean((draws < 0.1) | (draws > 0.9)) > 0.35
    again = mixup.sample_lambdas(3, 7, 0.5, ("rgb", "spectrogram"), mixmod=True)
    assert again == mixup.sample_lambdas(3, 7, 0.5, ("spectrogram", "rgb"), mixmod=True)
    assert again != mixup.sample_lambdas(3, 8, 0.5, ("rgb", "spectrogram"), mixmod=True)


def test_alpha_zero_gives_lambda_one_and_an_unchanged_batch():
    inputs, labels = _batch()
    lambdas = mixup.sample_lambdas(0, 1, 0.0, ("rgb", "spectrogram"), mixmod=True)
    assert all(float(v) == 1.0 for v in lambdas.values())
    mixed, targets = mixup.mixup(inputs, labels, lambdas, per_modality_targets=False)
    np.testing.assert_array_equal(mixed["rgb"], inputs["rgb"])
    np.testing.assert_array_equal(targets, labels)
