"""Input pipeline: stored examples → numpy batches for the trainer (docs/design.md).

API: `default_dataset_config()`, `get_dataset_meta(config)`, `make_dataset(config, split,
mode, batch_size, ...)` (an iterator) or `batch_source(...)` (the same batches, iterable
again), `num_batches(...)`, `prepare_dataset(config, workdir)`.

Two loaders cut the same views (`mbt.data.clips`): grain (`mbt.data.grain_input`) for
ArrayRecord builds, whose global stream is independent of the process layout, and tf.data
(below) for sequential files (TFRecord builds, Scenic TFRecords, memory). `loader='auto'`
takes grain where the data allows. The tf.data modes:
- 'train': infinite, over the first `train_fraction` of the split; each epoch is a fresh
  seeded shuffle of the host's examples (shuffle buffer over the read order); one random
  window and crop per example with stateless augmentation seeded by (seed, host, position
  in the stream); full batches. Resuming with `start_batch=k` gives exactly the batches
  after the first k, skipping whole epochs without reading them and the rest of one epoch
  without decoding anything.
- 'eval': one pass, centre window, centre crop, no augmentation.
- 'test': one pass, `num_test_clips × num_spatial_crops` views per example that share its
  `video_index`.
Eval/test batches are padded with `batch_mask = 0` rows (`video_index = -1`); every host gives
the same number of batches and every example of the split appears exactly once over all hosts.

Keys read from `config.dataset` (defaults in `default_dataset_config()`, described in
docs/config.md):

  name                 a dataset of mbt.data.registry: 'audioset' | 'vggsound' |
                       'epic_kitchens' (TFDS builders in mbt.data.builders) |
                       'scenic_tfrecord' (Scenic/DMVR SequenceExamples) | one registered
                       by a module of `imports`
  imports              modules imported before `name` is looked up (each registers a
                       dataset defined outside mbt, docs/datasets.md 'Add a dataset')
  builder_config       TFDS builder config name ('' = the builder's default)
  data_dir             TFDS data dir ('' = TFDS's default; prepare_dataset sets <workdir>/tfds)
  train_split, eval_split, test_split
                       split names ('' = the dataset's usual ones: its spec's
                       default_splits)
  train_fraction       fraction in (0, 1] of the split that 'train' mode reads: its first
                       ceil(fraction x N) examples in stored order, the same for every
                       seed and run (hosts split that subset between them); 'eval' and
                       'test' always read the whole split
  modalities           subset of ('rgb', 'spectrogram')
  video_fps            frame rate of the stored frames (0 = the builder config's fps; 25 for
                       scenic_tfrecord)
  num_frames, stride   frames per clip and their step in stored frames
  frame_size           side of the square RGB crop (pixels)
  min_resize           short side the frames are resized to before cropping (pixels)
  audio_seconds        audio window (s); with `rgb` both windows start at the same time
  sample_rate          sample rate of the stored audio (Hz)
  num_mel_bins, window_ms, hop_ms, fft_length, fmin, fmax (None = sample_rate / 2),
  mel_power (2 power, 1 magnitude), log_offset
                       log-mel settings (mbt.data.audio.LogMelSettings)
  spec_mean, spec_std  log-mel normalisation (MBT: 1.102, 2.762)
  spec_channels        1, or 3 (repeated)
  use_precomputed_spectrogram
                       use a stored `spectrogram` (scenic melspec) rather than the waveform
  spec_augment.{enabled, num_freq_masks, max_freq_width, num_time_masks, max_time_width,
               time_warp_max_frames, time_warp_max_ratio, time_warp_bound}
                       SpecAugment (mbt.data.settings.SpecAugment: time warp, then masks)
  rgb_augment.{random_flip, scale_jitter, scale_min, scale_max, color, color_prob,
               color_drop_prob, brightness, contrast, saturation, hue}
  num_test_clips       temporal views per example in 'test' mode
  num_spatial_crops    1 (centre) or 3 (both ends and centre of the long side) in 'test' mode
  shuffle_buffer       training shuffle buffer (examples, held undecoded; tf.data)
  tfds_autocache       tf.data: let TFDS keep a whole dataset under 250 MiB in memory after
                       its first pass (TFDS's `try_autocache`); False reads the files on
                       every pass, as at full scale
  loader               'auto' (grain for ArrayRecord builds, else tf.data) | 'grain' |
                       'tf.data'; grain's stream is the same on any process layout
                       (mbt.data.grain_input)
  file_format          format TFDS builds write: 'tfrecord' | 'array_record' (random
                       access, read through grain)
  grain_threads, grain_workers
                       grain: batches prepared at once per process (threads; default one
                       per 4 CPU cores, 1-4), worker processes (0 = none)
  keep_freed_buffers   set glibc's malloc to keep freed multi-MB buffers for reuse
                       (mbt.data.heap; fewer page faults per clip)
  synthetic.{num_clips, seed, num_classes, frame_size, fps, clip_seconds, edge_cases}
                       prepare_dataset's synthetic copy (num_clips = 0: none)
  tfrecord_pattern     scenic_tfrecord: glob with '{split}', or a dict split → glob
  num_classes, class_names, multi_label, class_splits
                       scenic_tfrecord: the label space (records hold class indices only)
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np
import tensorflow as tf

from mbt.data import audio as audio_lib
from mbt.data import augment
from mbt.data import clips
from mbt.data import heap
from mbt.data import registry
from mbt.data import settings as data_settings
from mbt.data import sources
from mbt.data.settings import DatasetMeta
from mbt.data.settings import default_dataset_config
from mbt.data.settings import train_fraction_size
from mbt.data.tf_import import as_graph

_LOG = logging.getLogger(__name__)

MODES = ("train", "eval", "test")
MODALITIES = ("rgb", "spectrogram")
_SEED_MIX = 1_000_003


def _as_dict(value: Any) -> Any:
    if isinstance(value, ml_collections.ConfigDict):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {k: _as_dict(v) for k, v in value.items()}
    return value


def _merge(defaults: dict, given: Mapping, prefix: str) -> dict:
    merged = dict(defaults)
    for key, value in given.items():
        if key not in defaults:
            _LOG.warning("%s%s is not a key the input pipeline reads (ignored)", prefix, key)
            merged[key] = value
        elif isinstance(defaults[key], dict):
            if not isinstance(value, Mapping):
                raise ValueError(
                    f"{prefix}{key} must be a dict with keys {sorted(defaults[key])}, got {value!r}"
                )
            merged[key] = _merge(defaults[key], value, f"{prefix}{key}.")
        else:
            merged[key] = value
    return merged


def dataset_values(config) -> dict:
    """`config.dataset` merged over the defaults, as a plain dict (unknown keys warned)."""
    given = config.get("dataset") if hasattr(config, "get") else None
    if given is None:
        raise ValueError("config has no `dataset` section (start from default_dataset_config())")
    values = _merge(_as_dict(default_dataset_config()), _as_dict(given), "config.dataset.")
    imports = values["imports"]
    values["imports"] = (imports,) if isinstance(imports, str) else tuple(imports or ())
    registry.get(values["name"], values["imports"])  # unknown name: ValueError listing names
    modalities = values["modalities"]
    if isinstance(modalities, str):
        modalities = (modalities,)
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown or not modalities:
        raise ValueError(
            f"config.dataset.modalities={tuple(modalities)!r}: allowed values are "
            f"{MODALITIES} (at least one)"
        )
    values["modalities"] = tuple(dict.fromkeys(modalities))
    return values


def split_names(values: Mapping[str, Any]) -> dict[str, str]:
    """mode → split name: the configured one, else the dataset spec's default."""
    defaults = registry.get(values["name"], values["imports"]).default_splits
    return {mode: values[f"{mode}_split"] or default for mode, default in zip(MODES, defaults)}


