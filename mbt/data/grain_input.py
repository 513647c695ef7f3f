"""grain input: one global, seeded stream of examples that no process layout changes.

Used for datasets whose examples can be read at random (TFDS builds written as ArrayRecord,
`config.dataset.file_format='array_record'`); `config.dataset.loader` picks it.

Training reads a stream of global positions g = 0, 1, 2, ... over the N train examples (the
first `train_fraction` of the split): epoch e = g // N, and position g holds example
`shuffle(g mod N; seed, e)`, a seeded permutation of the split per epoch
(`grain.experimental.index_shuffle`, O(1) memory). Global batch b is positions
[b·G, (b+1)·G) for the global batch size G = P·B of P processes with B rows each; process p
reads rows [p·B, (p+1)·B) of every global batch and nothing else. Every random draw of a
view (window start, crop, flip, colour, SpecAugment) is seeded by (seed, epoch, example
index). So the global batches are the same whatever P and the device count, a run resumed at
global batch k reads its rows directly (nothing before them is read), and the state to save
is only k (`input_state`).

Eval and test read one pass of global rows j = 0 .. N·V-1 (example j // V, view j mod V, V
views per example), padded with `batch_mask = 0` rows to whole global batches and split
between processes the same way.

Reading, decoding and augmentation run per example in grain's threads (`grain_threads`),
and in `grain_workers` worker processes when > 0. The per-example work is the TF code of
`mbt.data.clips`, the same as the tf.data path's.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import grain
import numpy as np
import tensorflow as tf

from mbt.data import clips
from mbt.data import sources
from mbt.data.settings import train_fraction_size

# The stream can run this many global positions: effectively infinite.
_STREAM_LENGTH = 2**62
_SHUFFLE_ROUNDS = 4


def epoch_seed(seed: int, epoch: int) -> int:
    """The uint32 seed of epoch `epoch`'s permutation."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def example_at(position: int, num_examples: int, seed: int) -> tuple[int, int]:
    """(epoch, example index) at global train position `position`."""
    epoch, offset = divmod(position, num_examples)
    if num_examples == 1:
        return epoch, 0
    index = grain.experimental.index_shuffle(
        offset, max_index=num_examples - 1, seed=epoch_seed(seed, epoch), rounds=_SHUFFLE_ROUNDS
    )
    return epoch, int(index)


def global_row(local_item: int, rows_per_process: int, process_index: int, process_count: int):
    """The global row of this process's `local_item`-th row (B rows per process per batch)."""
    batch, row = divmod(local_item, rows_per_process)
    return (batch * process_count + process_index) * rows_per_process + row


def input_state(global_batches: int, global_batch_size: int, seed: int) -> dict[str, int]:
    """What a checkpoint stores to continue the train stream: its next global position."""
    return {
        "next_position": global_batches * global_batch_size,
        "global_batch_size": global_batch_size,
        "seed": seed,
    }


class _Views:
    """Reads example `i` of one split and cuts a view from it (builds its TF functions lazily,
    so it pickles into grain worker processes as plain values)."""

    def __init__(self, values: dict, split: str, mode: str, seed: int):
        self._values, self._split, self._mode, self._seed = values, split, mode, seed
        self._built: tuple | None = None

    def __getstate__(self):
        return {**self.__dict__, "_built": None}

    def _build(self):
        if self._built is None:
            from mbt.data import pipeline  # the source and view settings, as tf.data uses

            source = pipeline.source_from_values(self._values)
            settings = pipeline.clip_settings(self._values, source)
            records = source.records(self._split) if source.records else None
            if records is None or source.deserialize is None:
                raise ValueError(f"{source.name} cannot be read at random (not ArrayRecord)")
            self._built = (records, self._functions(source, settings))
        return self._built

    def _functions(self, source: sources.ExampleSource, settings: clips.ClipSettings):
        from mbt.data import pipeline

        values = self._values
        assert source.deserialize is not None
        deserialize = source.deserialize

        def stored(serialized, video_index):
            example = deserialize(serialized)
            example["video_index"] = video_index
            return sources.keep_needed(example, settings.modalities)

        scalar = tf.TensorSpec([], tf.int64)

        @tf.function(input_signature=[tf.TensorSpec([], tf.string), scalar, scalar, scalar])
        def train_view(serialized, video_index, seed, epoch):
            example = stored(serialized, video_index)
            example_seed = tf.random.experimental.stateless_fold_in(
                tf.stack([seed, epoch]), video_index
            )
            time_seed, view_seed = tf.unstack(
                tf.random.experimental.stateless_split(example_seed, 2)
            )
            view = clips.make_view(
                example,
                settings,
                time_fraction=tf.random.stateless_uniform([], time_seed),
                crop_position=None,
                seed=view_seed,
            )
            return pipeline.finish_view(view, example, source)

        clips_per_example = values["num_test_clips"] if self._mode == "test" else 1
        crops_per_example = values["num_spatial_crops"] if self._mode == "test" else 1

        @tf.function(input_signature=[tf.TensorSpec([], tf.string), scalar, scalar])
        def eval_view(serialized, video_index, view_id):
            example = stored(serialized, video_index)
            time_fraction, crop_position = clips.test_view_position(
                view_id, clips_per_example, crops_per_example
            )
            view = clips.make_view(
                example,
                settings,
                time_fraction=time_fraction,
                crop_position=crop_position,
                seed=None,
            )
            return pipeline.finish_view(view, example, source)

        return train_view, eval_view

    def train(self, index: int, epoch: int) -> dict[str, np.ndarray]:
        records, (train_view, _) = self._build()
        out = train_view(records[index], np.int64(index), np.int64(self._seed), np.int64(epoch))
        return {k: v.numpy() for k, v in out.items()}

    def view(self, index: int, view_id: int) -> dict[str, np.ndarray]:
        records, (_, eval_view) = self._build()
        out = eval_view(records[index], np.int64(index), np.int64(view_id))
        return {k: v.numpy() for k, v in out.items()}


