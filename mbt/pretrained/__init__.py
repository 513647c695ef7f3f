"""Pretrained weights: initialise MBT from an ImageNet ViT or a Scenic MBT checkpoint.

The trainer calls `init_from(config, params)` when `config.init_from.checkpoint_path` is set,
after initialising the model; it returns the new params and an `InitReport` (print it for a table
of every parameter as loaded / resized / inflated / fresh). `config.init_from` keys
(`default_init_from_config()`):

| key | values |
|---|---|
| `checkpoint_path` | a `.npz`, a train state (msgpack file, orbax directory), a directory |
|  | of `checkpoint_<step>` (the latest), or an mbt workdir (`train_state`) |
| `checkpoint_format` | 'auto' / 'vit_npz' / 'big_vision_npz' / 'scenic' (MBT) / 'flax' (ViT) /
|  | 'torch_safetensors' (timm or Hugging Face ViT) |
| `inflation` | 'central_frame' / 'average': 2-D patch kernel → 3-D tubelet kernel |
| `temporal_posemb` | 'tile' / 'learned' / 'none': video position embeddings (see vit_init) |
| `restore_output_projection` | copy the checkpoint's classifier head (same class count only) |
| `input_shapes` | `{modality: per-example shape}`; only needed when `init_from` is not given them |
| `seed` | seed of the random temporal part of `temporal_posemb='learned'` |

See docs/pretrained.md for the mapping rules and `scenic_checkpoint.load_scenic_mbt` for
restoring a Scenic MBT checkpoint for evaluation or prediction.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import ml_collections

from mbt import models
from mbt.pretrained import formats
from mbt.pretrained import scenic_checkpoint
from mbt.pretrained import torch_vit
from mbt.pretrained import train_state
from mbt.pretrained import vit_init
from mbt.pretrained.report import InitReport


def default_init_from_config() -> ml_collections.ConfigDict:
    """Every `config.init_from` key with its default (no checkpoint: nothing is loaded)."""
    return ml_collections.ConfigDict(
        {
            "checkpoint_path": None,
            "checkpoint_format": "auto",
            "inflation": "central_frame",
            "temporal_posemb": "tile",
            "restore_output_projection": False,
            "input_shapes": None,
            "seed": 0,
        }
    )


def init_from(
    config: ml_collections.ConfigDict,
    params: Mapping[str, Any],
    input_shapes: Mapping[str, Any] | None = None,
) -> tuple[dict, InitReport]:
    """Params initialised from `config.init_from.checkpoint_path`, and the report.

    `params`: the model's freshly initialised params (shapes, dtypes and values of the
    parameters the checkpoint does not provide). `input_shapes`: `{modality: per-example shape}`
    (e.g. `DatasetMeta.input_shapes`), used for the token grids of the position embeddings;
    falls back to `config.init_from.input_shapes`, then `config.dataset`. Returns a nested dict of
    numpy arrays with the structure of `params`.
    """
    settings = config.get("init_from")
    path = settings.get("checkpoint_path") if settings is not None else None
    if not path:
        raise ValueError("config.init_from.checkpoint_path is not set")
    family = models.get_family(config.model.get("name"))
    if not family.supports_init_from:
        supported = tuple(
            n for n in models.known_names() if models.get_family(n).supports_init_from
        )
        raise ValueError(
            f"config.init_from supports config.model.name in {supported}; "
            f"got {config.model.get('name')!r}"
        )
    checkpoint_format = settings.get("checkpoint_format", "auto") or "auto"
    if checkpoint_format not in formats.FORMATS:
        raise ValueError(
            f"config.init_from.checkpoint_format={checkpoint_format!r}; allowed: {formats.FORMATS}"
        )
    if checkpoint_format == "auto":
        checkpoint_format = formats.detect_format(path)

    if checkpoint_format == "scenic":
        new_params, report = scenic_checkpoint.init_from_scenic(
            scenic_checkpoint.read_scenic_checkpoint(path),
            params,
            restore_output_projection=bool(settings.get("restore_output_projection", False)),
        )
    else:
        options = vit_init.Options(
            inflation=settings.get("inflation", "central_frame"),
            temporal_posemb=settings.get("temporal_posemb", "tile"),
            restore_output_projection=bool(settings.get("restore_output_projection", False)),
            seed=int(settings.get("seed", 0) or 0),
        )
        options.validate()
        num_heads = models.resolve_sizes(config.model).num_heads
        vit = vit_init.load_vit(path, checkpoint_format, num_heads=num_heads)
        shapes = input_shapes if input_shapes is not None else settings.get("input_shapes")
        grids = vit_init.token_grids(
            config.model, formats.flatten(params), shapes, config.get("dataset")
        )
        new_params, report = vit_init.map_vit_to_mbt(vit, params, config.model, grids, options)
    logging.info("%s", report.summary())
    return new_params, report


__all__ = [
    "InitReport",
    "default_init_from_config",
    "init_from",
    "formats",
    "scenic_checkpoint",
    "torch_vit",
    "train_state",
    "vit_init",
]