def source_from_values(values: dict) -> sources.ExampleSource:
    """The source of the dataset spec: its factory, else its TFDS builder's prepared copy."""
    spec = registry.get(values["name"], values["imports"])
    if spec.source_factory is not None:
        return registry.load(spec.source_factory)(values)
    return sources.tfds_source(
        spec.name,
        values["builder_config"] or None,
        values["data_dir"] or None,
        values["video_fps"] or None,
        values["imports"],
        autocache=bool(values["tfds_autocache"]),
    )


def clip_settings(values: dict, source: sources.ExampleSource) -> clips.ClipSettings:
    """ClipSettings from merged `config.dataset` values (validated)."""
    unavailable = [m for m in values["modalities"] if m not in source.modalities]
    if unavailable:
        raise ValueError(
            f"config.dataset.modalities={values['modalities']!r}: {source.name} "
            f"provides only {source.modalities}"
        )
    log_mel = audio_lib.LogMelSettings(
        sample_rate=int(values["sample_rate"]),
        num_mel_bins=int(values["num_mel_bins"]),
        window_ms=float(values["window_ms"]),
        hop_ms=float(values["hop_ms"]),
        fft_length=int(values["fft_length"]),
        fmin=float(values["fmin"]),
        fmax=None if values["fmax"] is None else float(values["fmax"]),
        power=float(values["mel_power"]),
        log_offset=float(values["log_offset"]),
    )
    settings = clips.ClipSettings(
        modalities=values["modalities"],
        fps=source.fps,
        num_frames=int(values["num_frames"]),
        stride=int(values["stride"]),
        crop_size=int(values["frame_size"]),
        min_resize=int(values["min_resize"]),
        audio_seconds=float(values["audio_seconds"]),
        log_mel=log_mel,
        spec_mean=float(values["spec_mean"]),
        spec_std=float(values["spec_std"]),
        spec_channels=int(values["spec_channels"]),
        use_precomputed_spectrogram=bool(values["use_precomputed_spectrogram"]),
        rgb_augment=augment.RgbAugment(
            **{
                f.name: values["rgb_augment"][f.name]
                for f in dataclasses.fields(augment.RgbAugment)
            }
        ),
        spec_augment=data_settings.spec_augment_settings(values["spec_augment"]),
        full_frame_decode=source.full_frame_decode,
    )
    clips.validate(settings)
    if (
        source.stored_spectrogram_bins is not None
        and settings.use_precomputed_spectrogram
        and "spectrogram" in settings.modalities
    ):
        if settings.log_mel.num_mel_bins != source.stored_spectrogram_bins:
            raise ValueError(
                f"config.dataset.num_mel_bins={settings.log_mel.num_mel_bins} but {source.name} "
                f"stores {source.stored_spectrogram_bins}-bin spectrograms (set "
                "use_precomputed_spectrogram=False to compute them from the waveform)"
            )
        if settings.log_mel.hop_ms != 10.0:
            raise ValueError(
                f"config.dataset.hop_ms={settings.log_mel.hop_ms} but stored "
                "spectrograms have 100 frames per second (hop 10 ms)"
            )
    if values["num_test_clips"] < 1:
        raise ValueError(f"config.dataset.num_test_clips={values['num_test_clips']} must be >= 1")
    if values["num_spatial_crops"] not in (1, 3):
        raise ValueError(
            f"config.dataset.num_spatial_crops={values['num_spatial_crops']} must be 1 or 3"
        )
    return settings