class _TrainRow:
    """Local row k of this process → its example view in the global train stream."""

    def __init__(self, views: _Views, num_examples: int, rows: int, index: int, count: int):
        self.views, self.num_examples = views, num_examples
        self.rows, self.process_index, self.process_count = rows, index, count

    def __call__(self, local_item: int) -> dict[str, np.ndarray]:
        position = global_row(local_item, self.rows, self.process_index, self.process_count)
        epoch, index = example_at(position, self.num_examples, self.views._seed)
        return self.views.train(index, epoch)


class _EvalRow:
    """Local row k of this process → a view of the one-pass global eval stream, or padding."""

    def __init__(self, views: _Views, num_examples: int, num_views: int, rows: int, index: int,
                 count: int):  # fmt: skip
        self.views, self.num_examples, self.num_views = views, num_examples, num_views
        self.rows, self.process_index, self.process_count = rows, index, count
        self._padding: dict[str, np.ndarray] | None = None

    def __getstate__(self):
        return {**self.__dict__, "_padding": None}

    def __call__(self, local_item: int) -> dict[str, np.ndarray]:
        row = global_row(local_item, self.rows, self.process_index, self.process_count)
        example, view_id = divmod(row, self.num_views)
        if example < self.num_examples:
            return self.views.view(example, view_id)
        if self._padding is None:
            self._padding = {k: np.zeros_like(v) for k, v in self.views.view(0, 0).items()}
            self._padding["video_index"] = np.full_like(self._padding["video_index"], -1)
        return self._padding


def num_eval_batches(num_examples: int, num_views: int, global_batch_size: int) -> int:
    """Batches per process in one eval/test pass (the same on every process)."""
    return math.ceil(num_examples * num_views / global_batch_size)


def make_batches(
    values: dict,
    source: sources.ExampleSource,
    split: str,
    mode: str,
    batch_size: int,
    *,
    seed: int,
    start_batch: int,
    process_index: int,
    process_count: int,
) -> Iterator[dict[str, np.ndarray]]:
    """This process's numpy batches of `batch_size` rows (see the module docstring).

    `start_batch` counts global batches already read (train: resume; eval/test: skip).
    """
    views = _Views(values, split, mode, seed)
    global_batch = batch_size * process_count
    total = source.split_sizes[split]
    if mode == "train":
        total = train_fraction_size(total, float(values["train_fraction"]))
        row: Any = _TrainRow(views, total, batch_size, process_index, process_count)
        stop = _STREAM_LENGTH
    else:
        num_views = values["num_test_clips"] * values["num_spatial_crops"] if mode == "test" else 1
        row = _EvalRow(views, total, num_views, batch_size, process_index, process_count)
        stop = num_eval_batches(total, num_views, global_batch) * batch_size
    ds = grain.MapDataset.range(start_batch * batch_size, max(stop, start_batch * batch_size))
    ds = ds.map(row).batch(batch_size, drop_remainder=True)
    threads = int(values["grain_threads"])
    iter_ds = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(2 * threads, batch_size))
    )
    if int(values["grain_workers"]) > 0:
        iter_ds = iter_ds.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=int(values["grain_workers"]))
        )
    return iter(iter_ds)
