"""grain input: one global, seeded stream of examples that no process layout changes.

Used for datasets whose examples can be read at random (TFDS builds written as ArrayRecord,
`config.dataset.file_format='array_record'`); `config.dataset.loader` picks it.

Training reads a stream of global positions g = 0, 1, 2, ... over the N train examples (the
first `train_fraction` of the split): epoch e = g // N, and position g holds example
`shuffle(g mod N; seed, e)`, a seeded permutation of the split per epoch
(`grain.experimental.index_shuffle`, O(1) memory; splits under 2^16 examples keep a
permutation array, see `example_at`). Global batch b is positions
[b·G, (b+1)·G) for the global batch size G = P·B of P processes with B rows each; process p
reads rows [p·B, (p+1)·B) of every global batch and nothing else. Every random draw of a
view (window start, crop, flip, colour, SpecAugment) is seeded by (seed, epoch, example
index). So the global batches are the same whatever P and the device count, a run resumed at
global batch k reads its rows directly (nothing before them is read), and the state to save
is only k (`train_input` in the checkpoint, `mbt.train.checkpoint_meta`).

Eval and test read one pass of global rows j = 0 .. N·V-1 (example j // V, view j mod V, V
views per example), padded with `batch_mask = 0` rows to whole global batches and split
between processes the same way.

Each process batch is one grain element: its records are read, decoded and augmented in
one TF function (the examples in parallel), in grain's threads (`grain_threads` batches at
once) and in `grain_workers` worker processes when > 0. The per-example work is the TF code
of `mbt.data.clips`, the same as the tf.data path's, except that a record's JPEG frames are
not parsed out of it: they are located in the record (`example_proto.bytes_spans`) and a
view copies out only the frames it decodes (`clips.FrameSpans`).
"""

from __future__ import annotations

import functools
import math
import threading
from typing import Any

import grain
import numpy as np
import tensorflow as tf

from mbt.data import clips
from mbt.data import example_proto
from mbt.data import heap
from mbt.data import sources
from mbt.data.settings import train_fraction_size
from mbt.data.tf_import import as_graph

# The stream can run this many global positions: effectively infinite.
_STREAM_LENGTH = 2**62
_SHUFFLE_ROUNDS = 4
# grain's index_shuffle enciphers a domain of at least 2^16 values and walks the cycle until
# it lands below N, so one call costs ~2^16 / N cipher evaluations (1.4 ms at N = 12, 4 µs
# from 2^16 up). Below this size the epoch's permutation is stored instead (≤ 256 KiB).
_STORED_PERMUTATION_BELOW = 2**16
# More rows than any process batch: `batch(_MAX_BATCH)` of one batch's views is one element.
_MAX_BATCH = 2**31 - 1


def epoch_seed(seed: int, epoch: int) -> int:
    """The uint32 seed of epoch `epoch`'s permutation."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


@functools.lru_cache(maxsize=4)
def _stored_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """Epoch `epoch`'s order of a split of `num_examples` (< 2^16) examples, int32[N]."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch]))
    return rng.permutation(num_examples).astype(np.int32)


def example_at(position: int, num_examples: int, seed: int) -> tuple[int, int]:
    """(epoch, example index) at global train position `position`."""
    epoch, offset = divmod(position, num_examples)
    if num_examples < _STORED_PERMUTATION_BELOW:
        return epoch, int(_stored_permutation(num_examples, seed, epoch)[offset])
    index = grain.experimental.index_shuffle(
        offset, max_index=num_examples - 1, seed=epoch_seed(seed, epoch), rounds=_SHUFFLE_ROUNDS
    )
    return epoch, int(index)


def global_row(local_item: int, rows_per_process: int, process_index: int, process_count: int):
    """The global row of this process's `local_item`-th row (B rows per process per batch)."""
    batch, row = divmod(local_item, rows_per_process)
    return (batch * process_count + process_index) * rows_per_process + row


