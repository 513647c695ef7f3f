"""Command line of `mbt.experiments` (see the package docstring and docs/experiments.md).

python -m mbt.experiments list
python -m mbt.experiments run NAME [--data=demo|audioset|vggsound|epic_kitchens]
    [--out=DIR] [--dry_run] [--set=KEY=VALUE ...] [--only=RUN,RUN] [--reuse_from=DIR,DIR]
python -m mbt.experiments collect NAME [--out=DIR]
python -m mbt.experiments prepare NAME [--data=demo] [--out=DIR] [--set=KEY=VALUE ...]
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from collections.abc import Sequence
from typing import Any

import jax
from absl import flags

from mbt import cli
from mbt import startup
from mbt.data import random_input
from mbt.experiments import catalogue
from mbt.experiments import collect as collect_lib
from mbt.experiments import records
from mbt.experiments import runner
from mbt.experiments import runs as runs_lib

_PROG = "python -m mbt.experiments"
_COMMANDS = ("list", "run", "collect", "prepare")
DEFAULT_OUT_ROOT = "/tmp/mbt_experiments"
_DESCRIPTION = """The papers' experiments, one command each.

  list                 the experiments, their paper figure and how many runs each has
  run NAME             train and test every run of NAME in --out/<run>, one after another
                       (a finished run is skipped, an interrupted one resumes), then collect
  run NAME --dry_run   print one `python -m mbt.main` command per run instead
  collect NAME         write table.json, table.md and plot.png in --out from the finished runs
  prepare NAME         generate and build the demo data of NAME's runs in --out/data (what
                       `run` does first; for the --dry_run commands)
"""


def _flags() -> flags.FlagValues:
    """The CLI's flags, on their own `FlagValues` (see `mbt.cli`)."""
    fv = flags.FlagValues()
    flags.DEFINE_enum(
        "data",
        "demo",
        list(runs_lib.DATA_CONFIGS),
        "demo: the embedded benchmark at CPU sizes; a dataset: configs/<dataset>.py at the "
        "papers' settings (set --set=dataset.data_dir=... to its built copy)",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "out", None, f"the experiment's folder; default {DEFAULT_OUT_ROOT}/NAME", flag_values=fv
    )
    flags.DEFINE_bool(
        "dry_run", False, "print the runs' mbt.main commands instead of running", flag_values=fv
    )
    flags.DEFINE_multi_string(
        "set",
        [],
        "KEY=VALUE config override for every run, as --config.KEY=VALUE of mbt.main "
        "(repeatable), e.g. --set=num_train_steps=3",
        flag_values=fv,
    )
    flags.DEFINE_list("only", [], "run only these runs (names from --dry_run)", flag_values=fv)
    flags.DEFINE_list(
        "reuse_from",
        [],
        "folders of other experiments, or folders holding them (as the default --out root): "
        "a run whose config equals a finished run's there is linked from it instead of trained "
        "again (mbt.experiments.reuse); name only folders trained by this version of mbt",
        flag_values=fv,
    )
    return fv


def _setup_logging() -> None:
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("mbt").setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)


def list_experiments() -> str:
    """One line per experiment: name, demo runs, paper figure, what it shows."""
    bases = runs_lib.Bases("demo")
    lines = []
    for experiment in catalogue.EXPERIMENTS.values():
        count = len(experiment.expand(bases))
        lines.append(
            f"{experiment.name:<18} {count:>2} runs  {experiment.figure}: {experiment.description}"
        )
    return "\n".join(lines)


def _experiment_info(out: str) -> dict[str, Any]:
    return records.read_json(os.path.join(out, records.EXPERIMENT_FILE)) or {}


def _record_experiment(
    out: str,
    experiment: catalogue.Experiment,
    data: str,
    all_runs: Sequence[runs_lib.Run],
    argv: Sequence[str],
) -> dict[str, Any]:
    """Writes `<out>/experiment.json`: its runs and the commands that ran them."""
    info = _experiment_info(out)
    if info.get("experiment") not in (None, experiment.name):
        raise ValueError(
            f"{out} holds experiment {info['experiment']}; use another --out for {experiment.name}"
        )
    if info.get("data") not in (None, data):
        raise ValueError(
            f"{out} holds experiment {info.get('experiment')} on --data={info['data']}; use "
            f"another --out for --data={data}"
        )
    command = shlex.join([*_PROG.split(), *argv])
    commands = [c for c in info.get("commands", []) if c != command] + [command]
    info = {
        "experiment": experiment.name,
        "data": data,
        "commands": commands,
        "runs": {run.name: dict(run.swept) for run in all_runs},
    }
    if jax.process_index() == 0:
        records.write_json(os.path.join(out, records.EXPERIMENT_FILE), info)
    return info


def _info_for_table(info: dict[str, Any]) -> dict[str, Any]:
    return {"data": info.get("data"), "commands": info.get("commands") or []}


def _print_table(out: str) -> None:
    with open(os.path.join(out, collect_lib.TABLE_MD), encoding="utf-8") as f:
        print(f.read(), end="")


