"""Random input: batches of the configured shapes and classes, made on the host from the seed
and each example's index; no dataset files, no TensorFlow.

For a first run on new hardware or a new cluster before any dataset is built (what MaxText's
synthetic dataset is for): `config.dataset.random_input.enabled=True` runs the whole trainer
(mesh and sharding, several processes, checkpoints, stop and resume on another topology, the
multi-view test) at the inputs' real shapes, on a machine with the core install only.

Each class has a fixed pattern per modality, each example its own noise, both rank-1 (the
outer product of one random vector per axis, so a batch is written in one pass: a matmul),
so the classes can be learnt and the loss falls. Example `i` of the train stream is example
`i mod train_examples`, in order; global batch `k` holds stream rows `[k·B, (k+1)·B)` and each
process takes its contiguous share of them, so the global stream is the same on any process
layout. Labels follow the dataset's layout (`mbt.data.registry`): one class per example for
single- and multi-label datasets, one per head for class splits (EPIC's verb + noun).
"""

from __future__ import annotations

import itertools
import math
import zlib
from collections.abc import Iterator

import ml_collections
import numpy as np

from mbt.data import registry
from mbt.data.settings import DatasetMeta

SPLITS = ("train", "test")
NOISE_SCALE = 0.5
# Seed streams: class patterns, example classes and example noise draw from disjoint sequences.
_PATTERN, _CLASSES, _NOISE = 1, 2, 3


def enabled(config: ml_collections.ConfigDict) -> bool:
    settings = (config.get("dataset") or {}).get("random_input") or {}
    return bool(settings.get("enabled", False))


def _input_shapes(config: ml_collections.ConfigDict) -> dict[str, tuple[int, ...]]:
    """Per-example shape of each modality, as the pipeline makes them (`flops` computes them
    from `config.dataset` too)."""
    from mbt.tools import flops  # pylint: disable=g-import-not-at-top

    try:
        return flops.input_shapes_from_config(config)
    except ValueError as error:
        raise ValueError(f"config.dataset.random_input: {error}") from error


def label_layout(config: ml_collections.ConfigDict) -> tuple[tuple[int, ...], bool]:
    """(classes per head, multi_label) of the configured dataset; one head unless it has class
    splits. `config.dataset.num_classes` > 0 overrides the dataset's class count."""
    dataset = config.dataset
    spec = registry.for_config(dataset)
    if spec.label_kind == registry.CLASS_SPLITS or (
        spec.label_kind == registry.FROM_CONFIG and tuple(dataset.get("class_splits") or ())
    ):
        heads = tuple(int(n) for n in (dataset.get("class_splits") or spec.class_splits))
        return heads, False
    num_classes = int(dataset.get("num_classes", 0) or 0) or spec.num_classes
    if not num_classes:
        raise ValueError(
            f"config.dataset.random_input: dataset {spec.name!r} has no fixed class count; "
            "set config.dataset.num_classes"
        )
    if spec.label_kind == registry.FROM_CONFIG:
        multi_label = bool(dataset.get("multi_label", True))
    else:
        multi_label = spec.label_kind == registry.MULTI_LABEL
    return (int(num_classes),), multi_label


def _outer(vectors: list[np.ndarray]) -> np.ndarray:
    """[n, prod(d_axis)] flattened outer products of per-axis vectors [n, d_axis], per row."""
    out = vectors[0]
    for vector in vectors[1:]:
        out = (out[:, :, None] * vector[:, None, :]).reshape(out.shape[0], -1)
    return out