class _Views:
    """Reads example `i` of one split and cuts a view from it (builds its TF functions lazily,
    so it pickles into grain worker processes as plain values)."""

    def __init__(self, values: dict, split: str, mode: str, seed: int):
        self._values, self._split, self._mode, self.seed = values, split, mode, seed
        self._built: tuple | None = None
        self._lock = threading.Lock()

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("_built", "_lock")}

    def __setstate__(self, state):
        self.__dict__.update(state, _built=None, _lock=threading.Lock())

    def build(self):
        """(records, the key of their frames or None when the views need none, (views
        function, its output signature)), made once per process: the
        TF function is traced here, once, rather than by each grain thread that needs it."""
        with self._lock:
            if self._built is None:
                from mbt.data import pipeline  # the source and view settings, as tf.data uses

                if self._values["keep_freed_buffers"]:  # (in worker processes too)
                    heap.keep_freed_buffers()
                source = pipeline.source_from_values(self._values)
                settings = pipeline.clip_settings(self._values, source)
                records = source.records(self._split) if source.records else None
                if records is None or source.deserialize is None:
                    raise ValueError(f"{source.name} cannot be read at random (not ArrayRecord)")
                needs_frames = "rgb" in settings.modalities
                frames_key = source.record_frames_key if needs_frames else None
                functions = self._functions(source, settings, frames_key is not None)
                self._built = (records, frames_key, functions)
        return self._built

    def _functions(
        self, source: sources.ExampleSource, settings: clips.ClipSettings, needs_frames: bool
    ):
        """(views function, its output signature); `needs_frames`: the records' frames are
        located and cut (`_frame_spans`), else they are left out."""
        from mbt.data import pipeline

        values = self._values
        assert source.deserialize is not None
        deserialize = source.deserialize

        def stored(record):
            serialized, video_index, frames, extra = record
            example = deserialize(serialized)
            if needs_frames:
                count, starts, lengths = frames
                example["rgb"] = clips.FrameSpans(serialized, starts[:count], lengths[:count])
            example["video_index"] = video_index
            return sources.keep_needed(example, settings.modalities), extra

        def train_view(*record):
            example, epoch = stored(record)
            example_seed = tf.random.experimental.stateless_fold_in(
                tf.stack([tf.constant(self.seed, tf.int64), epoch]), example["video_index"]
            )
            return pipeline.random_view(example, settings, source, example_seed)

        clips_per_example = values["num_test_clips"] if self._mode == "test" else 1
        crops_per_example = values["num_spatial_crops"] if self._mode == "test" else 1

        def eval_view(*record):
            example, view_id = stored(record)
            return pipeline.fixed_view(
                example, settings, source, view_id, clips_per_example, crops_per_example
            )

        one = train_view if self._mode == "train" else eval_view
        vector, matrix = tf.TensorSpec([None], tf.int64), tf.TensorSpec([None, None], tf.int64)

        @tf.function(
            input_signature=[tf.TensorSpec([None], tf.string), vector, (vector, matrix, matrix),
                             vector],
            autograph=False,
        )  # fmt: skip
        def views(serialized, video_index, frames, extra):
            """The views of a batch of B examples.

            Args:
              serialized: string `[B]`, the records.
              video_index: int64 `[B]`, their indices in the split.
              frames: (count int64 `[B]`, starts, lengths int64 `[B, max count]`): where each
                record's frames lie in it, zero-padded past `count`.
              extra: int64 `[B]`, each one's epoch ('train') or view number ('eval' / 'test').

            The examples are cut in parallel by a tf.data map, which runs the per-example
            graph more cheaply than `tf.map_fn`.
            """
            examples = tf.data.Dataset.from_tensor_slices((serialized, video_index, frames, extra))
            cut = examples.map(
                as_graph(one), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
            )
            return cut.batch(_MAX_BATCH).get_single_element()

        batched = views.get_concrete_function().structured_outputs  # traced once, here
        output_signature = {k: tf.TensorSpec(t.shape[1:], t.dtype) for k, t in batched.items()}
        return views, output_signature

    def batch(self, indices: list[int], extra: list[int]) -> dict[str, np.ndarray]:
        """Views of examples `indices` of the split (`extra`: epochs or view numbers)."""
        records, frames_key, (views, _) = self.build()
        serialized = [records[i] for i in indices]
        out = views(
            tf.constant(serialized, tf.string),
            tf.constant(indices, tf.int64),
            _frame_spans(serialized, frames_key, indices, self._split),
            tf.constant(extra, tf.int64),
        )
        return {k: np.asarray(v) for k, v in out.items()}  # no copy, unlike .numpy()

    def padding(self, count: int) -> dict[str, np.ndarray]:
        """`count` all-zero rows with batch_mask 0 and video_index -1."""
        _, _, (_, output_signature) = self.build()
        rows = {
            k: np.zeros((count, *spec.shape), spec.dtype.as_numpy_dtype)
            for k, spec in output_signature.items()
        }
        rows["video_index"][:] = -1
        return rows


