"""The config a workdir was trained with: `<workdir>/config.json` (save, load, compare).

Training writes the full resolved config (after command-line overrides) to
`<workdir>/config.json`; `python -m mbt.main --workdir=W --mode=test` without `--config`
reads it back. A `--config` given for a workdir that has one must not change the parameter
or optimizer-state tree (`structure_differences`): restoring the checkpoints would fail deep
inside orbax. Other differences (data paths, batch sizes, learning rates) are allowed.

JSON has no tuples: `load_config` turns every list back into a tuple (configs hold tuples,
never lists), so a loaded config equals the saved one as a dict and validates the same.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections

from mbt import models

_LOG = logging.getLogger(__name__)

CONFIG_FILE = "config.json"

# `config.model` keys (matched by any component of the dotted name, e.g. `pool_sizes` for
# `config.model.pool_sizes.rgb`) that change how the model runs but not its parameter tree:
# a workdir may be evaluated or resumed with other values.
RUNTIME_MODEL_KEYS = (
    "dropout_rate",
    "attention_dropout_rate",
    "stochastic_droplayer_rate",
    "dtype",
    "attention",
    "remat",
    "test_with_bottlenecks",
    "latent_mixup_alpha",
    "latent_mixup",
    "latent_mixup_lambdas",
    "latent_mixup_partner",
    "latent_mixup_layer",
    "latent_mixup_after_epochs",
    "pool_type",  # SFT pooling: applied after the sparse block, no parameters
    "pool_sizes",
    "pool_paddings",
    "pool_k",
    "sparse_attention_mask",
    "sparse_attention_stride",
    "sparse_attention_expressivity",
    "kernel_init",  # only used to initialise
)

# `config.dataset` keys that set the per-example input shapes or the number of classes, and
# so the shapes of position embeddings, patch embeddings and the output projection.
SHAPE_DATASET_KEYS = (
    "name",
    "num_frames",
    "frame_size",
    "audio_seconds",
    "hop_ms",
    "num_mel_bins",
    "spec_channels",
    "num_classes",
    "class_splits",
)


def config_path(workdir: str) -> str:
    return os.path.join(workdir, CONFIG_FILE)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return str(value)


def save_config(config: ml_collections.ConfigDict, workdir: str) -> str | None:
    """Writes `<workdir>/config.json` atomically (process 0 only); returns its path."""
    if jax.process_index() != 0:
        return None
    os.makedirs(workdir, exist_ok=True)
    path = config_path(workdir)
    text = json.dumps(config.to_dict(), indent=2, sort_keys=True, default=_jsonable)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    os.replace(tmp, path)
    return path


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config of `<workdir>/config.json`; FileNotFoundError saying what to pass if absent."""
    path = config_path(workdir)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} does not exist: the workdir was not trained by this version of mbt (or "
            f"not at all). Pass the config it was trained with: --config=<file.py[:arg]> "
            f"plus the same --config.<key>=<value> overrides."
        )
    with open(path, encoding="utf-8") as f:
        return ml_collections.ConfigDict(_tuples(json.load(f)))


def _flatten(tree: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name))
        else:
            flat[name] = value
    return flat


