"""The trainer's config keys: defaults (`trainer_config`) and start-up checks (`validate_config`).

A full config is `trainer_config()` plus `config.model` (`mbt.models.default_mbt_config()`)
and `config.dataset` (`mbt.data.pipeline.default_dataset_config()`). `validate_config`
raises `ValueError` naming the offending key, its value and the allowed values, before
any data is read or anything is compiled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import ml_collections

from mbt import models
from mbt import optim
from mbt.data import registry
from mbt.data import settings as data_settings

MODES = ("train", "evaluate", "test")
TEST_COMBINE = ("mean_logits", "mean_probs")
HEAD_REDUCTIONS = ("sum", "mean")


def trainer_config() -> ml_collections.ConfigDict:
    """Every trainer key with its default (the MBT paper's recipe where it has one)."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.batch_size = 64  # global, over all devices and processes
    config.eval_batch_size = 64  # global; eval/test batches are padded to it
    config.num_epochs = 50.0  # used when num_train_steps is 0/None
    config.num_train_steps = 0  # > 0 overrides num_epochs
    config.grad_accum_steps = 1  # micro-batches per update (batch_size is split)

    config.optimizer = ml_collections.ConfigDict(
        dict(
            name="sgd",
            momentum=0.9,
            nesterov=False,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            weight_decay=0.0,
            grad_clip_norm=1.0,
        )
    )
    config.lr = ml_collections.ConfigDict(
        dict(
            schedule="warmup_cosine", base_lr=0.5, warmup_epochs=2.5, warmup_steps=None, end_lr=0.0
        )
    )
    config.label_smoothing = 0.3
    config.mixup = ml_collections.ConfigDict(dict(alpha=0.5, mixmod=True))
    config.loss = ml_collections.ConfigDict(dict(head_reduction="sum"))

    config.mesh_shape = (-1, 1)  # (data, model); -1 = all remaining devices
    config.fsdp = False  # also shard params / optimiser state over 'data'
    config.fsdp_min_size = 2**14  # arrays smaller than this stay replicated under FSDP

    config.checkpoint = ml_collections.ConfigDict(dict(every_steps=1000, keep=3, use_async=True))
    config.log_every_steps = 50
    config.eval_every_steps = 0  # 0 = evaluate only at the end
    config.final_eval = True  # single-view pass on the eval split after training
    config.test_combine = "mean_logits"
    config.export = True  # write <workdir>/export/ for mbt.predict after training
    config.siblings = {}  # name -> 'config.py[:arg]' trained after this one, for a comparison
    return config


def _fail(key: str, value: Any, allowed: str):
    raise ValueError(f"config.{key}={value!r} is invalid; allowed: {allowed}")


def _check_choice(config, key: str, allowed: Sequence[str]):
    node = config
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.get(part) or {}
    value = node.get(parts[-1]) if hasattr(node, "get") else None
    if value not in allowed:
        _fail(key, value, ", ".join(repr(a) for a in allowed))


def validate_config(
    config: ml_collections.ConfigDict,
    meta: Any = None,
    *,
    mesh_shape: Sequence[int] | None = None,
    process_count: int = 1,
) -> None:
    """Checks the whole config; `meta` (DatasetMeta) and the mesh enable the dataset checks.

    Args:
      config: the full config.
      meta: `mbt.data.pipeline.DatasetMeta` or None (then modalities are checked against
        `config.dataset.modalities` only).
      mesh_shape: the resolved `(data, model)` mesh; None = `config.mesh_shape` as far as it
        is known without devices.
      process_count: number of JAX processes (the batch must split evenly over them).
    Raises:
      ValueError naming the key, the value and what is allowed.
    """
    for key in ("model", "dataset"):
        if config.get(key) is None:
            raise ValueError(f"config.{key} is missing; start from a file in configs/")
    models.validate_model_config(config.model)

    registry.for_config(config.dataset)  # unknown name: ValueError listing the known ones
    spec_augment = config.dataset.get("spec_augment")
    if spec_augment is not None:
        data_settings.spec_augment_settings(spec_augment)  # ValueError naming a bad key
    fraction = config.dataset.get("train_fraction")
    if fraction is not None and (
        isinstance(fraction, bool)
        or not isinstance(fraction, (int, float))
        or not 0.0 < float(fraction) <= 1.0
    ):
        _fail("dataset.train_fraction", fraction, "a number in (0, 1] (1 = the whole train split)")

    model_modalities = tuple(config.model.modalities)
    if meta is not None:
        provided = tuple(meta.modalities)
    else:
        provided = config.dataset.get("modalities") or ()
        provided = (provided,) if isinstance(provided, str) else tuple(provided)
    if provided:
        missing = [m for m in model_modalities if m not in provided]
        if missing:
            _fail(
                "model.modalities",
                model_modalities,
                f"a subset of the modalities the dataset provides {provided} "
                f"(config.dataset.modalities); {missing} are not provided",
            )

    _check_choice(config, "optimizer.name", optim.OPTIMIZERS)
    _check_choice(config, "lr.schedule", optim.SCHEDULES)
    for key in ("base_lr", "end_lr"):
        value = config.lr.get(key)
        if key == "end_lr" and value is None:
            continue
        if not math.isfinite(float(value)) or float(value) < 0:
            _fail(f"lr.{key}", value, "a finite learning rate >= 0")
    _check_choice(config, "loss.head_reduction", HEAD_REDUCTIONS)
    _check_choice(config, "test_combine", TEST_COMBINE)
    smoothing = float(config.get("label_smoothing", 0.0) or 0.0)
    if not 0.0 <= smoothing < 1.0:
        _fail("label_smoothing", smoothing, "a value in [0, 1)")
    alpha = float((config.get("mixup") or {}).get("alpha", 0.0) or 0.0)
    if alpha < 0:
        _fail("mixup.alpha", alpha, "0 (off) or a Beta concentration > 0")

    steps, epochs = config.get("num_train_steps"), config.get("num_epochs")
    if not steps and not (epochs and float(epochs) > 0):
        _fail("num_train_steps", steps, "an integer > 0, or set config.num_epochs > 0")
    if steps is not None and int(steps) < 0:
        _fail("num_train_steps", steps, "an integer >= 0 (0 = use num_epochs)")

    accum = int(config.get("grad_accum_steps", 1) or 1)
    if accum < 1:
        _fail("grad_accum_steps", accum, "an integer >= 1")
    shape = (
        tuple(mesh_shape) if mesh_shape is not None else tuple(config.get("mesh_shape") or (-1, 1))
    )
    if len(shape) != 2:
        _fail("mesh_shape", shape, "(data, model) with at most one -1")
    data_size = shape[0] if shape[0] > 0 else 1
    for key, needed, why in (
        (
            "batch_size",
            data_size * accum * process_count,
            f"the data-parallel size {data_size} x grad_accum_steps {accum} x processes "
            f"{process_count}",
        ),
        (
            "eval_batch_size",
            data_size * process_count,
            f"the data-parallel size {data_size} x processes {process_count}",
        ),
    ):
        value = config.get(key)
        if key == "eval_batch_size" and not value:
            continue
        if not isinstance(value, int) or value <= 0 or value % needed:
            _fail(key, value, f"a positive multiple of {needed} ({why}, config.mesh_shape={shape})")
    keep = (config.get("checkpoint") or {}).get("keep", 3)
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
        _fail("checkpoint.keep", keep, "an integer >= 1 (the newest checkpoints kept on disk)")
    every = (config.get("checkpoint") or {}).get("every_steps", 0)
    if every is not None and int(every) < 0:
        _fail("checkpoint.every_steps", every, "an integer >= 0 (0 = only at the end)")
