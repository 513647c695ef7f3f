"""`run`: train and test an experiment's runs one after another, each in `<out>/<run name>`.

Every run goes through the normal trainer in this process (`mbt.train.train_and_evaluate`,
after `mbt.config_validation.validate_config`), so it resumes from the checkpoints in its
workdir when interrupted; a run whose record says it finished is skipped. A demo dataset (a
config with `dataset.synthetic.num_clips > 0`) is generated and built once, in `<out>/data`,
and every run reads that copy (`data_overrides`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections

from mbt import config_validation
from mbt import sharding
from mbt import train
from mbt import workdir as workdir_lib
from mbt.data import random_input
from mbt.experiments import records
from mbt.experiments import reuse
from mbt.experiments.runs import Bases
from mbt.experiments.runs import Run
from mbt.experiments.runs import build_config
from mbt.tools import flops

_LOG = logging.getLogger(__name__)

DATA_SUBDIR = "data"
# Keys of config.dataset that say which copy a synthetic dataset is; runs sharing one prepared
# copy must agree on them.
_COPY_KEYS = ("name", "imports", "builder_config", "synthetic")
RECORD_EVERY_SECS = 30.0  # how often a training run's seconds are saved while it trains


def select(runs: Sequence[Run], only: Sequence[str]) -> list[Run]:
    """The runs named in `only` (all when empty), in the experiment's order."""
    names = [r.name for r in runs]
    unknown = [n for n in only if n not in names]
    if unknown:
        raise ValueError(f"--only names no run of this experiment: {unknown}; runs: {names}")
    return [r for r in runs if not only or r.name in only]


def needs_prepared_copy(config: ml_collections.ConfigDict) -> bool:
    """Whether the config generates a synthetic copy (the demo) rather than reading a built one
    (or none: random input)."""
    if random_input.enabled(config):
        return False
    synthetic = config.dataset.get("synthetic") or {}
    return int(synthetic.get("num_clips", 0) or 0) > 0


def data_overrides(config: ml_collections.ConfigDict, out: str) -> dict[str, Any]:
    """Where every run reads a synthetic copy prepared once: `<out>/data/tfds` (or the
    configured `data_dir`), and no copy of its own. `{}` for a built dataset."""
    if not needs_prepared_copy(config):
        return {}
    data_dir = config.dataset.get("data_dir") or os.path.join(
        os.path.abspath(out), DATA_SUBDIR, "tfds"
    )
    return {"dataset.data_dir": data_dir, "dataset.synthetic.num_clips": 0}


def _copy_identity(config: ml_collections.ConfigDict) -> str:
    dataset = config.dataset.to_dict()
    return repr({k: dataset.get(k) for k in _COPY_KEYS})


def prepare_data(
    bases: Bases,
    runs: Sequence[Run],
    out: str,
    sets: Mapping[str, str],
    reuse_from: Sequence[str] = (),
) -> dict[str, Any]:
    """Generates and builds the runs' synthetic copy once in `<out>/data` (kept when there);
    returns `data_overrides`. Runs that would need different copies are refused.

    With `reuse_from`, an equal copy another experiment prepared there (`data/copy.json` names
    its settings; the generator is seeded) is read instead, so that runs of both experiments
    have equal configs (`mbt.experiments.reuse`)."""
    configs = [build_config(bases, run, sets, {}) for run in runs]
    if not configs or not needs_prepared_copy(configs[0]):
        return {}
    identities = {_copy_identity(c) for c in configs}
    if len(identities) > 1:
        raise ValueError(
            f"the runs need {len(identities)} different synthetic copies (config.dataset keys "
            f"{_COPY_KEYS} differ); one experiment prepares one copy"
        )
    identity = identities.pop()
    overrides = data_overrides(configs[0], out)
    own_copy = not configs[0].dataset.get("data_dir")
    if own_copy and not os.path.isfile(os.path.join(out, DATA_SUBDIR, reuse.COPY_FILE)):
        found = reuse.find_same_copy(identity, reuse_from)
        if found is not None:
            _LOG.info("Reading the demo copy in %s (--reuse_from): same settings.", found)
            return {**overrides, "dataset.data_dir": os.path.join(found, "tfds")}
    from mbt.data import pipeline  # pylint: disable=g-import-not-at-top (TensorFlow)

    config = configs[0]
    config.dataset.data_dir = overrides["dataset.data_dir"]
    pipeline.prepare_dataset(config, os.path.join(out, DATA_SUBDIR))
    if own_copy and jax.process_index() == 0:
        reuse.save_copy_identity(os.path.join(out, DATA_SUBDIR), identity)
    return overrides


