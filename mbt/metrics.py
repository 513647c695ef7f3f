"""Evaluation metrics on whole-split numpy arrays: mAP, AUC, d-prime, top-k, EPIC action.

Everything takes `scores [examples, classes]` (logits or probabilities; every metric here
depends only on the order of the scores within a class or within an example, except EPIC
action top-5, which needs per-head probabilities) and `labels [examples, classes]`
(multi-hot, one-hot, or `[one-hot verb ; one-hot noun]` for class splits). A label counts
as positive when it is > 0.5. Padding examples must already be gone, or be dropped with
`example_mask`.

`compute_metrics` returns fractions in [0, 1] (not percentages) under these keys:

| task | keys |
|---|---|
| multi-label (AudioSet) | `map`, `mean_auc`, `d_prime`, `top1`, `map_num_classes_without_positives`, `auc_num_classes_skipped` |
| single-label (VGGSound) | `top1`, `top5`, `map`, `map_num_classes_without_positives` |
| class splits (EPIC) | `verb_top1`, `verb_top5`, `noun_top1`, `noun_top5`, `action_top1`, `action_top5` |

plus `num_examples` everywhere. Ties are broken deterministically: among equal scores the
lower class index ranks first (as `np.argmax` does). See docs/metrics.md for definitions.

`compute_metrics_and_classes` returns the same metrics plus `ClassResults`: AP, top-1
accuracy and label count of every class, from the same sorts.
"""

import dataclasses
import logging
import math
import statistics
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)

# Class columns sorted at once for AP/AUC: bounds memory to ~ examples x 128 x 8 bytes per array.
_CLASS_CHUNK = 128
# Examples whose 97 x 300 joint verb-noun scores are materialised at once.
_ACTION_CHUNK = 256
EPIC_SPLIT_NAMES = ("verb", "noun")


def primary_metric_name(multi_label: bool, class_splits: Sequence[int] | None = None) -> str:
    """The headline metric of a task: 'map', 'action_top1' (class splits) or 'top1'."""
    if multi_label:
        return "map"
    return "action_top1" if class_splits else "top1"


@dataclasses.dataclass(frozen=True)
class ClassResults:
    """Per-class results of one split; entry i belongs to label column i.

    Attributes:
      ap: `[C]` float64 average precision of each class's score column (as in `map`); NaN
        for a class without positives.
      top1: `[C]` float64 top-1 accuracy over the examples labelled with the class (single
        label; per head for class splits); NaN for a class without examples, and everywhere
        for multi-label data (where AP is the per-class score).
      count: `[C]` int64 examples labelled with the class (its positives).
    """

    ap: np.ndarray
    top1: np.ndarray
    count: np.ndarray


def dprime_from_auc(auc: float) -> float:
    """d' = sqrt(2) * Phi^-1(AUC): the separation of two unit Gaussians giving this AUC.

    AUC 0.5 -> 0; AUC 1 -> +inf; AUC 0 -> -inf; NaN -> NaN.
    """
    auc = float(auc)
    if math.isnan(auc):
        return math.nan
    if not 0.0 <= auc <= 1.0:
        raise ValueError(f"AUC must lie in [0, 1], got {auc}")
    if auc == 1.0:
        return math.inf
    if auc == 0.0:
        return -math.inf
    return math.sqrt(2.0) * statistics.NormalDist().inv_cdf(auc)


