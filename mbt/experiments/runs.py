"""Runs of an experiment: a config file, its argument string and `--config.<key>` overrides.

A run's config is built exactly as `python -m mbt.main --config=<file>:<arg>
--config.<key>=<value> ...` builds it: the override values are kept as the command-line
strings and parsed onto the loaded config by ml_collections' own flag parsers
(`config_flags`), so the command `command()` prints reproduces the config `build_config()`
trains with.

The config file of each `--data` value is in `DATA_CONFIGS` (the one place that says which
file the demo uses).
"""

from __future__ import annotations

import dataclasses
import os
import shlex
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags

from mbt import siblings

# `configs/` of the repository (beside the `mbt` package).
CONFIGS_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs"
)

# --data value -> config file in CONFIGS_DIR. `demo` is the embedded benchmark every
# experiment's demo sizes are derived from (its model=mbt|sft|clstm and modalities=av|audio|rgb
# argument keys are the ones the experiments use).
DATA_CONFIGS = {
    "demo": "sounding_objects.py",
    "audioset": "audioset.py",
    "vggsound": "vggsound.py",
    "epic_kitchens": "epic_kitchens.py",
}


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run of an experiment.

    Attributes:
      name: the run's folder under `--out` (letters, digits, '_', '.', '-').
      arg: the config file's argument string, e.g. 'model=sft,modalities=av'.
      overrides: dotted config key -> value, set after loading (`format_value` writes each as
        its `--config.<key>=` string).
      swept: what tells this run apart in the table: column -> value (config keys, dotted, and
        derived values such as 'span_s').
      robustness: also evaluate under input noise after training (`--mode=robustness`).
    """

    name: str
    arg: str
    overrides: Mapping[str, Any]
    swept: Mapping[str, Any]
    robustness: bool = False


def config_file(data: str) -> str:
    """The config file of `--data` (absolute path); ValueError naming the allowed values."""
    if data not in DATA_CONFIGS:
        raise ValueError(f"--data={data!r}; allowed: {', '.join(DATA_CONFIGS)}")
    path = os.path.join(CONFIGS_DIR, DATA_CONFIGS[data])
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} (the config file of --data={data}) does not exist: run from a checkout "
            f"of the repository (pip install -e .), whose configs/ folder holds it"
        )
    return path


class Bases:
    """The config file of one `--data` value and its `get_config(arg)` per argument string."""

    def __init__(self, data: str):
        self.data = data
        self.path = config_file(data)
        self._loaded: dict[str, ml_collections.ConfigDict] = {}

    @property
    def is_demo(self) -> bool:
        return self.data == "demo"

    def get(self, arg: str) -> ml_collections.ConfigDict:
        """A fresh copy of `get_config(arg)` (loaded once per argument string)."""
        if arg not in self._loaded:
            self._loaded[arg] = siblings.load_config_file(self.path, arg)
        return ml_collections.ConfigDict(self._loaded[arg].to_dict())


def format_value(value: Any) -> str:
    """The `--config.<key>=` string that ml_collections parses back to `value`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return repr(tuple(value))
    if isinstance(value, Mapping):
        return repr(dict(value))
    return str(value)


def parse_set(items: Sequence[str]) -> dict[str, str]:
    """`['KEY=VALUE', ...]` (`--set`) -> {KEY: VALUE} (strings, parsed later by the config)."""
    parsed = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().removeprefix("config.")
        if not sep or not key:
            raise ValueError(f"--set={item!r} must look like KEY=VALUE, e.g. num_train_steps=3")
        parsed[key] = value
    return parsed


def base_overrides(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Overrides every run of a base config needs: no sibling runs (the demo config lists the
    single-modality siblings of its MBT; an experiment names its runs itself)."""
    return {"siblings": {}} if config.get("siblings") else {}


def override_strings(
    bases: Bases, run: Run, sets: Mapping[str, str], extra: Mapping[str, Any]
) -> dict[str, str]:
    """The run's overrides as `{key: command-line string}`: `base_overrides`, the run's own,
    then `sets` (the `--set` strings, applied to every run), then `extra` (the shared data's
    location); a later one replaces an earlier one of the same key."""
    own = {**base_overrides(bases.get(run.arg)), **run.overrides}
    strings = {key: format_value(value) for key, value in own.items()}
    strings.update(sets)
    strings.update({key: format_value(value) for key, value in extra.items()})
    return strings


def apply_strings(
    config: ml_collections.ConfigDict, strings: Mapping[str, str]
) -> ml_collections.ConfigDict:
    """`config` with `--config.<key>=<string>` applied by ml_collections' flag parsers, as
    `mbt.main` applies them (an unknown key or a badly typed value raises ValueError)."""
    for key in strings:
        node: Any = config
        for part in key.split("."):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                raise ValueError(f"config.{key} (override {key}={strings[key]}) is no config key")
            node = node[part]
    argv = ["mbt.experiments"] + [f"--config.{key}={value}" for key, value in strings.items()]
    flag_values = flags.FlagValues()
    try:
        holder = config_flags.DEFINE_config_dict(
            "config", config, flag_values=flag_values, lock_config=True, sys_argv=argv
        )
        flag_values(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"bad config override: {error}") from None
    result = holder.value
    result.unlock()
    return result


def build_config(
    bases: Bases, run: Run, sets: Mapping[str, str], extra: Mapping[str, Any]
) -> ml_collections.ConfigDict:
    """The full config of `run` (not validated: see `mbt.config_validation`)."""
    return apply_strings(bases.get(run.arg), override_strings(bases, run, sets, extra))


def _display_path(path: str) -> str:
    """`path` relative to the working directory when it lies inside it, else absolute."""
    path = os.path.abspath(path)
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def command(
    bases: Bases, run: Run, workdir: str, sets: Mapping[str, str], extra: Mapping[str, Any]
) -> str:
    """The shell command that trains `run` in `workdir` (and evaluates its robustness)."""
    parts = [
        "python",
        "-m",
        "mbt.main",
        f"--config={_display_path(bases.path)}:{run.arg}",
        f"--workdir={workdir}",
    ] + [
        f"--config.{key}={value}"
        for key, value in override_strings(bases, run, sets, extra).items()
    ]
    line = shlex.join(parts)
    if run.robustness:
        line += " && " + shlex.join(
            ["python", "-m", "mbt.main", f"--workdir={workdir}", "--mode=robustness"]
        )
    return line
