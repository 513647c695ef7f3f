"""mbt.metrics against scikit-learn and hand-made cases."""

import math
import statistics
import time

import numpy as np
import pytest

from mbt import metrics


class _SklearnMetrics:
    """`sklearn.metrics`, the reference, imported on first use: not at collection, when every
    pytest worker imports every test module (sklearn brings pandas and pyarrow, ~65 MB)."""

    def __getattr__(self, name):
        import sklearn.metrics

        return getattr(sklearn.metrics, name)


sk = _SklearnMetrics()


def _multi_label_data(seed, num_examples=400, num_classes=24, quantise=True):
    """Random scores (rounded so that ties occur) and sparse multi-hot labels.

    Class 3 has no positives, class 5 is positive everywhere, class 7 has one positive.
    """
    rng = np.random.default_rng(seed)
    labels = (rng.random((num_examples, num_classes)) < 0.15).astype(np.float32)
    labels[:, 3] = 0
    labels[:, 5] = 1
    labels[:, 7] = 0
    labels[11, 7] = 1
    scores = rng.normal(size=(num_examples, num_classes)) + 0.8 * labels
    if quantise:
        scores = np.round(scores, 1)
    return scores.astype(np.float32), labels


@pytest.mark.parametrize("quantise", [False, True])
def test_per_class_ap_and_auc_match_sklearn(quantise):
    scores, labels = _multi_label_data(0, quantise=quantise)
    ap, auc = metrics.per_class_ap_and_auc(scores, labels > 0.5)
    for c in range(labels.shape[1]):
        num_pos = labels[:, c].sum()
        if num_pos == 0:
            assert np.isnan(ap[c])
        else:
            assert ap[c] == pytest.approx(
                sk.average_precision_score(labels[:, c], scores[:, c]), abs=1e-12
            )
        if 0 < num_pos < labels.shape[0]:
            assert auc[c] == pytest.approx(sk.roc_auc_score(labels[:, c], scores[:, c]), abs=1e-12)
        else:
            assert np.isnan(auc[c])


@pytest.mark.filterwarnings("ignore:No positive class found")
def test_multi_label_metrics_exclude_classes_without_positives():
    scores, labels = _multi_label_data(1)
    result = metrics.compute_metrics(scores, labels, multi_label=True)
    with_pos = [c for c in range(labels.shape[1]) if labels[:, c].any()]
    both = [c for c in with_pos if not labels[:, c].all()]
    expected_map = np.mean(
        [sk.average_precision_score(labels[:, c], scores[:, c]) for c in with_pos]
    )
    expected_auc = np.mean([sk.roc_auc_score(labels[:, c], scores[:, c]) for c in both])
    assert result["map"] == pytest.approx(expected_map, abs=1e-12)
    assert result["mean_auc"] == pytest.approx(expected_auc, abs=1e-12)
    assert result["map_num_classes_without_positives"] == 1
    assert result["auc_num_classes_skipped"] == 2  # class 3 (no positives), class 5 (no negatives)
    assert result["d_prime"] == pytest.approx(
        math.sqrt(2) * statistics.NormalDist().inv_cdf(expected_auc), abs=1e-9
    )
    assert result["num_examples"] == labels.shape[0]
    # sklearn's macro average over *all* classes scores class 3 as AP 0 and is lower.
    assert result["map"] > np.mean(
        [sk.average_precision_score(labels[:, c], scores[:, c]) for c in range(labels.shape[1])]
    )


def test_classes_without_positives_are_logged(caplog):
    scores, labels = _multi_label_data(2)
    with caplog.at_level("WARNING", logger="mbt.metrics"):
        metrics.compute_metrics(scores, labels, multi_label=True)
    assert "1 of 24 classes have no positive" in caplog.text


def test_multi_label_top1_counts_any_positive():
    scores = np.array(
        [
            [0.1, 0.9, 0.3],  # top class 1: positive
            [0.8, 0.1, 0.3],  # top class 0: negative
            [0.5, 0.5, 0.1],  # tie 0/1 -> class 0 (positive)
            [0.2, 0.3, 0.4],
        ]
    )  # top class 2: no positives at all -> wrong
    labels = np.array([[0, 1, 1], [0, 1, 0], [1, 0, 0], [0, 0, 0]], np.float32)
    assert metrics.compute_metrics(scores, labels, multi_label=True)["top1"] == 0.5