def _optimizer_structure(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """`config.optimizer` keys -> what of them shapes the optax state tree (`mbt.optim`)."""
    opt = config.get("optimizer") or {}
    name = opt.get("name")
    shape = {
        "config.optimizer.name": name,
        "config.optimizer.grad_clip_norm": bool(opt.get("grad_clip_norm")),
    }
    if name == "sgd":  # adamw always has its decay and moments in the state
        shape["config.optimizer.momentum"] = bool(opt.get("momentum", 0.9))
        shape["config.optimizer.weight_decay"] = bool(opt.get("weight_decay"))
    return shape


def _lookup(config: ml_collections.ConfigDict, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split(".")[1:]:
        if not hasattr(node, "get"):
            return None
        node = node.get(part)
    return node


def _resolved_model(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """`config.model` merged over its family's defaults (a key added to a family since the
    workdir was trained takes its default on both sides), or as given for an unknown name."""
    model = config.to_dict().get("model") or {}
    try:
        return models.get_family(model.get("name")).resolve(model).to_dict()
    except ValueError:
        return model


def structure_differences(
    saved: ml_collections.ConfigDict, given: ml_collections.ConfigDict
) -> list[tuple[str, Any, Any]]:
    """`(key, saved value, given value)` for each key that changes the param / optimizer tree:
    model keys but `RUNTIME_MODEL_KEYS`, `SHAPE_DATASET_KEYS`, the optimizer's state layout."""
    saved_model = _flatten(_resolved_model(saved), "config.model")
    given_model = _flatten(_resolved_model(given), "config.model")
    differing = []
    for key in sorted(set(saved_model) | set(given_model)):
        if any(part in RUNTIME_MODEL_KEYS for part in key.split(".")[2:]):
            continue
        if saved_model.get(key) != given_model.get(key):
            differing.append((key, saved_model.get(key), given_model.get(key)))
    for key in SHAPE_DATASET_KEYS:
        dotted = f"config.dataset.{key}"
        old, new = _lookup(saved, dotted), _lookup(given, dotted)
        if _tuples(old) != _tuples(new):
            differing.append((dotted, old, new))
    saved_opt, given_opt = _optimizer_structure(saved), _optimizer_structure(given)
    if saved_opt["config.optimizer.name"] != given_opt["config.optimizer.name"]:
        saved_opt, given_opt = (
            {k: v for k, v in opt.items() if k.endswith(".name")} for opt in (saved_opt, given_opt)
        )
    for key in sorted(set(saved_opt) | set(given_opt)):
        if saved_opt.get(key) != given_opt.get(key):
            differing.append((key, _lookup(saved, key), _lookup(given, key)))
    return differing


def other_differences(
    saved: ml_collections.ConfigDict, given: ml_collections.ConfigDict
) -> list[tuple[str, Any, Any]]:
    """`(key, saved value, given value)` for every other differing key."""
    structural = {key for key, _, _ in structure_differences(saved, given)}
    flat_saved = _flatten(saved.to_dict(), "config")
    flat_given = _flatten(given.to_dict(), "config")
    return [
        (key, flat_saved.get(key), flat_given.get(key))
        for key in sorted(set(flat_saved) | set(flat_given))
        if key not in structural and _tuples(flat_saved.get(key)) != _tuples(flat_given.get(key))
    ]


class ConfigMismatchError(ValueError):
    """`--config` changes the model or optimizer structure of a trained workdir."""


def check_compatible(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Raises ConfigMismatchError if `config` cannot restore the checkpoints of `workdir`.

    A workdir without config.json passes. Allowed differences are logged.
    """
    if not os.path.isfile(config_path(workdir)):
        return
    saved = load_config(workdir)
    differing = structure_differences(saved, config)
    if differing:
        lines = "\n".join(
            f"  {key}: workdir has {old!r}, --config gives {new!r}" for key, old, new in differing
        )
        raise ConfigMismatchError(
            f"--config changes the model / optimizer structure of the run in {workdir} "
            f"({config_path(workdir)}), so its checkpoints cannot be restored:\n{lines}\n"
            f"Drop --config (and its overrides) to use the workdir's config, or use a new "
            f"--workdir for the new structure."
        )
    for key, old, new in other_differences(saved, config):
        _LOG.info("%s: workdir has %r, --config gives %r (allowed)", key, old, new)


def resolve_config(
    config: ml_collections.ConfigDict | None, workdir: str
) -> ml_collections.ConfigDict:
    """The config to run `workdir` with: `config` (checked against the workdir's) or its own."""
    if config is None:
        loaded = load_config(workdir)
        _LOG.info("No --config: using %s", config_path(workdir))
        return loaded
    check_compatible(config, workdir)
    return config
