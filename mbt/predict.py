"""Classify video and audio files with a trained mbt model or a Scenic MBT checkpoint.

    python -m mbt.predict --workdir=DIR video.mp4 [more files]      # DIR/export of a run
    python -m mbt.predict --export_dir=DIR --json a.mp4 b.wav
    python -m mbt.predict --checkpoint=checkpoint_500000 --config=config.py \\
        --class_names=class_labels_indices.csv a.mp4

Each file is decoded with `mbt.data.media` (frames at the training data's fps and short side,
16 kHz mono audio) and cut into the test split's views -- `num_test_clips` evenly spaced time
windows x `num_spatial_crops` crops -- by the input pipeline's own `clips.make_view` (centre
crop, rgb in [-1, 1], normalised log-mel). Only the frames and audio samples the views use are
decoded, so long videos are fine. The model runs on all views; their logits (or
probabilities, `config.test_combine`) are averaged and the top-k classes printed with
sigmoid (multi-label) or softmax (per head, e.g. EPIC verb / noun) scores.

A file without an audio track runs the rgb branch alone (MBT: the same model with
`modalities=('rgb',)`, sharing the rgb parameters, norm and head; the token classifier then
reads the rgb CLS only), an audio file the spectrogram branch, each with a warning. Other
models get the neutral input the training data held for such files (silence / zero frames).
A missing or undecodable file is reported and skipped; the exit code is then 1.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import os
import sys
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import flags

from mbt import branches
from mbt import cli
from mbt import evaluate
from mbt import export
from mbt import models
from mbt.data import clips
from mbt.data import media
from mbt.data import pipeline
from mbt.data import registry
from mbt.data import sources
from mbt.pretrained import scenic_checkpoint

# Needed frames closer than this (in stored frames per second of video) are read in one go.
_MERGE_GAP_S = 1.0
# Audio up to this far into a file is decoded from its start (exact resampling phase).
_WHOLE_AUDIO_S = 600.0


class PredictError(Exception):
    """A file could not be predicted; the message names it."""


@dataclasses.dataclass
class Predictor:
    """A model with everything needed to turn a media file into class scores.

    Attributes:
      model: the full model (all of `meta.modalities`).
      params: its parameters (nested dict of numpy arrays).
      model_config: `config.model`.
      meta: label space, input shapes, stored frame rate and size.
      settings: the test split's `clips.ClipSettings` (dataset modalities, shapes, log-mel).
      num_test_clips, num_spatial_crops: views per file (clip-major order).
      combine: 'mean_logits' or 'mean_probs' (`config.test_combine`).
      views_per_call: views per model call (None: all of a file's views in one call); fewer
        bound the memory of large models.
    """

    model: Any
    params: dict
    model_config: ml_collections.ConfigDict
    meta: export.ExportMeta
    settings: clips.ClipSettings
    num_test_clips: int
    num_spatial_crops: int
    combine: str = "mean_logits"
    views_per_call: int | None = None
    _branches: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def num_views(self) -> int:
        return self.num_test_clips * self.num_spatial_crops

    def apply_fn(self, modalities: tuple[str, ...]):
        """Jitted `(params, inputs) -> logits [V, C]` for the model on `modalities`, and params."""
        if modalities not in self._branches:
            if modalities == tuple(self.meta.modalities):
                model, params = self.model, self.params
            else:
                model, params = branches.branch_model(
                    self.model_config,
                    self.meta.num_classes,
                    self.meta.input_shapes,
                    self.params,
                    modalities,
                )
            apply = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))
            self._branches[modalities] = (apply, params)
        return self._branches[modalities]


# --- building a predictor ------------------------------------------------------------------


def _no_examples(split: str, start: int, stop: int):
    """The `read` of the sources predict makes for their clip settings only."""
    raise ValueError(f"predict reads files, not dataset splits (asked for {split}[{start}:{stop}])")


def clip_settings(
    config: ml_collections.ConfigDict, meta: export.ExportMeta
) -> tuple[clips.ClipSettings, dict]:
    """The test split's clip settings of `config.dataset` for frames stored as `meta` says,
    checked against the model's input shapes; also returns the merged dataset values."""
    values = pipeline.dataset_values(config)
    missing = [m for m in meta.modalities if m not in values["modalities"]]
    if missing:
        raise ValueError(
            f"config.dataset.modalities={values['modalities']} lacks the model's "
            f"modalities {missing}"
        )
    stored = sources.ExampleSource(
        name=f"{values['name']} (prediction)",
        class_names=meta.class_names,
        class_splits=meta.class_splits,
        multi_label=meta.multi_label,
        label_keys=("label",),
        modalities=pipeline.MODALITIES,
        fps=meta.video_fps,
        split_sizes={},
        read=_no_examples,
    )
    settings = pipeline.clip_settings(values, stored)
    given = settings.input_shapes()
    for m in meta.modalities:
        if tuple(given[m]) != tuple(meta.input_shapes[m]):
            raise ValueError(
                f"config.dataset gives {m} inputs of shape {tuple(given[m])} but the model "
                f"takes {tuple(meta.input_shapes[m])} (check config.dataset num_frames, "
                "frame_size, audio_seconds, num_mel_bins, spec_channels)"
            )
    return settings, values


def _apply_overrides(
    config: ml_collections.ConfigDict, num_test_clips: int | None, num_spatial_crops: int | None
) -> None:
    if num_test_clips is not None:
        config.dataset.num_test_clips = int(num_test_clips)
    if num_spatial_crops is not None:
        config.dataset.num_spatial_crops = int(num_spatial_crops)


def _make_predictor(model, params, config, meta) -> Predictor:
    settings, values = clip_settings(config, meta)
    combine = config.get("test_combine", "mean_logits") or "mean_logits"
    if combine not in evaluate.COMBINE_MODES:
        raise ValueError(f"config.test_combine={combine!r}; allowed: {evaluate.COMBINE_MODES}")
    return Predictor(
        model=model,
        params=params,
        model_config=config.model,
        meta=meta,
        settings=settings,
        num_test_clips=int(values["num_test_clips"]),
        num_spatial_crops=int(values["num_spatial_crops"]),
        combine=combine,
    )


def predictor_from_export(
    export_dir: str, *, num_test_clips: int | None = None, num_spatial_crops: int | None = None
) -> Predictor:
    """A predictor from an export bundle (`mbt.export.save_export`)."""
    model, params, config, meta = export.load_export(export_dir)
    _apply_overrides(config, num_test_clips, num_spatial_crops)
    return _make_predictor(model, params, config, meta)


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """A config from a `.py` file with `get_config()` (`file.py:arg` calls `get_config(arg)`)
    or a `.json` file (e.g. an export's config.json)."""
    path, arg = str(path), ""
    if not os.path.isfile(path) and ":" in path:
        path, arg = path.rsplit(":", 1)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path} not found")
    if path.endswith(".json"):
        with open(path) as f:
            try:
                return ml_collections.ConfigDict(json.load(f))
            except json.JSONDecodeError as e:
                raise ValueError(f"config file {path} is not valid JSON: {e}") from e
    spec = importlib.util.spec_from_file_location("_mbt_predict_config", path)
    if spec is None or spec.loader is None or not path.endswith(".py"):
        raise ValueError(f"config file {path}: expected a .py file with get_config() or a .json")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path} has no get_config() function")
    config = module.get_config(arg) if arg else module.get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        config = ml_collections.ConfigDict(config)
    return config