def test_dprime():
    assert metrics.dprime_from_auc(0.5) == 0.0
    # AUC = Phi(d'/sqrt(2)); d' = 1 <=> AUC = Phi(0.7071...) = 0.76025...
    assert metrics.dprime_from_auc(statistics.NormalDist().cdf(1 / math.sqrt(2))) == pytest.approx(
        1.0
    )
    assert metrics.dprime_from_auc(0.9) == pytest.approx(1.812387, abs=1e-6)
    assert metrics.dprime_from_auc(0.1) == pytest.approx(-1.812387, abs=1e-6)
    assert metrics.dprime_from_auc(1.0) == math.inf
    assert math.isnan(metrics.dprime_from_auc(math.nan))
    with pytest.raises(ValueError, match="1.5"):
        metrics.dprime_from_auc(1.5)


@pytest.mark.parametrize("k", [1, 5])
def test_single_label_top_k_matches_sklearn(k):
    rng = np.random.default_rng(3)
    num_examples, num_classes = 500, 30
    true_class = rng.integers(0, num_classes, num_examples)
    labels = np.eye(num_classes, dtype=np.float32)[true_class]
    scores = rng.normal(size=(num_examples, num_classes)) + 1.5 * labels
    result = metrics.compute_metrics(scores, labels, multi_label=False)
    expected = sk.top_k_accuracy_score(true_class, scores, k=k, labels=np.arange(num_classes))
    assert result[f"top{k}"] == pytest.approx(expected, abs=1e-12)
    assert 0.1 < result["top1"] < result["top5"] < 1.0


def test_single_label_map_bonus_matches_sklearn():
    rng = np.random.default_rng(4)
    true_class = rng.integers(0, 8, 200)
    true_class[true_class == 6] = 0  # class 6 never occurs
    labels = np.eye(8)[true_class]
    scores = rng.normal(size=(200, 8)) + labels
    result = metrics.compute_metrics(scores, labels, multi_label=False)
    expected = np.mean(
        [sk.average_precision_score(labels[:, c], scores[:, c]) for c in range(8) if c != 6]
    )
    assert result["map"] == pytest.approx(expected, abs=1e-12)
    assert result["map_num_classes_without_positives"] == 1


def test_top_k_ties_go_to_lower_class_index():
    scores = np.zeros((2, 6))
    labels = np.eye(6)[[0, 5]]
    result = metrics.compute_metrics(scores, labels, multi_label=False)
    assert result["top1"] == 0.5 and result["top5"] == 0.5  # class 5 ranks 6th among equals
    np.testing.assert_array_equal(metrics.rank_of_class(scores, np.array([0, 5])), [0, 5])


def _epic_hand_made():
    """Verb and noun heads (3 classes each) with identical probabilities 0.5 / 0.3 / 0.2.

    Joint p(v)p(n) by rank (ties by flat index v*3+n): (0,0) .25, (0,1) .15, (1,0) .15,
    (0,2) .10, (2,0) .10, (1,1) .09, ...
    """
    head = np.log([0.5, 0.3, 0.2])
    logits = np.tile(np.concatenate([head, head]) + 4.0, (4, 1))  # a shift changes no softmax
    pairs = [(0, 0), (2, 0), (1, 1), (0, 1)]
    labels = np.zeros((4, 6), np.float32)
    for row, (verb, noun) in enumerate(pairs):
        labels[row, verb] = labels[row, 3 + noun] = 1
    return logits, labels, pairs


def test_epic_action_hand_made():
    logits, labels, _ = _epic_hand_made()
    result = metrics.compute_metrics(logits, labels, multi_label=False, class_splits=(3, 3))
    assert result["verb_top1"] == 0.5  # true verbs 0, 2, 1, 0; predicted 0
    assert result["noun_top1"] == 0.5  # true nouns 0, 0, 1, 1; predicted 0
    assert result["action_top1"] == 0.25  # only (0, 0) has both right
    assert result["action_top5"] == 0.75  # (1, 1) is 6th
    assert result["verb_top5"] == result["noun_top5"] == 1.0


def test_epic_action_top_k_tie_break_by_flat_index():
    logits, _, _ = _epic_hand_made()
    log_probs = metrics.log_softmax(logits[:2, :3])
    # (0, 2) and (2, 0) tie at rank 3/4: the lower flat index (0, 2) takes rank 3.
    assert (
        metrics.action_top_k(log_probs, log_probs, np.array([0, 2]), np.array([2, 0]), k=4) == 0.5
    )
    assert (
        metrics.action_top_k(log_probs, log_probs, np.array([0, 2]), np.array([2, 0]), k=5) == 1.0
    )


def _brute_force_action_top5(verb_logits, noun_logits, verb_index, noun_index):
    correct = 0
    for row in range(verb_logits.shape[0]):
        p_verb = np.exp(verb_logits[row] - verb_logits[row].max())
        p_noun = np.exp(noun_logits[row] - noun_logits[row].max())
        joint = np.outer(p_verb / p_verb.sum(), p_noun / p_noun.sum()).reshape(-1)
        best_five = np.argsort(-joint, kind="stable")[:5]
        correct += (verb_index[row] * noun_logits.shape[1] + noun_index[row]) in best_five
    return correct / verb_logits.shape[0]


