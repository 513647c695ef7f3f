"""mbt.evaluate: multi-view aggregation, results table and JSON."""

import json

import numpy as np
import pytest

from mbt import evaluate
from mbt import metrics


def _views(seed, num_videos=13, num_classes=6, views_per_video=3, multi_label=True):
    """Per-view logits `[videos*views, C]`, labels, video_index; videos have distinct labels."""
    rng = np.random.default_rng(seed)
    if multi_label:
        video_labels = (rng.random((num_videos, num_classes)) < 0.4).astype(np.float32)
    else:
        video_labels = np.eye(num_classes, dtype=np.float32)[
            rng.integers(0, num_classes, num_videos)
        ]
    video_index = np.repeat(np.arange(num_videos) * 7 + 100, views_per_video)  # sparse ids
    logits = rng.normal(size=(len(video_index), num_classes)).astype(np.float32) * 3
    labels = np.repeat(video_labels, views_per_video, axis=0)
    return logits, labels, video_index


def _feed_shuffled(aggregator, logits, labels, video_index, seed, pad_to=8):
    """Feeds rows in random order, in batches of random size, padded to `pad_to` rows with junk."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(logits))
    start = 0
    while start < len(order):
        size = int(rng.integers(1, pad_to + 1))
        rows = order[start : start + size]
        start += size
        pad = pad_to - len(rows)
        # Padding: NaN logits, labels that contradict the real video, a real video_index.
        batch_logits = np.concatenate([logits[rows], np.full((pad, logits.shape[1]), np.nan)])
        batch_labels = np.concatenate([labels[rows], np.full((pad, labels.shape[1]), 0.5)])
        batch_index = np.concatenate([video_index[rows], np.full(pad, video_index[0])])
        batch_mask = np.concatenate([np.ones(len(rows)), np.zeros(pad)])
        aggregator.add(batch_logits, batch_labels, batch_index, batch_mask)


def _expected_mean(per_view, video_index):
    ids = np.unique(video_index)
    per_view = np.asarray(per_view, np.float64)
    return np.stack([per_view[video_index == v].mean(axis=0) for v in ids])


def test_mean_logits_with_shuffled_padded_views():
    logits, labels, video_index = _views(0)
    aggregator = evaluate.ViewAggregator(6, combine="mean_logits", multi_label=True)
    _feed_shuffled(aggregator, logits, labels, video_index, seed=1)
    scores, video_labels = aggregator.result()
    assert scores.shape == (13, 6) and video_labels.shape == (13, 6)
    np.testing.assert_allclose(scores, _expected_mean(logits, video_index), rtol=1e-6)
    np.testing.assert_array_equal(video_labels, labels[::3])  # sorted by video_index
    ids, counts = aggregator.view_counts()
    np.testing.assert_array_equal(ids, np.unique(video_index))
    np.testing.assert_array_equal(counts, 3)


def test_mean_probs_multi_label_uses_sigmoid():
    logits, labels, video_index = _views(2)
    aggregator = evaluate.ViewAggregator(6, combine="mean_probs", multi_label=True)
    _feed_shuffled(aggregator, logits, labels, video_index, seed=3)
    scores, _ = aggregator.result()
    expected = _expected_mean(1 / (1 + np.exp(-logits.astype(np.float64))), video_index)
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    mean_logits = _expected_mean(logits, video_index)
    assert not np.allclose(scores, 1 / (1 + np.exp(-mean_logits)), atol=1e-3)  # order matters


def test_mean_probs_single_label_and_epic_use_softmax_per_split():
    logits, labels, video_index = _views(4, num_classes=7, multi_label=False)
    single = evaluate.ViewAggregator(7, combine="mean_probs")
    _feed_shuffled(single, logits, labels, video_index, seed=5)
    scores, _ = single.result()
    softmax = np.exp(logits - logits.max(1, keepdims=True))
    softmax /= softmax.sum(1, keepdims=True)
    np.testing.assert_allclose(scores, _expected_mean(softmax, video_index), rtol=1e-5)
    np.testing.assert_allclose(scores.sum(1), 1.0)

    epic = evaluate.ViewAggregator(7, combine="mean_probs", class_splits=(3, 4))
    epic_labels = np.zeros_like(labels)
    epic_labels[:, 1] = epic_labels[:, 5] = 1
    epic.add(logits, epic_labels, video_index, np.ones(len(logits)))
    scores, _ = epic.result()
    np.testing.assert_allclose(scores[:, :3].sum(1), 1.0)
    np.testing.assert_allclose(scores[:, 3:].sum(1), 1.0)
    np.testing.assert_allclose(
        scores, _expected_mean(evaluate.split_softmax(logits, (3, 4)), video_index), rtol=1e-6
    )


def test_device_axis_and_single_view_batches_give_the_same_result():
    logits, labels, video_index = _views(6, num_videos=8, views_per_video=2)
    by_device = evaluate.ViewAggregator(6)
    # [devices=4, per_device=4, C] as a sharded eval step might return it.
    by_device.add(
        logits.reshape(4, 4, 6), labels.reshape(4, 4, 6), video_index.reshape(4, 4), np.ones((4, 4))
    )
    one_by_one = evaluate.ViewAggregator(6)
    for row in reversed(range(len(logits))):
        one_by_one.add(
            logits[row : row + 1], labels[row : row + 1], video_index[row : row + 1], [1.0]
        )
    for a, b in zip(by_device.result(), one_by_one.result()):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_label_disagreement_names_the_video():
    logits, labels, video_index = _views(7)
    aggregator = evaluate.ViewAggregator(6)
    aggregator.add(logits[:6], labels[:6], video_index[:6], np.ones(6))
    # Within one batch.
    bad_labels = labels[6:9].copy()
    bad_labels[1] = 1 - bad_labels[1]
    with pytest.raises(ValueError, match=r"video_index \[" + str(video_index[6]) + r"\]"):
        aggregator.add(logits[6:9], bad_labels, video_index[6:9], np.ones(3))
    # Against views added in an earlier batch.
    bad_labels = labels[0:1].copy()
    bad_labels[0, 0] = 1 - bad_labels[0, 0]
    with pytest.raises(ValueError, match=r"video_index \[" + str(video_index[0]) + r"\]"):
        aggregator.add(logits[0:1], bad_labels, video_index[0:1], np.ones(1))
    # The failed calls changed nothing.
    assert aggregator.num_videos == 2
    np.testing.assert_array_equal(aggregator.view_counts()[1], [3, 3])


def test_metrics_from_aggregator_match_direct_computation():
    logits, _, video_index = _views(8, num_videos=40, num_classes=7)
    verb = np.repeat(np.arange(40) % 3, 3)
    noun = np.repeat(np.arange(40) % 4, 3)
    labels = np.concatenate([np.eye(3)[verb], np.eye(4)[noun]], axis=1)  # [one-hot verb ; noun]
    aggregator = evaluate.ViewAggregator(7, combine="mean_probs", class_splits=(3, 4))
    _feed_shuffled(aggregator, logits, labels, video_index, seed=9)
    scores, video_labels = aggregator.result()
    result = aggregator.metrics()
    assert result == metrics.compute_metrics(
        scores, video_labels, multi_label=False, class_splits=(3, 4), scores_are_probs=True
    )
    assert result["num_examples"] == 40


def test_bad_configuration_and_shapes_raise():
    with pytest.raises(ValueError, match="'max'"):
        evaluate.ViewAggregator(5, combine="max")
    with pytest.raises(ValueError, match=r"class_splits=\(2, 2\).*num_classes=5"):
        evaluate.ViewAggregator(5, class_splits=(2, 2))
    aggregator = evaluate.ViewAggregator(5)
    with pytest.raises(ValueError, match="num_classes=5"):
        aggregator.add(np.zeros((2, 4)), np.zeros((2, 4)), [0, 1], [1, 1])
    with pytest.raises(ValueError, match="video_index has 3"):
        aggregator.add(np.zeros((2, 5)), np.zeros((2, 5)), [0, 1, 2], [1, 1])
    with pytest.raises(ValueError, match="non-finite logits for video_index \\[1\\]"):
        aggregator.add(np.array([[0.0] * 5, [np.inf] * 5]), np.zeros((2, 5)), [0, 1], [1, 1])
    assert aggregator.result()[0].shape == (0, 5)


def test_format_results_table():
    table = evaluate.format_results_table(
        {
            "audio": {"map": 0.30912, "num_examples": 100},
            "audio+rgb": {"map": 0.439, "d_prime": 2.5, "num_examples": 100},
        }
    )
    assert table.splitlines() == [
        "| run | map | num_examples | d_prime |",
        "|---|---:|---:|---:|",
        "| audio | 0.3091 | 100 |  |",
        "| audio+rgb | 0.4390 | 100 | 2.5000 |",
    ]


def test_write_results_json(tmp_path):
    path = tmp_path / "new_dir" / "results.json"
    evaluate.write_results_json(
        str(path),
        {"map": np.float32(0.25), "d_prime": float("inf"), "count": np.int64(3)},
        {"dataset": "audioset", "step": np.int32(1000), "class_splits": (97, 300)},
    )
    written = json.loads(path.read_text())
    assert written == {
        "metrics": {"map": 0.25, "d_prime": "inf", "count": 3},
        "dataset": "audioset",
        "step": 1000,
        "class_splits": [97, 300],
    }
    assert list(tmp_path.joinpath("new_dir").iterdir()) == [path]  # no temp file left
    with pytest.raises(ValueError, match="'metrics'"):
        evaluate.write_results_json(str(path), {}, {"metrics": 1})


def test_aggregator_per_class_results_match_its_metrics():
    logits, labels, video_index = _views(10, num_videos=20, num_classes=5, multi_label=False)
    aggregator = evaluate.ViewAggregator(5, combine="mean_probs")
    _feed_shuffled(aggregator, logits, labels, video_index, seed=11)
    result, classes = aggregator.metrics_and_classes()
    assert result == aggregator.metrics()
    scores, video_labels = aggregator.result()
    _, expected = metrics.compute_metrics_and_classes(scores, video_labels, multi_label=False)
    np.testing.assert_array_equal(classes.top1, expected.top1)
    assert classes.count.sum() == 20


def test_per_class_entries_name_classes_heads_and_undefined_values():
    classes = metrics.ClassResults(
        ap=np.array([0.5, np.nan, 1.0, 0.25, 0.75]),
        top1=np.array([1.0, np.nan, 0.5, 0.0, 0.25]),
        count=np.array([2, 0, 4, 1, 4]),
    )
    entries = evaluate.per_class_entries(
        classes, ["cut", "open", "knife", "pan", "cup"], (2, 3), ("verb", "noun")
    )
    assert entries[1] == {
        "index": 1,
        "name": "open",
        "ap": None,
        "top1": None,
        "count": 0,
        "head": "verb",
    }
    assert entries[4] == {
        "index": 4,
        "name": "cup",
        "ap": 0.75,
        "top1": 0.25,
        "count": 4,
        "head": "noun",
    }
    assert [e["head"] for e in entries] == ["verb", "verb", "noun", "noun", "noun"]
    one_head = evaluate.per_class_entries(classes, ["a", "b"])  # wrong count: generic names
    assert [e["name"] for e in one_head] == [f"class_{i}" for i in range(5)]
    assert all("head" not in e for e in one_head)


def test_per_class_table_ranks_by_score_with_ties_by_name_and_missing_last():
    entries = [
        {"index": 0, "name": "zebra", "ap": 0.5, "top1": 0.5, "count": 2},
        {"index": 1, "name": "a|b", "ap": None, "top1": None, "count": 0},
        {"index": 2, "name": "bell", "ap": 0.9, "top1": 1.0, "count": 3},
        {"index": 3, "name": "alarm", "ap": 0.25, "top1": 0.5, "count": 4},
    ]
    assert evaluate.format_per_class_table(entries, multi_label=False).splitlines() == [
        "| rank | class | top-1 | AP | examples |",
        "|---:|---|---:|---:|---:|",
        "| 1 | bell | 1.0000 | 0.9000 | 3 |",
        "| 2 | alarm | 0.5000 | 0.2500 | 4 |",
        "| 3 | zebra | 0.5000 | 0.5000 | 2 |",
        "| 4 | a\\|b |  |  | 0 |",
    ]
    assert evaluate.format_per_class_table(entries, multi_label=True).splitlines()[2:] == [
        "| 1 | bell | 0.9000 | 3 |",
        "| 2 | zebra | 0.5000 | 2 |",
        "| 3 | alarm | 0.2500 | 4 |",
        "| 4 | a\\|b |  | 0 |",
    ]
    split = [dict(e, head="verb" if e["index"] < 2 else "noun") for e in entries]
    lines = evaluate.format_per_class_table(split, multi_label=False).splitlines()
    assert lines[0] == "### verb" and lines[7] == "### noun"
    assert lines[4:6] == ["| 1 | zebra | 0.5000 | 0.5000 | 2 |", "| 2 | a\\|b |  |  | 0 |"]
    assert lines[11:] == [
        "| 1 | bell | 1.0000 | 0.9000 | 3 |",
        "| 2 | alarm | 0.5000 | 0.2500 | 4 |",
    ]
