"""Classification losses: sigmoid CE, softmax CE and per-split softmax CE (EPIC verb/noun).

All functions take logits and (possibly soft) targets of shape `[batch, num_classes]` and
return a per-example loss `[batch]` in nats; `classification_loss` reduces it to a scalar
weighted mean (weights = `batch_mask`, 0 for padding examples).

Label smoothing (`smooth_labels`) maps targets `y` of a head with `C` classes to
`y * (1 - s) + s / C`; it is applied per head for split heads and to multi-hot targets of
the sigmoid loss alike.

Multi-head softmax over `class_splits` (e.g. EPIC `(97, 300)`): each split is a separate
softmax over its own columns. `head_reduction='sum'` (the default) adds the head losses,
`'mean'` averages them; either way each head's gradient is independent of the others.
"""

from collections.abc import Mapping
from collections.abc import Sequence

import jax
import jax.numpy as jnp

HEAD_REDUCTIONS = ("sum", "mean")


def _sum_arrays(arrays: Sequence[jnp.ndarray]) -> jnp.ndarray:
    """`arrays[0] + arrays[1] + ...` for a non-empty sequence (the builtin `sum` starts
    at the int 0, so its type is `Array | int`; the values are the same)."""
    total = arrays[0]
    for array in arrays[1:]:
        total = total + array
    return total


def smooth_labels(targets: jnp.ndarray, smoothing: float) -> jnp.ndarray:
    """`targets [batch, C]` -> `targets * (1 - smoothing) + smoothing / C`."""
    if not smoothing:
        return targets
    num_classes = targets.shape[-1]
    return targets * (1.0 - smoothing) + smoothing / num_classes


def sigmoid_cross_entropy(logits: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
    """Multi-label loss: sum over classes of binary CE. `[batch, C]` -> `[batch]`."""
    logits = logits.astype(jnp.float32)
    log_p = jax.nn.log_sigmoid(logits)
    log_not_p = jax.nn.log_sigmoid(-logits)
    return -jnp.sum(targets * log_p + (1.0 - targets) * log_not_p, axis=-1)


def softmax_cross_entropy(logits: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
    """Single-label loss: `-sum(targets * log_softmax(logits))`. `[batch, C]` -> `[batch]`."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.sum(targets * log_probs, axis=-1)


def split_softmax_cross_entropy(
    logits: jnp.ndarray,
    targets: jnp.ndarray,
    class_splits: Sequence[int],
    smoothing: float = 0.0,
    head_reduction: str = "sum",
) -> jnp.ndarray:
    """Softmax CE per class split (e.g. verb 97 ; noun 300), summed or averaged over heads.

    Args:
      logits: `[batch, sum(class_splits)]`.
      targets: `[batch, sum(class_splits)]`, one (soft) distribution per split.
      class_splits: sizes of the consecutive heads.
      smoothing: label smoothing, applied within each head.
      head_reduction: 'sum' or 'mean' over the heads.
    Returns:
      `[batch]` loss.
    """
    if sum(class_splits) != logits.shape[-1]:
        raise ValueError(
            f"class_splits {tuple(class_splits)} sum to {sum(class_splits)} but "
            f"logits have {logits.shape[-1]} classes"
        )
    if head_reduction not in HEAD_REDUCTIONS:
        raise ValueError(
            f"config.loss.head_reduction={head_reduction!r} is not one of {HEAD_REDUCTIONS}"
        )
    per_head = []
    start = 0
    for size in class_splits:
        head_targets = smooth_labels(targets[:, start : start + size], smoothing)
        per_head.append(softmax_cross_entropy(logits[:, start : start + size], head_targets))
        start += size
    total = _sum_arrays(per_head)
    return total / len(per_head) if head_reduction == "mean" else total


def per_example_loss(
    logits: jnp.ndarray,
    targets: jnp.ndarray,
    *,
    multi_label: bool,
    class_splits: Sequence[int] | None = None,
    smoothing: float = 0.0,
    head_reduction: str = "sum",
) -> jnp.ndarray:
    """The dataset's loss for one head: `[batch, C]` logits and targets -> `[batch]`."""
    if class_splits:
        return split_softmax_cross_entropy(logits, targets, class_splits, smoothing, head_reduction)
    targets = smooth_labels(targets, smoothing)
    if multi_label:
        return sigmoid_cross_entropy(logits, targets)
    return softmax_cross_entropy(logits, targets)


def classification_loss(
    logits: jnp.ndarray | Mapping[str, jnp.ndarray],
    targets: jnp.ndarray | Mapping[str, jnp.ndarray],
    weights: jnp.ndarray | None = None,
    *,
    multi_label: bool,
    class_splits: Sequence[int] | None = None,
    smoothing: float = 0.0,
    head_reduction: str = "sum",
) -> jnp.ndarray:
    """Scalar loss: weighted mean over the batch, averaged over per-modality heads.

    Args:
      logits: `[batch, C]`, or `{modality: [batch, C]}` from the token classifier in
        training; the loss is then the mean of the per-modality losses.
      targets: `[batch, C]`, or `{modality: [batch, C]}` (modality mixup: each head is trained
        on targets mixed with its own modality's lambda). A dict of targets with a single
        array of logits uses the mean of the dict's targets.
      weights: `[batch]`, e.g. `batch_mask`; None = all ones.
    """
    if isinstance(logits, Mapping):
        heads = sorted(logits)
        head_losses = []
        for name in heads:
            head_targets = targets[name] if isinstance(targets, Mapping) else targets
            head_losses.append(
                per_example_loss(
                    logits[name],
                    head_targets,
                    multi_label=multi_label,
                    class_splits=class_splits,
                    smoothing=smoothing,
                    head_reduction=head_reduction,
                )
            )
        loss = _sum_arrays(head_losses) / len(head_losses)
    else:
        if isinstance(targets, Mapping):
            targets = _sum_arrays(list(targets.values())) / len(targets)
        loss = per_example_loss(
            logits,
            targets,
            multi_label=multi_label,
            class_splits=class_splits,
            smoothing=smoothing,
            head_reduction=head_reduction,
        )
    if weights is None:
        return jnp.mean(loss)
    weights = weights.astype(jnp.float32)
    return jnp.sum(loss * weights) / jnp.maximum(jnp.sum(weights), 1e-8)