def test_epic_action_top5_matches_brute_force_and_probability_inputs():
    rng = np.random.default_rng(5)
    num_examples = 300
    verb_index = rng.integers(0, 97, num_examples)
    noun_index = rng.integers(0, 300, num_examples)
    labels = np.concatenate([np.eye(97)[verb_index], np.eye(300)[noun_index]], axis=1)
    # Strong signal so that a fair share of true pairs make the top 5.
    logits = rng.normal(size=(num_examples, 397)) + 3.0 * labels
    result = metrics.compute_metrics(logits, labels, multi_label=False, class_splits=(97, 300))
    expected = _brute_force_action_top5(logits[:, :97], logits[:, 97:], verb_index, noun_index)
    assert result["action_top5"] == pytest.approx(expected)
    assert 0.05 < result["action_top5"] < 0.95
    assert result["action_top1"] <= result["action_top5"]
    assert result["action_top1"] == pytest.approx(
        np.mean((logits[:, :97].argmax(1) == verb_index) & (logits[:, 97:].argmax(1) == noun_index))
    )

    probs = np.concatenate(
        [np.exp(metrics.log_softmax(logits[:, :97])), np.exp(metrics.log_softmax(logits[:, 97:]))],
        axis=1,
    )
    for flag in (None, True):  # auto-detected or stated
        from_probs = metrics.compute_metrics(
            probs, labels, multi_label=False, class_splits=(97, 300), scores_are_probs=flag
        )
        assert from_probs == result


def test_example_mask_drops_padding():
    scores, labels = _multi_label_data(6, quantise=False)
    clean = metrics.compute_metrics(scores, labels, multi_label=True)
    # Padding rows: zero labels, high scores (what an untrained model may well output).
    padded_scores = np.concatenate([scores, np.full((50, scores.shape[1]), 3.0, np.float32)])
    padded_labels = np.concatenate([labels, np.zeros((50, labels.shape[1]), np.float32)])
    mask = np.concatenate([np.ones(len(scores)), np.zeros(50)])
    masked = metrics.compute_metrics(
        padded_scores, padded_labels, multi_label=True, example_mask=mask
    )
    assert masked == clean
    unmasked = metrics.compute_metrics(padded_scores, padded_labels, multi_label=True)
    assert unmasked["map"] < clean["map"] - 0.05


def test_bad_inputs_raise_clear_errors():
    scores = np.zeros((4, 5))
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(4, 6\)"):
        metrics.compute_metrics(scores, np.zeros((4, 6)), multi_label=True)
    bad = scores.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="row 2"):
        metrics.compute_metrics(bad, np.eye(5)[[0, 1, 2, 3]], multi_label=False)
    with pytest.raises(ValueError, match="row 1"):
        metrics.compute_metrics(
            scores, np.eye(5)[[0, 0, 0, 0]] * [[1], [0], [1], [1]], multi_label=False
        )
    with pytest.raises(ValueError, match=r"class_splits=\(2, 2\)"):
        metrics.compute_metrics(
            scores, np.eye(5)[[0, 1, 2, 3]], multi_label=False, class_splits=(2, 2)
        )
    with pytest.raises(ValueError, match="all masked out"):
        metrics.compute_metrics(scores, scores, multi_label=True, example_mask=np.zeros(4))


def test_primary_metric_name():
    assert metrics.primary_metric_name(True) == "map"
    assert metrics.primary_metric_name(False) == "top1"
    assert metrics.primary_metric_name(False, (97, 300)) == "action_top1"


def test_audioset_sized_eval_runs_in_seconds():
    rng = np.random.default_rng(7)
    labels = (rng.random((20_000, 527)) < 0.005).astype(np.float32)
    scores = (rng.normal(size=labels.shape) + labels).astype(np.float32)
    start = time.perf_counter()
    result = metrics.compute_metrics(scores, labels, multi_label=True)
    elapsed = time.perf_counter() - start
    assert elapsed < 30, f"20k x 527 metrics took {elapsed:.1f} s"
    # The per-class results reuse the same sorts: about the same cost, the same metrics.
    start = time.perf_counter()
    again, classes = metrics.compute_metrics_and_classes(scores, labels, multi_label=True)
    elapsed = time.perf_counter() - start
    assert elapsed < 30, f"20k x 527 metrics with per-class results took {elapsed:.1f} s"
    assert again == result
    assert np.nanmean(classes.ap) == pytest.approx(result["map"], abs=1e-12)
    assert 0.6 < result["mean_auc"] < 0.8  # unit-Gaussian shift of 1 -> AUC = Phi(1/sqrt2) = 0.76
    assert result["d_prime"] == pytest.approx(1.0, abs=0.05)


