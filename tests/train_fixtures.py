"""Test support for the trainer tests: a tiny MBT config and an in-memory data source.

`InMemoryData` follows the `mbt.train.DataSource` protocol with deterministic batches: train
batch k depends only on (seed, k), so a resumed run (start_batch=k) reads what an
uninterrupted one would. Class c has a fixed random rgb and spectrogram pattern plus noise.
"""

import dataclasses

import ml_collections
import numpy as np

from mbt import config_validation
from mbt import models

RGB_SHAPE = (4, 16, 16, 3)  # [T, H, W, C]: tubelets 2x8x8 -> 2x2x2 = 8 tokens
SPEC_SHAPE = (32, 16, 1)  # [time, mel, C]: patches 8x8 -> 4x2 = 8 tokens


@dataclasses.dataclass(frozen=True)
class Meta:
    """Same fields as mbt.data.pipeline.DatasetMeta."""

    num_classes: int
    class_names: tuple
    class_splits: tuple | None
    multi_label: bool
    modalities: tuple
    input_shapes: dict
    num_examples: dict

    def __repr__(self):
        return (
            f"Meta({self.num_classes}, {self.class_splits}, {self.multi_label}, "
            f"{self.modalities}, {sorted(self.num_examples.items())})"
        )


class InMemoryData:
    """Synthetic examples held in memory; splits 'train', 'validation', 'test'."""

    def __init__(
        self,
        num_classes=4,
        num_train=64,
        num_eval=10,
        num_test_views=2,
        class_splits=None,
        multi_label=False,
        noise=0.5,
        seed=0,
    ):
        self.meta = Meta(
            num_classes=num_classes,
            class_names=tuple(f"c{i}" for i in range(num_classes)),
            class_splits=class_splits,
            multi_label=multi_label,
            modalities=("rgb", "spectrogram"),
            input_shapes={"rgb": RGB_SHAPE, "spectrogram": SPEC_SHAPE},
            num_examples={"train": num_train, "validation": num_eval, "test": num_eval},
        )
        rng = np.random.default_rng(seed)
        self._patterns = {
            "rgb": rng.normal(size=(num_classes,) + RGB_SHAPE),
            "spectrogram": rng.normal(size=(num_classes,) + SPEC_SHAPE),
        }
        self._noise = noise
        self._num_test_views = num_test_views
        self._labels = {
            split: np.random.default_rng(seed + 1 + i).integers(0, num_classes, n)
            for i, (split, n) in enumerate(self.meta.num_examples.items())
        }
        self.start_batches = []  # start_batch of every 'train' request, for the tests

    def _label_rows(self, classes):
        if self.meta.class_splits:
            verbs = self.meta.class_splits[0]
            one_hot = np.zeros((len(classes), self.meta.num_classes), np.float32)
            one_hot[np.arange(len(classes)), classes % verbs] = 1
            one_hot[np.arange(len(classes)), verbs + classes % self.meta.class_splits[1]] = 1
            return one_hot
        return np.eye(self.meta.num_classes, dtype=np.float32)[classes]

    def _examples(self, classes, rng):
        batch = {}
        for name, patterns in self._patterns.items():
            noise = rng.normal(size=(len(classes),) + patterns.shape[1:]) * self._noise
            batch[name] = (patterns[classes] + noise).astype(np.float32)
        batch["label"] = self._label_rows(classes)
        return batch

    def batches(self, split, mode, batch_size, *, seed, start_batch=0):
        labels = self._labels[split]
        if mode == "train":
            self.start_batches.append(start_batch)
            return self._train(labels, batch_size, seed, start_batch)
        views = self._num_test_views if mode == "test" else 1
        return self._one_pass(labels, batch_size, seed, views)

    def _train(self, labels, batch_size, seed, start_batch):
        index = start_batch
        while True:
            rng = np.random.default_rng([seed, index])
            rows = rng.integers(0, len(labels), batch_size)
            batch = self._examples(labels[rows], rng)
            batch["batch_mask"] = np.ones(batch_size, np.float32)
            batch["video_index"] = rows.astype(np.int32)
            yield batch
            index += 1

    def _one_pass(self, labels, batch_size, seed, views):
        video = np.repeat(np.arange(len(labels)), views)
        rng = np.random.default_rng([seed, 10**6])
        for start in range(0, len(video), batch_size):
            rows = video[start : start + batch_size]
            pad = batch_size - len(rows)
            batch = self._examples(labels[rows], rng)
            mask = np.ones(batch_size, np.float32)
            if pad:
                batch = {
                    k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)])
                    for k, v in batch.items()
                }
                mask[len(rows) :] = 0
                rows = np.concatenate([rows, np.zeros(pad, rows.dtype)])
            batch["batch_mask"] = mask
            batch["video_index"] = rows.astype(np.int32)
            yield batch


def tiny_model_config(modalities=("rgb", "spectrogram")):
    config = models.default_mbt_config()
    config.modalities = tuple(modalities)
    config.variant = None
    config.hidden_size, config.num_layers, config.num_heads, config.mlp_dim = 16, 2, 2, 32
    config.tokenizers.rgb.patches = (2, 8, 8)
    config.tokenizers.spectrogram.patches = (8, 8)
    config.fusion_layer = 1
    config.n_bottlenecks = 2
    config.stochastic_droplayer_rate = 0.0
    return config


def tiny_sft_model_config():
    """Width-16 SFT on these inputs: 1 unimodal + sparse-pool + 1 joint block; 8 + 8 tokens
    pooled by 2 each."""
    from mbt.models import sft  # pylint: disable=g-import-not-at-top

    config = sft.default_config()
    config.variant = None
    config.hidden_size, config.num_heads, config.mlp_dim = 16, 2, 32
    config.n_layers_pre_fusion, config.n_layers_post_fusion = 1, 1
    config.tokenizers.rgb.patches = (2, 8, 8)
    config.tokenizers.spectrogram.patches = (8, 8)
    config.pool_sizes = {"rgb": 2, "spectrogram": 2}
    return config


def tiny_config(**overrides):
    """Trainer defaults + tiny MBT + an in-memory 'vggsound'-named dataset."""
    config = config_validation.trainer_config()
    config.model = tiny_model_config()
    config.dataset = ml_collections.ConfigDict(
        dict(name="vggsound", modalities=("rgb", "spectrogram"))
    )
    config.batch_size = 16
    config.eval_batch_size = 8
    config.num_train_steps = 8
    config.lr.base_lr = 0.1
    config.lr.warmup_steps = 2
    config.mixup.alpha = 0.0
    config.label_smoothing = 0.0
    config.checkpoint.every_steps = 4
    config.log_every_steps = 4
    config.final_eval = True
    for key, value in overrides.items():
        node = config
        parts = key.split(".")
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = value
    return config