def read_class_names(path: str) -> tuple[str, ...]:
    """Class names from AudioSet's `class_labels_indices.csv` (header `index,mid,display_name`;
    names in index order) or from a text file with one name per line (blank lines skipped)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"class names file {path} not found")
    with open(path, newline="", encoding="utf-8") as f:
        text = f.read()
    first = text.lstrip("\ufeff").splitlines()[0].strip() if text.strip() else ""
    if [c.strip() for c in first.split(",")][:3] == ["index", "mid", "display_name"]:
        rows = list(csv.DictReader(text.lstrip("\ufeff").splitlines(), skipinitialspace=True))
        try:
            indexed = sorted((int(r["index"]), r["display_name"]) for r in rows)
        except (TypeError, ValueError) as e:
            raise ValueError(f"class names file {path}: bad index column ({e})") from e
        if [i for i, _ in indexed] != list(range(len(indexed))):
            raise ValueError(f"class names file {path}: indices are not 0..{len(indexed) - 1}")
        return tuple(name for _, name in indexed)
    return tuple(line.strip() for line in text.lstrip("\ufeff").splitlines() if line.strip())


def _label_layout(config, num_classes: int) -> tuple[bool, tuple[int, ...] | None]:
    """(multi_label, class_splits) of the dataset named by `config.dataset.name` (its
    registry spec; scenic_tfrecord: `config.dataset.multi_label` and `class_splits`)."""
    values = pipeline.dataset_values(config)
    name = values["name"]
    multi_label, splits = registry.get(name, values["imports"]).label_layout(values)
    if splits and sum(splits) != num_classes:
        raise ValueError(
            f"config.dataset.name={name!r} has label heads {splits} but the "
            f"checkpoint has {num_classes} classes"
        )
    return multi_label, splits


def predictor_from_scenic(
    checkpoint_path: str,
    config_path: str,
    class_names_path: str | None = None,
    *,
    num_test_clips: int | None = None,
    num_spatial_crops: int | None = None,
) -> Predictor:
    """A predictor from a Scenic MBT checkpoint and a config file.

    `config.model` (any keys; at least what the shapes cannot tell, e.g. `fusion_layer`) is
    given to `scenic_checkpoint.load_scenic_mbt` as hints; `config.dataset` (defaults: MBT's
    AudioSet preprocessing) sets the inputs; `config.dataset.modalities` defaults to the
    checkpoint's. Class names: `class_names_path`, else `config.dataset.class_names`, else
    `class_<i>`.
    """
    config = load_config_file(config_path)
    hints = config.get("model")
    restored = scenic_checkpoint.load_scenic_mbt(checkpoint_path, hints=hints)
    modalities = tuple(restored.model_config.modalities)
    dataset = config.get("dataset")
    if dataset is None:
        config.dataset = pipeline.default_dataset_config()
        config.dataset.modalities = modalities
    elif dataset.get("modalities") is None:
        config.dataset.modalities = modalities
    config.model = restored.model_config
    _apply_overrides(config, num_test_clips, num_spatial_crops)
    num_classes = restored.num_classes

    if class_names_path:
        names = read_class_names(class_names_path)
        source = f"class names file {class_names_path}"
    else:
        names = tuple(config.dataset.get("class_names") or ())
        source = "config.dataset.class_names"
    if not names:
        names = tuple(f"class_{i}" for i in range(num_classes))
    if len(names) != num_classes:
        raise ValueError(
            f"{source} has {len(names)} names but the checkpoint "
            f"{checkpoint_path} has {num_classes} classes"
        )
    multi_label, splits = _label_layout(config, num_classes)
    values = pipeline.dataset_values(config)
    stored = sources.ExampleSource(
        name="scenic",
        class_names=names,
        class_splits=splits,
        multi_label=multi_label,
        label_keys=("label",),
        modalities=pipeline.MODALITIES,
        fps=25.0,
        split_sizes={},
        read=_no_examples,
    )
    input_shapes = pipeline.clip_settings(values, stored).input_shapes()
    meta = export.ExportMeta(
        num_classes=num_classes,
        class_names=names,
        class_splits=splits,
        multi_label=multi_label,
        modalities=modalities,
        input_shapes={m: tuple(input_shapes[m]) for m in modalities if m in input_shapes},
        **export.decode_settings(config),
        head_names=export.default_head_names(values["name"], splits),
        step=restored.step,
    )
    missing = [m for m in modalities if m not in meta.input_shapes]
    if missing:
        raise ValueError(
            f"the checkpoint's model reads {missing}, which the mbt input "
            f"pipeline does not produce (modalities {pipeline.MODALITIES})"
        )
    try:
        export.check_param_shapes(
            restored.params,
            export.expected_param_shapes(restored.model, meta.input_shapes),
            checkpoint_path,
        )
    except ValueError as e:
        raise ValueError(
            f"{e}\n(the inputs come from config.dataset: num_frames, frame_size, "
            "audio_seconds, num_mel_bins)"
        ) from None
    return _make_predictor(restored.model, restored.params, config, meta)


# --- decoding and views --------------------------------------------------------------------


def _view_positions(num_clips: int, num_crops: int) -> list[tuple[float, float]]:
    """(time_fraction, crop_position) per view, clip-major, as `clips.test_view_position`."""
    time = [0.5] if num_clips == 1 else [c / (num_clips - 1) for c in range(num_clips)]
    crop = [0.5] if num_crops == 1 else [k / (num_crops - 1) for k in range(num_crops)]
    return [(t, k) for t in time for k in crop]


def _runs(indices: np.ndarray, max_gap: int) -> list[tuple[int, int]]:
    """Sorted unique indices → inclusive [first, last] runs with gaps ≤ max_gap inside."""
    values = np.unique(indices)
    if values.size == 0:
        return []
    breaks = np.nonzero(np.diff(values) > max_gap)[0]
    starts = np.concatenate([[0], breaks + 1])
    ends = np.concatenate([breaks, [values.size - 1]])
    return [(int(values[s]), int(values[e])) for s, e in zip(starts, ends)]


def _last_frame_before(path: str, index: int, fps: float, short_side: int | None) -> np.ndarray:
    """The last decodable frame before stored frame `index` (searching further back)."""
    span = 2 * int(np.ceil(fps))
    while True:
        back = max(0, index - span)
        got = media.read_frames(path, back / fps, index / fps, fps=fps, short_side=short_side)
        if len(got):
            return got[-1]
        if back == 0:
            raise media.MediaError(f"no video frame could be decoded from {path}")
        span *= 4


def _read_frames(
    path: str, indices: np.ndarray, fps: float, short_side: int | None
) -> dict[int, np.ndarray]:
    """Stored frames (index i = time i / fps) by index, decoded run by run. Indices past the
    last decodable frame get the last frame, as the builders store them."""
    frames: dict[int, np.ndarray] = {}
    for first, last in _runs(indices, max(1, int(round(_MERGE_GAP_S * fps)))):
        got = media.read_frames(path, first / fps, (last + 1) / fps, fps=fps, short_side=short_side)
        if len(got) == 0:  # the run starts after the video's last frame
            got = _last_frame_before(path, first, fps, short_side)[None]
        for i in range(first, last + 1):
            frames[i] = got[min(i - first, len(got) - 1)]
    return frames


def _read_audio(
    path: str, ranges: list[tuple[int, int]], sample_rate: int
) -> dict[tuple[int, int], np.ndarray]:
    """Waveform of each half-open sample range [a, b).

    Up to `_WHOLE_AUDIO_S` the audio is decoded from the start of the file, as the builders
    do, so resampling (e.g. 22.05 or 48 kHz to 16 kHz) gives the stored samples exactly; past
    it each (merged) range is decoded on its own, which may shift the resampling phase by
    less than one sample.
    """
    merged: list[list[int]] = []
    end = max(b for _, b in ranges)
    if end <= _WHOLE_AUDIO_S * sample_rate:
        merged.append([0, end])
    for a, b in sorted(ranges):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    pieces = {
        (a, b): media.read_audio(path, a / sample_rate, b / sample_rate, sample_rate)
        for a, b in merged
    }
    out = {}
    for a, b in ranges:
        ma, mb = next((ma, mb) for ma, mb in pieces if ma <= a and b <= mb)
        out[(a, b)] = pieces[(ma, mb)][a - ma : b - ma]
    return out


@dataclasses.dataclass
class FileViews:
    """Model inputs of one file: `inputs` `{modality: [views, ...]}`, the modalities the file
    provides and its duration (s)."""

    inputs: dict[str, np.ndarray]
    provided: tuple[str, ...]
    duration_s: float


def file_views(path: str, predictor: Predictor) -> FileViews:
    """Decodes `path` and cuts the test split's views with the input pipeline's `make_view`.

    For every view the stored frames and samples the pipeline would take (window start
    `time_fraction x max(0, duration - window)`, frames `stride` apart, wrapping past the end)
    are decoded and handed to `clips.make_view` as an example of exactly one window. A
    missing modality is filled as the builders store it (silence / no frames).
    """
    import tensorflow as tf  # already loaded by mbt.data.clips

    settings, meta = predictor.settings, predictor.meta
    try:
        info = media.probe(path)
    except media.MediaError as e:
        raise PredictError(str(e)) from None
    fps, rate = meta.video_fps, meta.sample_rate
    needs_rgb = "rgb" in settings.modalities
    needs_audio = "spectrogram" in settings.modalities
    provided = tuple(
        m
        for m, has in (("rgb", info.has_video), ("spectrogram", info.has_audio))
        if has and m in settings.modalities
    )
    if info.duration_s <= 0:
        raise PredictError(f"{path}: duration is 0 s")
    num_frames_stored = int(round(info.duration_s * fps))
    num_samples_stored = int(round(info.duration_s * rate))
    # The pipeline's clip arithmetic (clips.make_view / sample_rgb / sample_spectrogram), in
    # float32 like TensorFlow so that every rounding agrees.
    f32 = np.float32
    if needs_audio:
        duration = f32(num_samples_stored) / f32(rate)
    else:
        duration = f32(num_frames_stored) / f32(fps)
    free = max(f32(duration) - f32(settings.window_seconds), f32(0.0))
    positions = _view_positions(predictor.num_test_clips, predictor.num_spatial_crops)
    starts = sorted({t for t, _ in positions})
    frame_ids, sample_ranges = {}, {}
    for t in starts:
        start_s = f32(t) * f32(free)
        if needs_rgb:
            first = int(np.round(f32(start_s) * f32(fps)))
            frame_ids[t] = (first + np.arange(settings.num_frames) * settings.stride) % max(
                num_frames_stored, 1
            )
        if needs_audio:
            first = int(np.round(f32(start_s) * f32(rate)))
            total = max(num_samples_stored, 1)
            # A window past the end wraps to the start: at most a few pieces.
            pieces, at = [], first % total
            remaining = settings.audio_samples
            while remaining > 0:
                take = min(remaining, total - at)
                pieces.append((at, at + take))
                remaining -= take
                at = 0
            sample_ranges[t] = pieces

    try:
        frames = {}
        if needs_rgb and info.has_video:
            frames = _read_frames(
                path, np.concatenate(list(frame_ids.values())), fps, meta.short_side
            )
        audio = {}
        if needs_audio and info.has_audio:
            audio = _read_audio(path, [r for rs in sample_ranges.values() for r in rs], rate)
    except media.MediaError as e:
        raise PredictError(str(e)) from None

    window_settings = dataclasses.replace(settings, stride=1)
    side = meta.short_side or 2
    views = []
    for t, crop in positions:
        example = {}
        if needs_rgb:
            example["rgb"] = (
                np.stack([frames[int(i)] for i in frame_ids[t]])
                if frames
                else np.zeros((0, side, side, 3), np.uint8)
            )
        if needs_audio:
            example["audio"] = (
                np.concatenate([audio[r] for r in sample_ranges[t]])
                if audio
                else np.zeros(settings.audio_samples, np.float32)
            )
        # One window per example: make_view starts at 0 and takes frames 0..num_frames-1.
        view = clips.make_view(
            example,
            window_settings,
            time_fraction=tf.constant(0.0),
            crop_position=tf.constant(crop, tf.float32),
            seed=None,
        )
        views.append({m: v.numpy() for m, v in view.items()})
    inputs = {m: np.stack([v[m] for v in views]) for m in settings.modalities}
    return FileViews(inputs=inputs, provided=provided, duration_s=float(info.duration_s))


# --- prediction ----------------------------------------------------------------------------


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, np.float64)))


def run_views(
    apply, params, inputs: Mapping[str, np.ndarray], views_per_call: int | None
) -> np.ndarray:
    """Logits `[V, C]` (float64) of `inputs` `{modality: [V, ...]}`, `views_per_call` views at
    a time; the last call is padded to the same size so that one compile serves all."""
    total = len(next(iter(inputs.values())))
    size = min(views_per_call or total, total)
    chunks = []
    for lo in range(0, total, size):
        chunk = {m: x[lo : lo + size] for m, x in inputs.items()}
        short = size - len(next(iter(chunk.values())))
        if short:
            chunk = {
                m: np.concatenate([x, np.repeat(x[:1], short, axis=0)]) for m, x in chunk.items()
            }
        chunks.append(np.asarray(apply(params, chunk), np.float64)[: size - short])
    return np.concatenate(chunks)


def combine_views(logits: np.ndarray, predictor: Predictor) -> np.ndarray:
    """Class scores `[C]` (probabilities) from per-view logits `[V, C]`: mean logits then
    sigmoid / softmax per head, or the mean of per-view probabilities (`config.test_combine`)."""
    meta = predictor.meta
    aggregator = evaluate.ViewAggregator(
        meta.num_classes,
        combine=predictor.combine,
        multi_label=meta.multi_label,
        class_splits=meta.class_splits,
    )
    views = logits.shape[0]
    aggregator.add(
        logits, np.zeros_like(logits), np.zeros(views, np.int64), np.ones(views, np.float32)
    )
    scores = aggregator.result()[0][0]
    if aggregator.scores_are_probs:
        return scores
    if meta.multi_label:
        return _sigmoid(scores)
    return evaluate.split_softmax(scores[None], meta.class_splits)[0]


def top_k(scores: np.ndarray, meta: export.ExportMeta, k: int) -> list[dict[str, Any]]:
    """The `k` best classes per head: `{'rank', 'index', 'class', 'score'}` (+ `'head'`)."""
    splits = meta.class_splits or (meta.num_classes,)
    heads = meta.head_names or (
        (None,) if len(splits) == 1 else tuple(f"head_{i}" for i in range(len(splits)))
    )
    out, offset = [], 0
    for head, size in zip(heads, splits):
        block = scores[offset : offset + size]
        order = np.argsort(-block, kind="stable")[: max(1, k)]
        for rank, i in enumerate(order, 1):
            row = {
                "rank": rank,
                "index": int(offset + i),
                "class": meta.class_names[offset + i],
                "score": float(block[i]),
            }
            if head is not None:
                row = {"head": head, **row}
            out.append(row)
        offset += size
    return out


def predict_file(path: str, predictor: Predictor, k: int = 5) -> dict[str, Any]:
    """Scores one file: `{'file', 'modalities', 'num_views', 'score', 'top_k', 'warnings',
    'scores'}` (`scores`: all class probabilities). Raises PredictError naming the file."""
    views = file_views(path, predictor)
    wanted = tuple(predictor.meta.modalities)
    used = tuple(m for m in wanted if m in views.provided)
    warnings = []
    if not used:
        raise PredictError(
            f"{path} has no {' or '.join(wanted)} (streams: "
            f"{', '.join(views.provided) or 'none usable'}) for this model"
        )
    missing = [m for m in wanted if m not in used]
    what = {"spectrogram": "audio track", "rgb": "video stream"}
    if missing:
        lack = ", ".join(f"no {what.get(m, m)}" for m in missing)
        family = models.get_family(predictor.model_config.get("name"))
        if family.predict_missing_with_branch:
            warnings.append(f"{path}: {lack}; running the {'+'.join(used)} branch only")
        else:
            warnings.append(
                f"{path}: {lack}; feeding "
                f"{'silence' if 'spectrogram' in missing else 'blank frames'} "
                "as the training data did"
            )
            used = wanted
    apply, params = predictor.apply_fn(used)
    logits = run_views(apply, params, {m: views.inputs[m] for m in used}, predictor.views_per_call)
    if not np.all(np.isfinite(logits)):
        raise PredictError(f"{path}: the model produced non-finite logits")
    scores = combine_views(logits, predictor)
    return {
        "file": path,
        "modalities": list(used),
        "num_views": int(logits.shape[0]),
        "score": "sigmoid" if predictor.meta.multi_label else "softmax",
        "top_k": top_k(scores, predictor.meta, k),
        "warnings": warnings,
        "scores": scores,
    }


def format_text(result: Mapping[str, Any]) -> str:
    """Human-readable lines for one `predict_file` result."""
    lines = [
        f"{result['file']}  ({'+'.join(result['modalities'])}, {result['num_views']} "
        f"views, {result['score']})"
    ]
    head = None
    for row in result["top_k"]:
        if row.get("head") != head:
            head = row.get("head")
            lines.append(f"  {head}:")
        indent = "    " if head is not None else "  "
        lines.append(f"{indent}{row['score']:.4f}  {row['class']}")
    return "\n".join(lines)


def define_model_flags(fv: flags.FlagValues) -> None:
    """The flags that pick the model (`build_predictor` reads them): --workdir, --export_dir,
    --checkpoint (alias --scenic_checkpoint), --config and --class_names."""
    flags.DEFINE_string(
        "workdir", None, "model (one of): a training workdir: uses WORKDIR/export", flag_values=fv
    )
    flags.DEFINE_string(
        "export_dir",
        None,
        "model (one of): an export directory (mbt.export.save_export)",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "checkpoint",
        None,
        "model (one of): a Scenic MBT checkpoint (msgpack file or orbax directory "
        "checkpoint_<step>) or a directory of them; needs --config",
        flag_values=fv,
    )
    flags.DEFINE_alias("scenic_checkpoint", "checkpoint", flag_values=fv)
    flags.DEFINE_string(
        "config",
        None,
        "with --checkpoint: a .py file with get_config() or a .json config (config.model "
        "hints, config.dataset)",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "class_names",
        None,
        "with --checkpoint: AudioSet's class_labels_indices.csv or a file with one class "
        "name per line",
        flag_values=fv,
    )


def _flags() -> flags.FlagValues:
    """The CLI's flags, on their own `FlagValues` (see `mbt.cli`)."""
    fv = flags.FlagValues()
    define_model_flags(fv)
    flags.DEFINE_integer("top_k", 5, "classes shown per head", flag_values=fv)
    flags.DEFINE_bool("json", False, "one JSON object per file and line on stdout", flag_values=fv)
    flags.DEFINE_integer(
        "num_test_clips",
        None,
        "override config.dataset.num_test_clips (temporal views)",
        flag_values=fv,
    )
    flags.DEFINE_enum(
        "num_spatial_crops",
        None,
        ("1", "3"),
        "override config.dataset.num_spatial_crops",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "batch_size",
        0,
        "views per model call (0: all views of a file at once); lower it to bound memory",
        flag_values=fv,
    )
    return fv