def per_class_ap_and_auc(
    scores: np.ndarray, positives: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Average precision and ROC-AUC of every class, in one sort per class.

    AP is sklearn's `average_precision_score`: sum over distinct score thresholds (high to
    low) of (recall step) x (precision at that threshold); tied scores form one threshold.
    AUC is the Mann-Whitney statistic with tied scores counted as half a win.

    Args:
      scores: `[examples, classes]` float.
      positives: `[examples, classes]` bool.
    Returns:
      `(ap [classes], auc [classes])` float64; AP is NaN for a class without positives, AUC is
      NaN for a class without positives or without negatives.
    """
    num_examples, num_classes = scores.shape
    ap = np.full(num_classes, np.nan)
    auc = np.full(num_classes, np.nan)
    rows = np.arange(num_examples)[:, None]
    for start in range(0, num_classes, _CLASS_CHUNK):
        cols = slice(start, min(start + _CLASS_CHUNK, num_classes))
        chunk_scores = scores[:, cols]
        order = np.argsort(-chunk_scores, axis=0, kind="stable")  # descending scores
        sorted_scores = np.take_along_axis(chunk_scores, order, axis=0)
        sorted_pos = np.take_along_axis(positives[:, cols], order, axis=0)
        del order

        # Tie groups: rows [group_start, group_end] share one score.
        differs_from_next = sorted_scores[:-1] != sorted_scores[1:]
        is_last = np.concatenate([differs_from_next, np.ones((1, sorted_scores.shape[1]), bool)])
        is_first = np.concatenate([np.ones((1, sorted_scores.shape[1]), bool), differs_from_next])
        group_end = np.where(is_last, rows, num_examples - 1)
        group_end = np.minimum.accumulate(group_end[::-1], axis=0)[::-1]
        group_start = np.maximum.accumulate(np.where(is_first, rows, 0), axis=0)
        del sorted_scores, is_last, is_first, differs_from_next

        num_pos = sorted_pos.sum(axis=0)
        true_pos_cum = np.cumsum(sorted_pos, axis=0, dtype=np.float64)
        precision_at_group_end = np.take_along_axis(true_pos_cum, group_end, axis=0) / (
            group_end + 1
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            # Each positive contributes 1/P recall at its group's threshold.
            ap[cols] = np.sum(precision_at_group_end * sorted_pos, axis=0) / num_pos
            # Ascending 1-based rank of descending position i is N - i; ties share the mid-rank.
            mid_rank = num_examples - 0.5 * (group_start + group_end)
            num_neg = num_examples - num_pos
            rank_sum = np.sum(mid_rank * sorted_pos, axis=0)
            chunk_auc = (rank_sum - num_pos * (num_pos + 1) / 2.0) / (num_pos * num_neg)
        ap[cols] = np.where(num_pos > 0, ap[cols], np.nan)
        auc[cols] = np.where((num_pos > 0) & (num_neg > 0), chunk_auc, np.nan)
    return ap, auc


def rank_of_class(scores: np.ndarray, class_index: np.ndarray) -> np.ndarray:
    """0-based rank of `class_index [N]` in each row of `scores [N, C]`.

    Rank = #classes with a higher score + #classes with an equal score and a lower index, so
    top-k correct <=> rank < k, with ties going to the lower class index.
    """
    rows = np.arange(scores.shape[0])
    target = scores[rows, class_index][:, None]
    higher = np.sum(scores > target, axis=1)
    lower_index = np.arange(scores.shape[1])[None, :] < class_index[:, None]
    tied_before = np.sum((scores == target) & lower_index, axis=1)
    return higher + tied_before


def top_k_accuracy(scores: np.ndarray, class_index: np.ndarray, k: int) -> float:
    """Fraction of rows whose true class (`class_index [N]`) is among the k best scores."""
    return float(np.mean(rank_of_class(scores, class_index) < k))


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax over the last axis, float64."""
    x = np.asarray(x, np.float64)
    shifted = x - np.max(x, axis=-1, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def _looks_like_probabilities(scores: np.ndarray) -> bool:
    """True if every row of `scores [N, C]` is a probability vector (sums to 1, within 1e-3)."""
    return bool(
        np.all(scores >= 0)
        and np.all(scores <= 1)
        and np.allclose(scores.sum(axis=1), 1.0, atol=1e-3)
    )


def action_top_k(
    verb_log_probs: np.ndarray,
    noun_log_probs: np.ndarray,
    verb_index: np.ndarray,
    noun_index: np.ndarray,
    k: int,
) -> float:
    """EPIC action top-k over the joint verb x noun scores.

    The joint score of pair (v, n) is p(v) * p(n), compared as log p(v) + log p(n); the true
    pair is correct if fewer than k pairs beat it (ties: lower flat index v * nouns + n first).
    Joint scores are materialised `_ACTION_CHUNK` examples at a time (97 x 300 each for EPIC).

    Args:
      verb_log_probs: `[N, verbs]` per-head log-probabilities.
      noun_log_probs: `[N, nouns]`.
      verb_index, noun_index: `[N]` true classes.
      k: how many pairs count.
    """
    num_examples, num_nouns = noun_log_probs.shape
    num_pairs = verb_log_probs.shape[1] * num_nouns
    true_flat = verb_index * num_nouns + noun_index
    correct = 0
    for start in range(0, num_examples, _ACTION_CHUNK):
        chunk = slice(start, start + _ACTION_CHUNK)
        joint = (verb_log_probs[chunk, :, None] + noun_log_probs[chunk, None, :]).reshape(
            -1, num_pairs
        )
        correct += int(np.sum(rank_of_class(joint, true_flat[chunk]) < k))
    return correct / num_examples


def _class_index_of_one_hot(labels: np.ndarray, what: str) -> np.ndarray:
    """argmax of each row of one-hot `labels [N, C]`; raises if a row has no positive."""
    has_label = np.any(labels > 0.5, axis=1)
    if not np.all(has_label):
        bad = np.flatnonzero(~has_label)
        raise ValueError(
            f"{what}: {bad.size} example(s) have no positive label (> 0.5), e.g. "
            f"row {bad[0]} = {labels[bad[0]][:10]}...; single-label metrics need one-hot "
            "labels"
        )
    return np.argmax(labels, axis=1)


def _check_inputs(scores, labels, example_mask) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    if scores.ndim != 2 or scores.shape != labels.shape:
        raise ValueError(
            "compute_metrics: scores and labels must both be [examples, classes]; got "
            f"scores {scores.shape} and labels {labels.shape}"
        )
    if example_mask is not None:
        example_mask = np.asarray(example_mask).reshape(-1)
        if example_mask.shape[0] != scores.shape[0]:
            raise ValueError(
                f"compute_metrics: example_mask has {example_mask.shape[0]} entries for "
                f"{scores.shape[0]} examples"
            )
        keep = example_mask > 0
        scores, labels = scores[keep], labels[keep]
    if scores.shape[0] == 0:
        raise ValueError("compute_metrics: no examples to evaluate (empty, or all masked out)")
    if not np.all(np.isfinite(scores)):
        bad_rows = np.flatnonzero(~np.all(np.isfinite(scores), axis=1))
        raise ValueError(
            f"compute_metrics: {bad_rows.size} example(s) have NaN/inf scores, first "
            f"at row {bad_rows[0]}"
        )
    return scores, labels


def _per_class_top1(
    correct: np.ndarray, class_index: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """(top-1 accuracy `[C]` float64, NaN where no example; examples `[C]` int64) per true class.

    Args:
      correct: `[N]` bool, whether each example's top-1 prediction is its class.
      class_index: `[N]` int in [0, num_classes), each example's class.
    """
    count = np.bincount(class_index, minlength=num_classes)
    hits = np.bincount(class_index, weights=correct.astype(np.float64), minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        top1 = np.where(count > 0, hits / count, np.nan)
    return top1, count.astype(np.int64)


def _multi_label_metrics(
    scores: np.ndarray, positives: np.ndarray
) -> tuple[dict[str, float], ClassResults]:
    ap, auc = per_class_ap_and_auc(scores, positives)
    num_without_positives = int(np.sum(np.isnan(ap)))
    if num_without_positives:
        logger.warning(
            "mAP: %d of %d classes have no positive example and are excluded",
            num_without_positives,
            ap.size,
        )
    has_ap = ~np.isnan(ap)
    has_auc = ~np.isnan(auc)
    mean_ap = float(np.mean(ap[has_ap])) if has_ap.any() else math.nan
    mean_auc = float(np.mean(auc[has_auc])) if has_auc.any() else math.nan
    top_class = np.argmax(scores, axis=1)
    results = {
        "map": mean_ap,
        "mean_auc": mean_auc,
        "d_prime": dprime_from_auc(mean_auc),
        "top1": float(np.mean(positives[np.arange(scores.shape[0]), top_class])),
        "map_num_classes_without_positives": num_without_positives,
        "auc_num_classes_skipped": int(np.sum(~has_auc)),
    }
    count = positives.sum(axis=0, dtype=np.int64)
    return results, ClassResults(ap=ap, top1=np.full(ap.shape, np.nan), count=count)


def _single_label_metrics(
    scores: np.ndarray, labels: np.ndarray
) -> tuple[dict[str, float], ClassResults]:
    class_index = _class_index_of_one_hot(labels, "single-label labels")
    ranks = rank_of_class(scores, class_index)
    ap, _ = per_class_ap_and_auc(scores, labels > 0.5)
    has_ap = ~np.isnan(ap)
    results = {
        "top1": float(np.mean(ranks < 1)),
        "top5": float(np.mean(ranks < 5)),
        "map": float(np.mean(ap[has_ap])) if has_ap.any() else math.nan,
        "map_num_classes_without_positives": int(np.sum(~has_ap)),
    }
    top1, count = _per_class_top1(ranks < 1, class_index, scores.shape[1])
    return results, ClassResults(ap=ap, top1=top1, count=count)


def _split_metrics(
    scores: np.ndarray,
    labels: np.ndarray,
    class_splits: Sequence[int],
    scores_are_probs: bool | None,
    with_classes: bool,
) -> tuple[dict[str, float], ClassResults | None]:
    bounds = np.cumsum(class_splits)[:-1]
    head_scores = np.split(scores, bounds, axis=1)
    head_labels = np.split(labels, bounds, axis=1)
    if scores_are_probs is None:
        scores_are_probs = all(_looks_like_probabilities(s) for s in head_scores)
    results = {}
    log_probs, class_indices, head_top1, head_count = [], [], [], []
    for name, head_score, head_label in zip(EPIC_SPLIT_NAMES, head_scores, head_labels):
        class_index = _class_index_of_one_hot(head_label, f"{name} labels")
        ranks = rank_of_class(head_score, class_index)
        results[f"{name}_top1"] = float(np.mean(ranks < 1))
        results[f"{name}_top5"] = float(np.mean(ranks < 5))
        if with_classes:
            top1, count = _per_class_top1(ranks < 1, class_index, head_score.shape[1])
            head_top1.append(top1)
            head_count.append(count)
        if scores_are_probs:
            with np.errstate(divide="ignore"):
                log_probs.append(np.log(np.asarray(head_score, np.float64)))
        else:
            log_probs.append(log_softmax(head_score))
        class_indices.append(class_index)
    verb_index, noun_index = class_indices
    top_verb = np.argmax(head_scores[0], axis=1)
    top_noun = np.argmax(head_scores[1], axis=1)
    results["action_top1"] = float(np.mean((top_verb == verb_index) & (top_noun == noun_index)))
    results["action_top5"] = action_top_k(log_probs[0], log_probs[1], verb_index, noun_index, k=5)
    if not with_classes:
        return results, None
    # A class's AP depends only on the order within its own column, so both heads at once.
    ap, _ = per_class_ap_and_auc(scores, labels > 0.5)
    classes = ClassResults(ap=ap, top1=np.concatenate(head_top1), count=np.concatenate(head_count))
    return results, classes


def _evaluate(
    scores,
    labels,
    multi_label: bool,
    class_splits,
    example_mask,
    scores_are_probs: bool | None,
    with_classes: bool,
) -> tuple[dict[str, float], ClassResults | None]:
    scores, labels = _check_inputs(scores, labels, example_mask)
    classes: ClassResults | None
    if class_splits is not None:
        class_splits = tuple(int(s) for s in class_splits)
        if multi_label:
            raise ValueError(
                f"compute_metrics: class_splits={class_splits} needs multi_label=False"
            )
        if len(class_splits) != 2 or sum(class_splits) != scores.shape[1]:
            raise ValueError(
                f"compute_metrics: class_splits={class_splits} must be two head sizes "
                f"(verb, noun) summing to the {scores.shape[1]} score columns"
            )
        results, classes = _split_metrics(
            scores, labels, class_splits, scores_are_probs, with_classes
        )
    elif multi_label:
        results, classes = _multi_label_metrics(scores, labels > 0.5)
    else:
        results, classes = _single_label_metrics(scores, labels)
    results["num_examples"] = int(scores.shape[0])
    return results, classes


def compute_metrics(
    scores: np.ndarray,
    labels: np.ndarray,
    *,
    multi_label: bool,
    class_splits: tuple[int, ...] | None = None,
    example_mask: np.ndarray | None = None,
    scores_are_probs: bool | None = None,
) -> dict[str, float]:
    """All metrics of one evaluation (see the module docstring for the keys).

    Args:
      scores: `[examples, classes]` logits or probabilities (numpy or jax array).
      labels: `[examples, classes]` multi-hot (multi_label) or one-hot per class split.
      multi_label: AudioSet-style sigmoid task (mAP, AUC, d', top-1 against any positive).
      class_splits: e.g. `(97, 300)` for EPIC verb/noun heads; None for one softmax head.
      example_mask: optional `[examples]`; rows with mask 0 (padding) are dropped first.
      scores_are_probs: class splits only: whether `scores` are already per-head
        probabilities (then action top-5 multiplies them as they are) or logits (then each
        head is softmaxed first). None: decide by whether every head's rows sum to 1.
    Returns:
      dict of python floats (counts as ints), fractions in [0, 1].
    """
    results, _ = _evaluate(
        scores, labels, multi_label, class_splits, example_mask, scores_are_probs, False
    )
    return results


def compute_metrics_and_classes(
    scores: np.ndarray,
    labels: np.ndarray,
    *,
    multi_label: bool,
    class_splits: tuple[int, ...] | None = None,
    example_mask: np.ndarray | None = None,
    scores_are_probs: bool | None = None,
) -> tuple[dict[str, float], ClassResults]:
    """`compute_metrics` (same arguments) and the `ClassResults` of every label column.

    The per-class AP comes from the sorts the mean AP needs anyway, and per-class top-1 from
    one `np.bincount` over the examples, so this costs about what `compute_metrics` does
    (AudioSet eval, 20k videos x 527 classes: about 1.5 s on one CPU core).
    """
    results, classes = _evaluate(
        scores, labels, multi_label, class_splits, example_mask, scores_are_probs, True
    )
    assert classes is not None
    return results, classes