def _frame_spans(
    serialized: list[bytes], key: str | None, indices: list[int], split: str
) -> tuple[np.ndarray, ...]:
    """(count `[B]`, starts, lengths `[B, max count]`), int64: where the frames of each record
    lie in it (feature `key`; none when `key` is None), zero-padded past `count`.

    `indices` (the records' places in `split`) name a record that cannot be read.
    """
    empty = np.zeros(0, np.int64)
    spans = []
    for record, index in zip(serialized, indices):
        try:
            spans.append(example_proto.bytes_spans(record, key) if key else (empty, empty))
        except example_proto.MalformedExample as e:
            raise example_proto.MalformedExample(
                f"split {split!r}, example {index} ({len(record)} bytes): {e}. The ArrayRecord "
                "file is damaged or was not written by a TFDS build; build the dataset again"
            ) from None
    count = np.array([len(starts) for starts, _ in spans], np.int64)
    starts = np.zeros((len(spans), max(count, default=0)), np.int64)
    lengths = np.zeros_like(starts)
    for row, (row_starts, row_lengths) in enumerate(spans):
        starts[row, : len(row_starts)] = row_starts
        lengths[row, : len(row_lengths)] = row_lengths
    return count, starts, lengths


class _TrainBatch:
    """This process's local batch b → its rows of global train batch b."""

    def __init__(self, views: _Views, num_examples: int, rows: int, index: int, count: int):
        self.views, self.num_examples = views, num_examples
        self.rows, self.process_index, self.process_count = rows, index, count

    def __call__(self, local_batch: int) -> dict[str, np.ndarray]:
        first = local_batch * self.rows
        drawn = [
            example_at(
                global_row(k, self.rows, self.process_index, self.process_count),
                self.num_examples,
                self.views.seed,
            )
            for k in range(first, first + self.rows)
        ]
        return self.views.batch([index for _, index in drawn], [epoch for epoch, _ in drawn])


class _EvalBatch:
    """This process's local batch b → its rows of global eval batch b (padding past the end)."""

    def __init__(self, views: _Views, num_examples: int, num_views: int, rows: int, index: int,
                 count: int):  # fmt: skip
        self.views, self.num_examples, self.num_views = views, num_examples, num_views
        self.rows, self.process_index, self.process_count = rows, index, count

    def __call__(self, local_batch: int) -> dict[str, np.ndarray]:
        first = local_batch * self.rows
        real = []
        for k in range(first, first + self.rows):
            example, view_id = divmod(
                global_row(k, self.rows, self.process_index, self.process_count), self.num_views
            )
            if example < self.num_examples:
                real.append((example, view_id))
        parts = []
        if real:
            parts.append(self.views.batch([e for e, _ in real], [v for _, v in real]))
        if len(real) < self.rows:  # rows of a process are consecutive: padding comes last
            parts.append(self.views.padding(self.rows - len(real)))
        return {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}


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
) -> grain.IterDataset:
    """This process's numpy batches of `batch_size` rows (see the module docstring), as an
    iterable: each `iter` starts again at `start_batch` with its own threads (and workers).

    `start_batch` counts global batches already read (train: resume; eval/test: skip).
    """
    views = _Views(values, split, mode, seed)
    if int(values["grain_workers"]) == 0:
        views.build()  # here, not in the first of the threads that need it
    global_batch = batch_size * process_count
    total = source.split_sizes[split]
    if mode == "train":
        total = train_fraction_size(total, float(values["train_fraction"]))
        batch_of: Any = _TrainBatch(views, total, batch_size, process_index, process_count)
        stop = _STREAM_LENGTH // global_batch
    else:
        num_views = values["num_test_clips"] * values["num_spatial_crops"] if mode == "test" else 1
        batch_of = _EvalBatch(views, total, num_views, batch_size, process_index, process_count)
        stop = num_eval_batches(total, num_views, global_batch)
    ds = grain.MapDataset.range(start_batch, max(stop, start_batch)).map(batch_of)
    threads = int(values["grain_threads"])
    iter_ds = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(threads, 2))
    )
    if int(values["grain_workers"]) > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain's worker pool reads its absl flags
            flags.FLAGS.mark_as_parsed()
        iter_ds = iter_ds.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=int(values["grain_workers"]))
        )
    return iter_ds