def dry_run(
    experiment: catalogue.Experiment,
    bases: runs_lib.Bases,
    chosen: Sequence[runs_lib.Run],
    out: str,
    sets: dict[str, str],
) -> None:
    """Prints one `python -m mbt.main` command per run (and how to prepare demo data)."""
    extra = runner.data_overrides(runs_lib.build_config(bases, chosen[0], sets, {}), out)
    print(f"# {experiment.name} ({experiment.figure}): {len(chosen)} runs, --data={bases.data}")
    if extra:
        prepare = [*_PROG.split(), "prepare", experiment.name, f"--data={bases.data}"]
        prepare += [f"--out={out}", *(f"--set={k}={v}" for k, v in sets.items())]
        print(f"# prepare the data once, first: {shlex.join(prepare)}")
    for r in chosen:
        print(runs_lib.command(bases, r, os.path.join(out, r.name), sets, extra))


def run(
    experiment: catalogue.Experiment,
    bases: runs_lib.Bases,
    chosen: Sequence[runs_lib.Run],
    out: str,
    sets: dict[str, str],
    argv: Sequence[str],
    reuse_from: Sequence[str] = (),
) -> int:
    """Prepares the data, trains each run not finished yet (or links an equal finished one
    from `reuse_from`), then collects; returns the exit status (1 when a run was stopped by
    SIGTERM)."""
    info = _record_experiment(out, experiment, bases.data, experiment.expand(bases), argv)
    extra = runner.prepare_data(bases, chosen, out, sets, reuse_from)
    status = 0
    for r in chosen:
        config = runs_lib.build_config(bases, r, sets, extra)
        outcome = runner.run_one(r, config, os.path.join(out, r.name), experiment.name, reuse_from)
        if outcome == "stopped":
            status = 1
            break
    if jax.process_index() == 0:
        collect_lib.collect(experiment, out, info["runs"], _info_for_table(info))
        _print_table(out)
    return status


def collect(experiment: catalogue.Experiment, data: str, out: str) -> int:
    """Writes the tables of the finished runs in `out` (the runs named in its experiment.json,
    else those of `--data`)."""
    info = _experiment_info(out)
    if info.get("experiment") not in (None, experiment.name):
        raise ValueError(f"{out} holds experiment {info['experiment']}, not {experiment.name}")
    runs = info.get("runs") or {
        r.name: dict(r.swept) for r in experiment.expand(runs_lib.Bases(data))
    }
    collect_lib.collect(experiment, out, runs, _info_for_table(info))
    _print_table(out)
    return 0


def _check_configs(
    bases: runs_lib.Bases, chosen: Sequence[runs_lib.Run], out: str, sets: dict[str, str]
) -> None:
    """Builds and validates every run's config before anything runs (bad --set values fail
    here, naming the key)."""
    from mbt import config_validation  # pylint: disable=g-import-not-at-top
    from mbt import sharding  # pylint: disable=g-import-not-at-top

    for r in chosen:
        config = runs_lib.build_config(bases, r, sets, {})
        config = runs_lib.build_config(bases, r, sets, runner.data_overrides(config, out))
        try:
            mesh = sharding.resolve_mesh_shape(config.get("mesh_shape"), jax.device_count())
            config_validation.validate_config(
                config, mesh_shape=mesh, process_count=jax.process_count()
            )
        except ValueError as error:
            raise ValueError(f"run {r.name}: {error}") from None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _flags()
    rest = cli.parse(args, argv, prog=_PROG, description=_DESCRIPTION, positional="COMMAND [NAME]")
    if not rest or rest[0] not in _COMMANDS:
        cli.usage_error(_PROG, f"give a command: one of {', '.join(_COMMANDS)}")
    command, names = rest[0], rest[1:]
    if command == "list":
        if names:
            cli.usage_error(_PROG, f"list takes no experiment name, got {names}")
        print(list_experiments())
        return 0
    if len(names) != 1:
        known = ", ".join(catalogue.EXPERIMENTS)
        cli.usage_error(_PROG, f"{command} takes one experiment name; known: {known}")
    try:
        experiment = catalogue.get(names[0])
        out = args.out or os.path.join(DEFAULT_OUT_ROOT, experiment.name)
        if command == "collect":
            return collect(experiment, args.data, out)
        sets = runs_lib.parse_set(args.set)
        missing = [d for d in args.reuse_from if not os.path.isdir(d)]
        if missing:
            raise ValueError(f"--reuse_from names folders that do not exist: {missing}")
        bases = runs_lib.Bases(args.data)
        chosen = runner.select(experiment.expand(bases), args.only)
        _check_configs(bases, chosen, out, sets)
    except (ValueError, FileNotFoundError) as error:
        cli.usage_error(_PROG, str(error))
    if command == "prepare":
        extra = runner.prepare_data(bases, chosen, out, sets)
        print(f"data ready: {extra or 'nothing to prepare (the runs read a built dataset)'}")
        return 0
    if args.dry_run:
        dry_run(experiment, bases, chosen, out, sets)
        return 0
    # The input pipeline and TensorFlow, unless the runs read random input (no dataset, no TF).
    first = runs_lib.build_config(bases, chosen[0], sets, {}) if chosen else None
    random = first is not None and random_input.enabled(first)
    startup.import_and_freeze(*(() if random else ("mbt.data.pipeline",)))
    return run(experiment, bases, chosen, out, sets, argv, args.reuse_from)


if __name__ == "__main__":
    _setup_logging()
    sys.exit(main())