def _reuse(
    run: Run,
    config: ml_collections.ConfigDict,
    workdir: str,
    experiment: str,
    reuse_from: Sequence[str],
) -> bool:
    """Links a finished run with an equal config into `workdir` (empty); whether it did."""
    if os.path.isdir(workdir) and os.listdir(workdir):
        return False  # a run that started here resumes instead
    source = reuse.find_same_run(
        config, reuse_from, needs_robustness=run.robustness, exclude=workdir
    )
    if source is None:
        return False
    if jax.process_index() == 0:
        reuse.link_run(source, workdir)
        record = records.run_record(workdir)
        record.update(run=run.name, experiment=experiment, reused_from=os.path.abspath(source))
        records.save_run_record(workdir, record)
    _LOG.info(
        "Run %s: its config equals that of the finished run in %s; linked it into %s "
        "instead of training again.",
        run.name,
        source,
        workdir,
    )
    return True


class _Clock:
    """Adds training wall seconds to the run record's `train_seconds`: saved every
    `RECORD_EVERY_SECS` while training, and up to the last train step at the end (the final
    evaluation is not training time)."""

    def __init__(self, workdir: str, record: dict[str, Any]):
        self.workdir, self.record = workdir, record
        self._counted = self._last_step = time.monotonic()

    def save(self, until: float | None = None) -> None:
        until = time.monotonic() if until is None else until
        seconds = float(self.record.get("train_seconds", 0.0))
        self.record["train_seconds"] = seconds + max(0.0, until - self._counted)
        self._counted = max(self._counted, until)
        if jax.process_index() == 0:
            records.save_run_record(self.workdir, self.record)

    def on_step(self, step: int) -> None:
        del step
        self._last_step = time.monotonic()
        if self._last_step - self._counted >= RECORD_EVERY_SECS:
            self.save(self._last_step)

    def stop(self) -> None:
        """Counts up to the last train step (or now, if none ran since the last save)."""
        self.save(max(self._last_step, self._counted))


def run_one(
    run: Run,
    config: ml_collections.ConfigDict,
    workdir: str,
    experiment: str,
    reuse_from: Sequence[str] = (),
) -> str:
    """Trains, tests (and, for `run.robustness`, evaluates under noise) one run; returns
    'skipped', 'reused' (a finished run with an equal config under `reuse_from` was linked:
    `mbt.experiments.reuse`), 'finished' or 'stopped' (SIGTERM: checkpoint saved, resumable)."""
    record = records.run_record(workdir)
    if record.get("finished"):
        changed = []
        if os.path.isfile(workdir_lib.config_path(workdir)):
            saved = workdir_lib.load_config(workdir)
            changed = [k for k, _, _ in workdir_lib.structure_differences(saved, config)]
            changed += [k for k, _, _ in workdir_lib.other_differences(saved, config)]
        _LOG.info(
            "Skipping run %s: it finished in %s%s (delete that folder to run it again).",
            run.name,
            workdir,
            f"; its config differs from this one in {changed}" if changed else "",
        )
        return "skipped"
    if reuse_from and not record and _reuse(run, config, workdir, experiment, reuse_from):
        return "reused"
    mesh_shape = sharding.resolve_mesh_shape(config.get("mesh_shape"), jax.device_count())
    config_validation.validate_config(
        config, mesh_shape=mesh_shape, process_count=jax.process_count()
    )
    workdir_lib.check_compatible(config, workdir)
    record.update(
        run=run.name,
        experiment=experiment,
        attempts=int(record.get("attempts", 0)) + 1,
        finished=False,
    )
    record.setdefault("train_seconds", 0.0)
    _LOG.info(
        "Run %s (attempt %d) in %s: %s",
        run.name,
        record["attempts"],
        workdir,
        ", ".join(f"{k}={v}" for k, v in run.swept.items()),
    )
    clock = _Clock(workdir, record)
    clock.save()  # the attempt is on record before anything is read or compiled
    data = train.data_source(config, workdir)  # the dataset, or random input when asked
    record.update(
        num_classes=int(data.meta.num_classes),
        input_shapes={m: list(s) for m, s in data.meta.input_shapes.items()},
    )
    try:
        result = train.train_and_evaluate(config, workdir, data, on_step=clock.on_step)
    finally:
        clock.stop()  # an interrupted attempt's seconds count too
    if result["stopped_early"]:
        _LOG.warning("Run %s stopped early (SIGTERM); run again to resume it.", run.name)
        return "stopped"
    record["num_params"] = flops.count_params(result["final_state"].params)
    if run.robustness:
        from mbt import robustness  # pylint: disable=g-import-not-at-top

        robustness.run_robustness(config, workdir, data)
    record["finished"] = True
    if jax.process_index() == 0:
        records.save_run_record(workdir, record)
    return "finished"
