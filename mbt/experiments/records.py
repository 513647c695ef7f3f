"""What an experiment keeps on disk besides the trainer's own files.

- `<out>/experiment.json`: the experiment, its `--data`, the command that ran it and its runs
  (name -> swept values), written by `run` and read by `collect`.
- `<out>/<run>/experiment_run.json`: one run's record: `train_seconds` (wall seconds of
  training, compile and checkpoints included, final evaluation excluded, summed over every
  attempt), `attempts`, `finished`, the data's `num_classes` and `input_shapes`, and
  `compute` (GFLOPs, parameters, memory) once `collect` has measured them.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Mapping
from typing import Any

EXPERIMENT_FILE = "experiment.json"
RUN_FILE = "experiment_run.json"
ROBUSTNESS_FILE = "robustness.json"  # written in the run's workdir by `mbt.robustness`


def read_json(path: str) -> dict[str, Any] | None:
    """The JSON object in `path`, or None if it is missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_json(path: str, value: Mapping[str, Any]) -> None:
    """Writes `value` to `path` atomically (a crash leaves the old file or the new one)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, allow_nan=True)
        f.write("\n")
    os.replace(tmp, path)


def run_record(workdir: str) -> dict[str, Any]:
    """The run's record (`{}` before its first attempt)."""
    return read_json(os.path.join(workdir, RUN_FILE)) or {}


def save_run_record(workdir: str, record: Mapping[str, Any]) -> None:
    write_json(os.path.join(workdir, RUN_FILE), record)


def test_results(workdir: str) -> dict[str, Any] | None:
    """The run's multi-view test results (`results_<split>.json` written in mode 'test')."""
    for path in sorted(glob.glob(os.path.join(workdir, "results_*.json"))):
        results = read_json(path)
        if results is not None and results.get("mode") == "test":
            return results
    return None
