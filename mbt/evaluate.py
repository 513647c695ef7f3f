"""Multi-view test aggregation and result reporting (markdown tables, JSON file).

A test video is evaluated as several views (clips / crops) that share its `video_index`;
`ViewAggregator` averages them into one score row per video, whatever order, batch or device
the views arrive in, and drops padding rows (`batch_mask` 0) before anything is stored.
`per_class_entries` names the per-class results (`metrics.ClassResults`) for the results
JSON, and `format_per_class_table` ranks them as markdown.
"""

import json
import math
import os
import tempfile
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import numpy as np

from mbt import metrics as metrics_lib

COMBINE_MODES = ("mean_logits", "mean_probs")
# Views of one video must carry the same labels up to this absolute difference.
_LABEL_TOLERANCE = 1e-6


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Overflow-free logistic function, float64."""
    x = np.asarray(x, np.float64)
    out = np.empty_like(x)
    positive = x >= 0
    out[positive] = 1.0 / (1.0 + np.exp(-x[positive]))
    exp_x = np.exp(x[~positive])
    out[~positive] = exp_x / (1.0 + exp_x)
    return out


def split_softmax(logits: np.ndarray, class_splits: Sequence[int] | None) -> np.ndarray:
    """Softmax over each class split of `logits [N, C]` (over all C when `class_splits` is None)."""
    if not class_splits:
        return np.exp(metrics_lib.log_softmax(logits))
    heads = np.split(np.asarray(logits, np.float64), np.cumsum(class_splits)[:-1], axis=1)
    return np.concatenate([np.exp(metrics_lib.log_softmax(h)) for h in heads], axis=1)


class ViewAggregator:
    """Averages the views of each test video into one score row.

    Usage, once per evaluation:
      agg = ViewAggregator(num_classes, combine='mean_logits', multi_label=True)
      for batch in test_batches:
        agg.add(logits, batch['label'], batch['video_index'], batch['batch_mask'])
      scores, labels = agg.result()   # [videos, C], sorted by video_index

    `combine='mean_logits'` averages raw logits (and returns mean logits);
    `combine='mean_probs'` first maps each view to probabilities -- sigmoid when
    `multi_label`, otherwise softmax per class split (or over all classes) -- and returns the
    mean probabilities. Sums are kept in float64, one row per distinct video seen so far.

    Arrays may carry extra leading axes (e.g. `[devices, per_device_batch, C]`); they are
    flattened. Each process aggregates only what it is given: gather across hosts first.
    """

    def __init__(
        self,
        num_classes: int,
        combine: str = "mean_logits",
        multi_label: bool = False,
        class_splits: tuple[int, ...] | None = None,
    ):
        if combine not in COMBINE_MODES:
            raise ValueError(
                f"ViewAggregator: combine={combine!r}; expected one of {COMBINE_MODES}"
            )
        if class_splits is not None:
            class_splits = tuple(int(s) for s in class_splits)
            if sum(class_splits) != num_classes:
                raise ValueError(
                    f"ViewAggregator: class_splits={class_splits} sum to "
                    f"{sum(class_splits)}, not num_classes={num_classes}"
                )
            if multi_label:
                raise ValueError(
                    f"ViewAggregator: class_splits={class_splits} needs multi_label=False"
                )
        self.num_classes = int(num_classes)
        self.combine = combine
        self.multi_label = multi_label
        self.class_splits = class_splits
        self.reset()

    def reset(self) -> None:
        """Forgets every view added so far."""
        self._slot_of_video: dict[int, int] = {}
        self._video_ids = np.zeros(0, np.int64)
        self._score_sums = np.zeros((0, self.num_classes), np.float64)
        self._labels = np.zeros((0, self.num_classes), np.float32)
        self._view_counts = np.zeros(0, np.int64)

    @property
    def num_videos(self) -> int:
        return len(self._slot_of_video)

    @property
    def scores_are_probs(self) -> bool:
        """Whether `result()` returns probabilities (True) or logits (False)."""
        return self.combine == "mean_probs"

    def _to_scores(self, logits: np.ndarray) -> np.ndarray:
        if self.combine == "mean_logits":
            return np.asarray(logits, np.float64)
        if self.multi_label:
            return _sigmoid(logits)
        return split_softmax(logits, self.class_splits)

    def _grow(self, needed: int) -> None:
        capacity = self._video_ids.shape[0]
        if needed <= capacity:
            return
        new_capacity = max(needed, 2 * capacity, 64)
        extra = new_capacity - capacity
        self._video_ids = np.concatenate([self._video_ids, np.zeros(extra, np.int64)])
        self._score_sums = np.concatenate(
            [self._score_sums, np.zeros((extra, self.num_classes), np.float64)]
        )
        self._labels = np.concatenate(
            [self._labels, np.zeros((extra, self.num_classes), np.float32)]
        )
        self._view_counts = np.concatenate([self._view_counts, np.zeros(extra, np.int64)])

    def add(self, logits, labels, video_index, batch_mask) -> None:
        """Adds one batch of views.

        Args:
          logits: `[B, C]` model outputs (numpy or jax; extra leading axes are flattened).
          labels: `[B, C]` labels; every view of a video must carry the same row.
          video_index: `[B]` int, the source video of each view.
          batch_mask: `[B]`, 0 for padding rows, which are ignored entirely.
        Raises:
          ValueError: on shape mismatches, non-finite logits, or views of one video whose labels
            differ (from each other or from views added earlier); the aggregator is then left
            unchanged.
        """
        logits = np.asarray(logits)
        labels = np.asarray(labels)
        video_index = np.asarray(video_index).reshape(-1)
        batch_mask = np.asarray(batch_mask).reshape(-1)
        if logits.ndim < 2 or logits.shape != labels.shape or logits.shape[-1] != self.num_classes:
            raise ValueError(
                f"ViewAggregator.add: logits {logits.shape} and labels {labels.shape} "
                f"must both be [batch, num_classes={self.num_classes}]"
            )
        logits = logits.reshape(-1, self.num_classes)
        labels = labels.reshape(-1, self.num_classes)
        batch = logits.shape[0]
        if video_index.shape[0] != batch or batch_mask.shape[0] != batch:
            raise ValueError(
                f"ViewAggregator.add: {batch} rows of logits but video_index has "
                f"{video_index.shape[0]} and batch_mask {batch_mask.shape[0]} entries"
            )
        keep = batch_mask > 0
        if not keep.any():
            return
        logits, labels, video_index = logits[keep], labels[keep], video_index[keep].astype(np.int64)
        if not np.all(np.isfinite(logits)):
            bad = video_index[~np.all(np.isfinite(logits), axis=1)]
            raise ValueError(
                f"ViewAggregator.add: non-finite logits for video_index {bad[:5].tolist()}"
            )

        # Reference labels per row: stored labels for known videos, else the video's first row here.
        batch_videos, first_row, row_to_video = np.unique(
            video_index, return_index=True, return_inverse=True
        )
        known_slot = np.array([self._slot_of_video.get(int(v), -1) for v in batch_videos], np.int64)
        reference = labels[first_row].astype(np.float32)
        is_known = known_slot >= 0
        reference[is_known] = self._labels[known_slot[is_known]]
        mismatch = np.any(np.abs(labels - reference[row_to_video]) > _LABEL_TOLERANCE, axis=1)
        if mismatch.any():
            bad_videos = np.unique(video_index[mismatch])
            raise ValueError(
                f"ViewAggregator.add: views of video_index {bad_videos[:10].tolist()} "
                "carry different labels; all views of a video must share its labels"
            )

        num_new = int(np.sum(~is_known))
        first_new_slot = self.num_videos
        self._grow(first_new_slot + num_new)
        new_slots = np.arange(first_new_slot, first_new_slot + num_new)
        known_slot[~is_known] = new_slots
        for video, slot in zip(batch_videos[~is_known].tolist(), new_slots.tolist()):
            self._slot_of_video[video] = slot
        self._video_ids[new_slots] = batch_videos[~is_known]
        self._labels[new_slots] = reference[~is_known]

        row_slots = known_slot[row_to_video]
        np.add.at(self._score_sums, row_slots, self._to_scores(logits))
        np.add.at(self._view_counts, row_slots, 1)

    def view_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """`(video_index [V], views [V])` sorted by video_index: how many views each video got."""
        count = self.num_videos
        order = np.argsort(self._video_ids[:count], kind="stable")
        return self._video_ids[:count][order], self._view_counts[:count][order]

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """`(scores [V, C] float64, labels [V, C] float32)`, one row per video by video_index.

        Scores are mean logits (`mean_logits`) or mean probabilities (`mean_probs`).
        """
        count = self.num_videos
        order = np.argsort(self._video_ids[:count], kind="stable")
        scores = self._score_sums[:count][order] / self._view_counts[:count][order, None]
        return scores, self._labels[:count][order].copy()

    def metrics(self) -> dict[str, float]:
        """`metrics.compute_metrics` on `result()`, told whether the scores are probabilities."""
        scores, labels = self.result()
        return metrics_lib.compute_metrics(
            scores,
            labels,
            multi_label=self.multi_label,
            class_splits=self.class_splits,
            scores_are_probs=self.scores_are_probs,
        )

    def metrics_and_classes(self) -> tuple[dict[str, float], metrics_lib.ClassResults]:
        """`metrics()` and the per-class results, from one pass over `result()`."""
        scores, labels = self.result()
        return metrics_lib.compute_metrics_and_classes(
            scores,
            labels,
            multi_label=self.multi_label,
            class_splits=self.class_splits,
            scores_are_probs=self.scores_are_probs,
        )


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def per_class_entries(
    classes: metrics_lib.ClassResults,
    class_names: Sequence[str],
    class_splits: Sequence[int] | None = None,
    head_names: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """One JSON-ready dict per label column, in class-index order.

    Each is `{"index": i, "name": class_names[i], "ap": float | None, "top1": float | None,
    "count": int}` (None where undefined: AP of a class without positives, top-1 of a class
    without examples or of multi-label data), plus `"head"` (e.g. 'verb' / 'noun') when the
    labels have `class_splits`; `index` counts over all columns (EPIC: verbs, then nouns).

    Args:
      classes: from `metrics.compute_metrics_and_classes`.
      class_names: one per column; when the count differs (a label space without names),
        columns are named 'class_<i>'.
      class_splits: head sizes, or None for one head.
      head_names: one per head; default 'head_<k>'.
    """
    num_classes = classes.ap.shape[0]
    names = [str(n) for n in class_names]
    if len(names) != num_classes:
        names = [f"class_{i}" for i in range(num_classes)]
    head_of = None
    if class_splits:
        heads = list(head_names) or [f"head_{k}" for k in range(len(class_splits))]
        head_of = np.repeat(np.arange(len(class_splits)), class_splits)
    entries = []
    for i, (ap, top1, count) in enumerate(
        zip(classes.ap.tolist(), classes.top1.tolist(), classes.count.tolist())
    ):
        entry: dict[str, Any] = {
            "index": i,
            "name": names[i],
            "ap": _finite_or_none(ap),
            "top1": _finite_or_none(top1),
            "count": int(count),
        }
        if head_of is not None:
            entry["head"] = heads[int(head_of[i])]
        entries.append(entry)
    return entries


def _ranked(entries: Sequence[Mapping[str, Any]], score: str) -> list[Mapping[str, Any]]:
    """Best `score` first, classes without a score last; ties by name, then index."""
    return sorted(
        entries,
        key=lambda e: (e[score] is None, -(e[score] or 0.0), e["name"], e["index"]),
    )


def format_per_class_table(
    entries: Sequence[Mapping[str, Any]], multi_label: bool, digits: int = 4
) -> str:
    """Markdown tables of `per_class_entries`, ranked by score (one table per head).

    The score is AP for multi-label data and top-1 accuracy otherwise (AP shown beside it);
    classes without a score come last; ties are ordered by class name. Columns: rank, class,
    score(s), count (positives for multi-label data, examples otherwise).
    """
    score = "ap" if multi_label else "top1"
    columns = [("ap", "AP")] if multi_label else [("top1", "top-1"), ("ap", "AP")]
    count_name = "positives" if multi_label else "examples"
    header = "| rank | class | " + " | ".join(title for _, title in columns) + f" | {count_name} |"
    rule = "|---:|---|" + "---:|" * (len(columns) + 1)
    heads: dict[str | None, list[Mapping[str, Any]]] = {}
    for entry in entries:
        heads.setdefault(entry.get("head"), []).append(entry)
    blocks = []
    for head, head_entries in heads.items():
        lines = [f"### {head}", ""] if head is not None else []
        lines += [header, rule]
        for rank, entry in enumerate(_ranked(head_entries, score), start=1):
            cells = [_format_cell(entry[key], digits) for key, _ in columns]
            name = _format_cell(entry["name"], digits)
            lines.append(f"| {rank} | {name} | " + " | ".join(cells) + f" | {entry['count']} |")
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def _format_cell(value: Any, digits: int) -> str:
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.{digits}f}"
    return str(value).replace("|", "\\|")


def format_results_table(results: Mapping[str, Mapping[str, Any]], digits: int = 4) -> str:
    """Markdown table: one row per run (`results` key), one column per metric.

    Columns are the union of the metric names in first-seen order; a run lacking a metric
    gets an empty cell. Floats print with `digits` decimals, ints as they are.
    """
    columns: list[str] = []
    for run_metrics in results.values():
        columns.extend(name for name in run_metrics if name not in columns)
    lines = ["| run | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for run, run_metrics in results.items():
        cells = [_format_cell(run_metrics.get(name), digits) for name in columns]
        lines.append(f"| {_format_cell(run, digits)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _to_json_value(value: Any) -> Any:
    """numpy / ConfigDict / non-finite floats -> strict-JSON values (inf -> 'inf', NaN -> 'nan')."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): _to_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json_value(v) for v in value]
    if isinstance(value, np.ndarray):
        return _to_json_value(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else str(value)
    return value if value is None or isinstance(value, str) else str(value)


def write_results_json(
    path: str, metrics: Mapping[str, Any], extra: Mapping[str, Any] | None = None
) -> None:
    """Writes `{"metrics": metrics, **extra}` to `path` (atomically; parent dirs created).

    `extra` holds context such as the dataset, split, checkpoint step or config; it may not
    use the key 'metrics'. Non-finite floats (e.g. d' at AUC 1) are written as "inf"/"nan".
    """
    extra = dict(extra or {})
    if "metrics" in extra:
        raise ValueError(f"write_results_json({path!r}): extra may not contain the key 'metrics'")
    payload = {"metrics": _to_json_value(dict(metrics)), **_to_json_value(extra)}
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", dir=directory, suffix=".tmp", delete=False, encoding="utf-8"
    ) as tmp:
        json.dump(payload, tmp, indent=2, sort_keys=False, allow_nan=False)
        tmp.write("\n")
    os.replace(tmp.name, path)