def _meta(values: dict, source: sources.ExampleSource, settings: clips.ClipSettings) -> DatasetMeta:
    return DatasetMeta(
        num_classes=source.num_classes,
        class_names=source.class_names,
        class_splits=source.class_splits,
        multi_label=source.multi_label,
        modalities=settings.modalities,
        input_shapes=settings.input_shapes(),
        num_examples=dict(source.split_sizes),
    )


def get_dataset_meta(config) -> DatasetMeta:
    """Classes, label layout, modalities, per-example input shapes and split sizes."""
    values = dataset_values(config)
    source = source_from_values(values)
    return _meta(values, source, clip_settings(values, source))


def _process_layout(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax  # lazily: the pipeline itself does not need JAX

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(
            f"process_index={process_index} must be in [0, process_count={process_count})"
        )
    return process_index, process_count


def host_range(num_examples: int, process_index: int, process_count: int) -> tuple[int, int]:
    """The contiguous example range [start, stop) of one host; sizes differ by at most 1."""
    return (
        process_index * num_examples // process_count,
        (process_index + 1) * num_examples // process_count,
    )


def _resolve_split(
    values: dict, source: sources.ExampleSource, split: str | None, mode: str
) -> str:
    """A split name of the source: `split` itself, or the configured split for a role name
    ('train' / 'eval' / 'test') the source lacks, or the configured split of `mode` for None."""
    configured = split_names(values)
    if split is None:
        split = configured[mode]
    elif split not in source.split_sizes and split in configured:
        split = configured[split]
    if split not in source.split_sizes:
        raise ValueError(
            f"split {split!r} (config.dataset.{mode}_split) is not a split of "
            f"{source.name}; allowed: {sorted(source.split_sizes)}"
        )
    return split


LOADERS = ("auto", "grain", "tf.data")


def uses_grain(values: Mapping[str, Any], source: sources.ExampleSource) -> bool:
    """Whether `config.dataset.loader` reads `source` through grain (mbt.data.grain_input)."""
    loader = values["loader"]
    if loader not in LOADERS:
        raise ValueError(f"config.dataset.loader={loader!r}: allowed values are {LOADERS}")
    random_access = source.records is not None
    if loader == "grain" and not random_access:
        raise ValueError(
            f"config.dataset.loader='grain' needs random access, but {source.name} is not "
            "stored as ArrayRecord: rebuild it with config.dataset.file_format='array_record' "
            "(`python -m mbt.data.builders --file_format=array_record`), or use "
            "loader='tf.data'"
        )
    return loader == "grain" or (loader == "auto" and random_access)


def _example_views(mode: str, values: dict) -> int:
    return values["num_test_clips"] * values["num_spatial_crops"] if mode == "test" else 1


def num_batches(
    config, split: str | None, mode: str, batch_size: int, *, process_count: int | None = None
) -> int | None:
    """Batches per host in one eval/test pass (the same on every host); None for 'train'."""
    if mode == "train":
        return None
    values = dataset_values(config)
    source = source_from_values(values)
    split = _resolve_split(values, source, split, mode)
    if process_count is None:
        _, process_count = _process_layout(None, None)
    if uses_grain(values, source):
        from mbt.data import grain_input  # pylint: disable=g-import-not-at-top

        return grain_input.num_eval_batches(
            source.split_sizes[split], _example_views(mode, values), batch_size * process_count
        )
    per_host = math.ceil(source.split_sizes[split] / process_count)
    return math.ceil(per_host * _example_views(mode, values) / batch_size)


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    options.autotune.enabled = True
    options.experimental_optimization.map_parallelization = True
    options.experimental_optimization.parallel_batch = True
    return options


def finish_view(view: dict, example: dict, source: sources.ExampleSource) -> dict:
    """A view plus its label vector, batch_mask 1 and video_index (tf.data and grain)."""
    return {
        **view,
        "label": sources.label_vector(example, source),
        "batch_mask": tf.constant(1.0),
        "video_index": tf.cast(example["video_index"], tf.int32),
    }


def random_view(
    example: dict, settings: clips.ClipSettings, source: sources.ExampleSource, seed: tf.Tensor
) -> dict:
    """A training view: window start and every augmentation drawn from the int64 [2] `seed`."""
    time_seed, view_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    view = clips.make_view(
        example,
        settings,
        time_fraction=tf.random.stateless_uniform([], time_seed),
        crop_position=None,
        seed=view_seed,
    )
    return finish_view(view, example, source)


def fixed_view(
    example: dict,
    settings: clips.ClipSettings,
    source: sources.ExampleSource,
    view_id: tf.Tensor,
    num_clips: int,
    num_crops: int,
) -> dict:
    """Evaluation view `view_id` of `num_clips × num_crops` (no augmentation)."""
    time_fraction, crop_position = clips.test_view_position(view_id, num_clips, num_crops)
    view = clips.make_view(
        example, settings, time_fraction=time_fraction, crop_position=crop_position, seed=None
    )
    return finish_view(view, example, source)


def _padding(element_spec: dict, count: int) -> tf.data.Dataset:
    """`count` all-zero elements with batch_mask 0 and video_index -1."""
    zeros = {k: tf.zeros(spec.shape, spec.dtype) for k, spec in element_spec.items()}
    zeros["video_index"] = tf.constant(-1, tf.int32)
    return tf.data.Dataset.from_tensors(zeros).repeat(count)


def _check_request(mode: str, batch_size: int, start_batch: int) -> None:
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not one of {MODES}")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    if start_batch < 0:
        raise ValueError(f"start_batch={start_batch} must be >= 0")


def build_tf_dataset(
    config,
    split: str | None,
    mode: str,
    batch_size: int,
    *,
    seed: int = 0,
    start_batch: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    source: sources.ExampleSource | None = None,
) -> tf.data.Dataset:
    """The batched `tf.data.Dataset` behind `make_dataset` (same arguments).

    `source` overrides the source named by the config (e.g. `sources.memory_source`).
    """
    _check_request(mode, batch_size, start_batch)
    values = dataset_values(config)
    source = source or source_from_values(values)
    settings = clip_settings(values, source)
    split = _resolve_split(values, source, split, mode)
    process_index, process_count = _process_layout(process_index, process_count)
    total = source.split_sizes[split]
    if total == 0:
        raise ValueError(f"split {split!r} of {source.name} has no examples")
    if mode == "train":  # the first examples in stored order, for all hosts together
        total = train_fraction_size(total, float(values["train_fraction"]))
    start, stop = host_range(total, process_index, process_count)
    count = stop - start
    if count:
        examples = source.read(split, start, stop)
    else:
        examples = source.read(split, 0, 1).take(0)
    examples = examples.map(as_graph(lambda ex: sources.keep_needed(ex, settings.modalities)))

    if mode == "train":
        if count == 0:
            raise ValueError(
                f"split {split!r} has {total} examples to train on (config.dataset."
                f"train_fraction={values['train_fraction']}), fewer than the "
                f"{process_count} processes: host {process_index} has none to train on"
            )
        skipped = start_batch * batch_size
        first_epoch, skip_in_epoch = divmod(skipped, count)
        buffer = max(1, min(int(values["shuffle_buffer"]), count))
        base_seed = tf.constant([seed, process_index], tf.int64)

        def epoch(e):
            shuffle_seed = (seed * _SEED_MIX + process_index) * _SEED_MIX + e
            shuffled = examples.shuffle(buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
            return shuffled.enumerate().map(as_graph(lambda i, ex: (e * count + i, ex)))

        def train_view(position, example):
            example_seed = tf.random.experimental.stateless_fold_in(base_seed, position)
            return random_view(example, settings, source, example_seed)

        ds = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max).flat_map(as_graph(epoch))
        ds = ds.skip(skip_in_epoch)
        ds = ds.map(as_graph(train_view), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.batch(batch_size, drop_remainder=True)
    else:
        views = _example_views(mode, values)
        clips_per_example = values["num_test_clips"] if mode == "test" else 1
        crops_per_example = values["num_spatial_crops"] if mode == "test" else 1

        def eval_view(view_id, example):
            return fixed_view(
                example, settings, source, view_id, clips_per_example, crops_per_example
            )

        ds = examples.flat_map(
            as_graph(lambda ex: tf.data.Dataset.range(views).map(as_graph(lambda v: (v, ex))))
        )
        ds = ds.map(as_graph(eval_view), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        per_host = math.ceil(total / process_count)
        batches = math.ceil(per_host * views / batch_size)
        ds = ds.concatenate(_padding(ds.element_spec, batches * batch_size - count * views))
        ds = ds.batch(batch_size, drop_remainder=True).skip(start_batch)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


class _NumpyBatches:
    """A `tf.data.Dataset` as an iterable of numpy batches (each `iter` reads it again)."""

    def __init__(self, dataset: tf.data.Dataset):
        self.dataset = dataset

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self.dataset.as_numpy_iterator()


def batch_source(
    config,
    split: str | None,
    mode: str,
    batch_size: int,
    *,
    seed: int = 0,
    start_batch: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterable[dict[str, np.ndarray]]:
    """Numpy batches of one host (docs/design.md), as an iterable: each `iter` reads them
    again from `start_batch` without building the loader again (an eval or test pass is built
    once and read at every evaluation). The config's loader is chosen here.

    Args:
      config: config with a `dataset` section (see the module docstring).
      split: a split name of the dataset, a role name ('train'/'eval'/'test') meaning the
        configured split, or None for the configured split of `mode`.
      mode: 'train' (infinite, shuffled, augmented), 'eval' (one pass, centre view) or
        'test' (one pass, several views per example).
      batch_size: examples per batch on this host.
      seed: shuffling and augmentation seed ('train').
      start_batch: skip this many batches (resume); the result equals skipping them.
      process_index, process_count: this host and the host count (default: JAX's).

    Iterating yields:
      dicts with `rgb` float32 `[B, T, H, W, 3]` in [-1, 1] and/or `spectrogram` float32
      `[B, time, mel, C]`, `label` float32 `[B, num_classes]`, `batch_mask` float32 `[B]`
      and `video_index` int32 `[B]`.
    """
    values = dataset_values(config)
    if values["keep_freed_buffers"]:
        heap.keep_freed_buffers()
    source = source_from_values(values)
    if uses_grain(values, source):
        from mbt.data import grain_input  # pylint: disable=g-import-not-at-top

        _check_request(mode, batch_size, start_batch)
        process_index, process_count = _process_layout(process_index, process_count)
        return grain_input.make_batches(
            values,
            source,
            _resolve_split(values, source, split, mode),
            mode,
            batch_size,
            seed=seed,
            start_batch=start_batch,
            process_index=process_index,
            process_count=process_count,
        )
    ds = build_tf_dataset(
        config,
        split,
        mode,
        batch_size,
        seed=seed,
        start_batch=start_batch,
        process_index=process_index,
        process_count=process_count,
        source=source,
    )
    return _NumpyBatches(ds)


def make_dataset(
    config, split: str | None, mode: str, batch_size: int, **options: Any
) -> Iterator[dict[str, np.ndarray]]:
    """One reading of `batch_source(config, split, mode, batch_size, **options)`."""
    return iter(batch_source(config, split, mode, batch_size, **options))


def _edge_kinds() -> tuple[str, ...]:
    from mbt.data import synthetic as synthetic_lib  # pylint: disable=g-import-not-at-top

    return synthetic_lib.EDGE_KINDS


def prepare_dataset(config, workdir: str) -> None:
    """Generates and builds a synthetic local copy when `config.dataset.synthetic.num_clips > 0`.

    The copy goes to `<workdir>/synthetic_src` (kept if already there) and is built with the
    dataset's TFDS builder into `config.dataset.data_dir`; an empty data_dir is set to
    `<workdir>/tfds` in `config` so later calls read from there. Nothing is rebuilt when the
    builder finds the dataset prepared.
    """
    values = dataset_values(config)
    synthetic = values["synthetic"]
    if synthetic["num_clips"] <= 0:
        _LOG.info("config.dataset.synthetic.num_clips=0: no synthetic data to prepare.")
        return
    name = values["name"]
    spec = registry.get(name, values["imports"])
    if spec.builder is None or spec.synthetic is None:
        raise ValueError(
            f"synthetic data needs a dataset with a TFDS builder and a synthetic generator; "
            f"config.dataset.name={name!r} has builder={spec.builder!r}, "
            f"synthetic={spec.synthetic!r}"
        )
    source_dir = os.path.join(workdir, "synthetic_src")
    # generate() writes its summary last: without it the copy is incomplete.
    if os.path.isfile(os.path.join(source_dir, "synthetic_summary.json")):
        _LOG.info("Synthetic %s copy already in %s.", name, source_dir)
    else:
        from mbt.data import synthetic as synthetic_lib

        _LOG.info(
            "Generating %d synthetic %s clips in %s ...", synthetic["num_clips"], name, source_dir
        )
        shutil.rmtree(source_dir, ignore_errors=True)
        summary = synthetic_lib.generate(
            name,
            source_dir,
            int(synthetic["num_clips"]),
            seed=int(synthetic["seed"]),
            num_classes=int(synthetic["num_classes"]) or None,
            frame_size=int(synthetic["frame_size"]),
            fps=float(synthetic["fps"]),
            clip_seconds=float(synthetic["clip_seconds"]),
            edge_cases=bool(synthetic["edge_cases"]),
        )
        _LOG.info("Synthetic copy written: %s", summary.get("counts"))
    data_dir = values["data_dir"] or os.path.join(workdir, "tfds")
    if not values["data_dir"]:
        config.dataset.data_dir = data_dir
    builder = sources.tfds_builder(
        name,
        values["builder_config"] or None,
        data_dir,
        values["imports"],
        file_format=values["file_format"],
    )
    if builder.is_prepared():
        _LOG.info("%s/%s already built in %s.", builder.name, builder.builder_config.name, data_dir)
        return
    import tensorflow_datasets as tfds

    _LOG.info(
        "Building %s/%s from %s into %s ...",
        builder.name,
        builder.builder_config.name,
        source_dir,
        data_dir,
    )
    if synthetic["edge_cases"]:
        _LOG.info(
            "The copy holds deliberately broken rows (%s; config.dataset.synthetic.edge_cases) "
            "to show how the builder treats them: the warnings about them below are expected, "
            "and the build counts what it skipped or kept.",
            ", ".join(_edge_kinds()),
        )
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=source_dir)
    )
    _LOG.info(
        "Built %s: %s",
        builder.name,
        {s: builder.info.splits[s].num_examples for s in builder.info.splits.keys()},
    )