def sum_of_rank1(terms: list[list[np.ndarray]], shape: tuple[int, ...]) -> np.ndarray:
    """[n, *shape]: per row, the sum over `terms` of the outer product of one vector per axis
    (each term a list of [n, d_axis] arrays). Written once, as one batched matmul of the outer
    products over the leading and the trailing half of the axes (K = number of terms)."""
    split = max(1, len(shape) // 2)
    left = np.stack([_outer(t[:split]) for t in terms], axis=-1)  # [n, prod(lead), K]
    right = np.stack(
        [_outer(t[split:]) if t[split:] else np.ones_like(t[0][:, :1]) for t in terms], axis=1
    )
    return np.matmul(left, right).reshape((left.shape[0],) + tuple(shape))


class RandomData:
    """A `mbt.train.DataSource` of random examples (module docstring)."""

    def __init__(self, config: ml_collections.ConfigDict):
        settings = config.dataset.random_input
        self.seed = int(config.seed)
        self.heads, multi_label = label_layout(config)
        self.views = int(config.dataset.num_test_clips) * int(
            config.dataset.get("num_spatial_crops", 1) or 1
        )
        sizes = {"train": int(settings.train_examples), "test": int(settings.test_examples)}
        for split, size in sizes.items():
            if size < 1:
                raise ValueError(
                    f"config.dataset.random_input.{split}_examples={size} must be at least 1"
                )
        num_classes = sum(self.heads)
        self._patterns: dict[tuple[int, ...], tuple[np.ndarray, ...]] = {}
        self.meta = DatasetMeta(
            num_classes=num_classes,
            class_names=tuple(f"class_{c}" for c in range(num_classes)),
            class_splits=self.heads if len(self.heads) > 1 else None,
            multi_label=multi_label,
            modalities=tuple(config.model.modalities),
            input_shapes=_input_shapes(config),
            num_examples=sizes,
        )

    def split_names(self) -> dict[str, str]:
        return {"train": "train", "eval": "test", "test": "test"}

    def _pattern(self, modality: str, head: int, label: int) -> tuple[np.ndarray, ...]:
        """The per-axis vectors of one class's pattern in one modality (kept once drawn)."""
        key = (self.seed, _PATTERN, zlib.crc32(modality.encode()), head, label)
        if key not in self._patterns:
            rng = np.random.default_rng(key)
            shape = self.meta.input_shapes[modality]
            self._patterns[key] = tuple(rng.standard_normal(d, dtype=np.float32) for d in shape)
        return self._patterns[key]

    def examples(
        self, split: str, videos: np.ndarray, views: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """Inputs and labels of examples `videos` of `split`; `views` (default `videos`)
        number their noise, so the test views of one video differ but show its classes."""
        code = SPLITS.index(split)
        views = videos if views is None else views
        classes = np.array(
            [
                [
                    np.random.default_rng((self.seed, _CLASSES, code, int(v), h)).integers(n)
                    for h, n in enumerate(self.heads)
                ]
                for v in videos
            ],
            np.int64,
        ).reshape(len(videos), len(self.heads))
        batch: dict[str, np.ndarray] = {}
        for modality, shape in self.meta.input_shapes.items():
            key = zlib.crc32(modality.encode())
            rngs = [np.random.default_rng((self.seed, _NOISE, code, int(i), key)) for i in views]
            noise = [
                np.stack([NOISE_SCALE * rng.standard_normal(d, dtype=np.float32) for rng in rngs])
                for d in shape
            ]
            terms = [noise]
            for head in range(len(self.heads)):
                patterns = [self._pattern(modality, head, int(c)) for c in classes[:, head]]
                terms.append([np.stack([p[axis] for p in patterns]) for axis in range(len(shape))])
            batch[modality] = sum_of_rank1(terms, shape)
        label = np.zeros((len(videos), sum(self.heads)), np.float32)
        offsets = np.cumsum((0,) + self.heads[:-1])
        for head, offset in enumerate(offsets):
            label[np.arange(len(videos)), offset + classes[:, head]] = 1.0
        batch["label"] = label
        return batch

    def batches(
        self, split: str, mode: str, batch_size: int, *, seed: int, start_batch: int = 0
    ) -> Iterator[dict[str, np.ndarray]]:
        """This process's batches of `batch_size` (the trainer's `DataSource.batches`)."""
        del seed  # the examples follow config.seed, fixed at construction
        import jax  # lazily: the module itself does not need JAX

        return self.process_batches(
            split, mode, batch_size, jax.process_index(), jax.process_count(), start_batch
        )

    def process_batches(
        self,
        split: str,
        mode: str,
        batch_size: int,
        process_index: int,
        process_count: int,
        start_batch: int = 0,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Process `process_index`'s share (`batch_size` rows) of each global batch: 'train'
        endless from global batch `start_batch`, 'eval' / 'test' one pass (1 / num_test_clips
        × num_spatial_crops views per example), padded with `batch_mask` 0 rows to the same
        number of batches on every process."""
        if split not in self.meta.num_examples:
            raise ValueError(f"random input has splits {SPLITS}, not {split!r}")
        if mode == "train":
            return self._train(split, batch_size, process_index, process_count, start_batch)
        return self._one_pass(split, mode, batch_size, process_index, process_count)

    def _train(self, split, batch_size, process, processes, start_batch):
        size = self.meta.num_examples[split]
        global_batch = batch_size * processes
        for k in itertools.count(start_batch):
            first = k * global_batch + process * batch_size
            rows = np.arange(first, first + batch_size) % size
            batch = self.examples(split, rows)
            batch["batch_mask"] = np.ones(batch_size, np.float32)
            batch["video_index"] = rows.astype(np.int32)
            yield batch

    def _one_pass(self, split, mode, batch_size, process, processes):
        views = self.views if mode == "test" else 1
        size = self.meta.num_examples[split]
        total = size * views
        global_batch = batch_size * processes
        for k in range(math.ceil(total / global_batch)):
            first = k * global_batch + process * batch_size
            flat = np.arange(first, first + batch_size)
            real = flat < total
            flat = np.where(real, flat, 0)
            video = flat // views
            batch = self.examples(split, video, flat)
            batch["batch_mask"] = real.astype(np.float32)
            batch["video_index"] = video.astype(np.int32)
            yield batch