def test_per_class_results_hand_made_single_label():
    # Classes 0, 0, 1, 1, 0; class 2 has no example. Example 3 ties classes 0 and 1 (-> 0).
    scores = np.array(
        [
            [0.9, 0.1, 0.0],
            [0.2, 0.7, 0.1],
            [0.1, 0.8, 0.1],
            [0.5, 0.5, 0.0],
            [0.3, 0.3, 0.4],
        ]
    )
    labels = np.eye(3)[[0, 0, 1, 1, 0]]
    result, classes = metrics.compute_metrics_and_classes(scores, labels, multi_label=False)
    np.testing.assert_array_equal(classes.count, [3, 2, 0])
    np.testing.assert_allclose(classes.top1[:2], [1 / 3, 1 / 2])
    # Class 0 ranks +, -, +, +, -: AP = (1/1 + 2/3 + 3/4) / 3; class 1: +, -, +: (1 + 2/3) / 2.
    np.testing.assert_allclose(classes.ap[:2], [29 / 36, 5 / 6])
    assert np.isnan(classes.top1[2]) and np.isnan(classes.ap[2])
    assert result == metrics.compute_metrics(scores, labels, multi_label=False)
    assert result["top1"] == pytest.approx(2 / 5)


def test_per_class_single_label_matches_sklearn_recall_and_ap():
    rng = np.random.default_rng(3)
    num_classes = 9
    truth = rng.integers(0, num_classes - 1, 300)  # the last class never occurs
    scores = np.round(rng.normal(size=(300, num_classes)) + 1.5 * np.eye(num_classes)[truth], 1)
    labels = np.eye(num_classes, dtype=np.float32)[truth]
    _, classes = metrics.compute_metrics_and_classes(scores, labels, multi_label=False)
    # Top-1 accuracy over a class's examples is the recall of argmax predictions.
    recall = sk.recall_score(
        truth,
        np.argmax(scores, axis=1),
        labels=range(num_classes),
        average=None,
        zero_division=np.nan,
    )
    np.testing.assert_allclose(classes.top1, recall, atol=1e-12)
    np.testing.assert_array_equal(classes.count, np.bincount(truth, minlength=num_classes))
    for c in range(num_classes - 1):
        assert classes.ap[c] == pytest.approx(
            sk.average_precision_score(labels[:, c], scores[:, c]), abs=1e-12
        )
    assert np.isnan(classes.ap[-1])


def test_per_class_multi_label_is_ap_and_positives():
    scores, labels = _multi_label_data(4)
    result, classes = metrics.compute_metrics_and_classes(scores, labels, multi_label=True)
    expected_ap, _ = metrics.per_class_ap_and_auc(scores, labels > 0.5)
    np.testing.assert_array_equal(classes.ap, expected_ap)
    np.testing.assert_array_equal(classes.count, labels.sum(axis=0))
    assert classes.count[3] == 0 and classes.count[7] == 1
    assert np.all(np.isnan(classes.top1))  # no per-class top-1 for multi-label data
    assert result == metrics.compute_metrics(scores, labels, multi_label=True)


def test_per_class_class_splits_score_each_head_separately():
    rng = np.random.default_rng(5)
    verbs, nouns = rng.integers(0, 3, 60), rng.integers(0, 4, 60)
    labels = np.concatenate([np.eye(3)[verbs], np.eye(4)[nouns]], axis=1)
    scores = rng.normal(size=(60, 7)) + 1.2 * labels
    result, classes = metrics.compute_metrics_and_classes(
        scores, labels, multi_label=False, class_splits=(3, 4)
    )
    for head, offset, size, truth in (("verb", 0, 3, verbs), ("noun", 3, 4, nouns)):
        predicted = np.argmax(scores[:, offset : offset + size], axis=1)
        for c in range(size):
            assert classes.top1[offset + c] == pytest.approx(np.mean(predicted[truth == c] == c))
        # Examples-weighted mean of the per-class top-1 is the head's top-1.
        counts = classes.count[offset : offset + size]
        weighted = np.sum(classes.top1[offset : offset + size] * counts) / counts.sum()
        assert weighted == pytest.approx(result[f"{head}_top1"])
    for c in range(7):
        assert classes.ap[c] == pytest.approx(
            sk.average_precision_score(labels[:, c], scores[:, c])
        )
    assert result == metrics.compute_metrics(scores, labels, multi_label=False, class_splits=(3, 4))