def build_predictor(args: Any) -> Predictor:
    """The predictor the flags name (`args`: the parsed `_flags()` or any object with them)."""
    chosen = [n for n in ("workdir", "export_dir", "checkpoint") if getattr(args, n)]
    if len(chosen) != 1:
        raise ValueError(
            "give exactly one of --workdir, --export_dir, --checkpoint "
            f"(got {['--' + n for n in chosen] or 'none'})"
        )
    crops = args.num_spatial_crops
    overrides = dict(
        num_test_clips=args.num_test_clips, num_spatial_crops=int(crops) if crops else None
    )
    if args.checkpoint:
        if not args.config:
            raise ValueError(
                "--checkpoint needs --config (config.model hints such as "
                "fusion_layer, and config.dataset for the inputs)"
            )
        return predictor_from_scenic(args.checkpoint, args.config, args.class_names, **overrides)
    for flag in ("config", "class_names"):
        if getattr(args, flag):
            raise ValueError(
                f"--{flag} is only read with --checkpoint (an export "
                "carries its config and class names)"
            )
    export_dir = args.export_dir or export.default_export_dir(args.workdir)
    return predictor_from_export(export_dir, **overrides)


def _checked_args(args: Any) -> None:
    for flag, low in (("top_k", 1), ("batch_size", 0)):
        if getattr(args, flag) < low:
            raise ValueError(f"--{flag}={getattr(args, flag)} must be >= {low}")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; returns 0, or 1 when any file failed, 2 on bad arguments or model."""
    args = _flags()
    files = cli.parse(
        args,
        argv,
        prog="python -m mbt.predict",
        description=__doc__.split("\n\n")[0],
        positional="FILE [FILE ...]",
    )
    if not files:
        cli.usage_error("python -m mbt.predict", "give at least one video or audio FILE")
    try:
        _checked_args(args)
        predictor = build_predictor(args)
        predictor.views_per_call = args.batch_size or None
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed = 0
    for path in files:
        try:
            result = predict_file(path, predictor, args.top_k)
        except (PredictError, media.MediaError) as e:
            failed += 1
            print(f"error: {e}", file=sys.stderr)
            if args.json:
                print(json.dumps({"file": path, "error": str(e)}), flush=True)
            continue
        for warning in result["warnings"]:
            print(f"warning: {warning}", file=sys.stderr)
        if args.json:
            record = {k: v for k, v in result.items() if k != "scores"}
            print(json.dumps(record), flush=True)
        else:
            print(format_text(result), flush=True)
    if failed:
        print(f"{failed} of {len(files)} files failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
