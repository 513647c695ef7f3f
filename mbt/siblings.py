"""Sibling configs: train each config of `config.siblings` after the main run and compare.

The tiny synthetic demo (`configs/synthetic.py`) lists its audio-only and rgb-only
siblings; `python -m mbt.main` trains them in `<workdir>/<sibling name>` on the data the main
run prepared and prints a table of the test metrics of every run.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections

from mbt import config_validation
from mbt import evaluate as evaluate_lib
from mbt import train

_LOG = logging.getLogger(__name__)


def load_config_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """`get_config(arg)` of a config file given by path (as `--config=path[:arg]` does)."""
    if ":" in os.path.basename(path) and arg is None:
        path, arg = path.rsplit(":", 1)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} (config.siblings) does not exist")
    name = "mbt_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"config file {path!r} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg is not None else module.get_config()


# Overrides of the main run not passed to siblings: they define what a sibling is.
_SIBLING_OWN_KEYS = ("siblings", "model.modalities", "dataset.modalities")


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: Mapping[str, Any], prefix: str = ""
):
    """Sets `overrides` in `config`, except the keys in `_SIBLING_OWN_KEYS`.

    Keys may be flat and dotted ('model.fusion_layer', as `config_flags.get_override_values`
    returns them) and/or nested dicts.
    """
    for key, value in overrides.items():
        name = f"{prefix}{key}"
        if name in _SIBLING_OWN_KEYS:
            continue
        if isinstance(value, Mapping):
            apply_overrides(config, value, name + ".")
            continue
        *parents, leaf = name.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[leaf] = value


def train_siblings(
    config: ml_collections.ConfigDict,
    workdir: str,
    main_result: Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
) -> str:
    """Trains each `config.siblings` entry (name -> 'config_file.py[:arg]') in `<workdir>/<name>`
    and compares test top-1.

    The siblings read the data the main run prepared (its `config.dataset.data_dir`, no
    new synthetic copy) and get the main run's command-line overrides, except those of
    `_SIBLING_OWN_KEYS`. Returns a markdown table (also written to
    `<workdir>/comparison.md`) with the primary metric and top-1 of every run.
    """
    rows = {"+".join(config.model.modalities) + " (this config)": main_result["test"]}
    for name, path in config.siblings.items():
        sibling = load_config_file(path)
        apply_overrides(sibling, overrides or {})
        sibling.siblings = {}
        if config.dataset.get("data_dir"):
            sibling.dataset.data_dir = config.dataset.data_dir
        if sibling.dataset.get("synthetic") is not None:
            sibling.dataset.synthetic.num_clips = 0  # reuse the copy built for the main run
        config_validation.validate_config(sibling)
        _LOG.info("Training sibling config %s in %s", path, os.path.join(workdir, name))
        result = train.train_and_evaluate(sibling, os.path.join(workdir, name))
        rows[f"{'+'.join(sibling.model.modalities)} ({name})"] = result["test"]
    columns = []
    for results in rows.values():
        for key in ("top1", "map", "action_top1"):
            if key in results and key not in columns:
                columns.append(key)
    table = evaluate_lib.format_results_table(
        {run: {key: results.get(key) for key in columns} for run, results in rows.items()}
    )
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "comparison.md"), "w", encoding="utf-8") as f:
            f.write(table)
    return table
