"""Command line: `python -m mbt.main [--config=<file.py[:arg]>] --workdir=DIR [--mode=...]`.

    python -m mbt.main --config=configs/synthetic.py --workdir=/tmp/mbt_demo
    python -m mbt.main --config=configs/audioset.py:split=mini --workdir=/ckpt/as_mini \
        --config.batch_size=32 --config.dataset.data_dir=/data/tfds
    python -m mbt.main --workdir=/ckpt/as_mini --mode=test
    python -m mbt.main --workdir=/ckpt/as_mini --mode=robustness
    # process 1 of 2 (process 0 runs the same with --process_id=0); see README "Multi-host"
    python -m mbt.main --config=... --workdir=/shared/run \
        --coordinator_address=10.0.0.2:8476 --num_processes=2 --process_id=1

Config files define `get_config(arg=None)`; `--config.<key>=<value>` overrides any key.
Training writes the resolved config to `<workdir>/config.json`; without `--config` every mode
uses that file (`--mode=train` resumes with it). A `--config` that changes the model or
optimizer structure of a trained workdir is refused before anything is restored
(`mbt.workdir`).
`--mode=train` trains (resuming from the workdir's checkpoints), evaluates and tests, holding
`<workdir>/train.lock` so that a second training run on the workdir stops at once;
`evaluate` / `test` restore the latest checkpoint and run the single-view eval / multi-view
test (without the lock: a workdir still training can be evaluated); `robustness` restores it
and evaluates under white noise at several SNRs and with a modality removed
(`mbt.robustness`, docs/models.md). A checkpoint fault (none restores, a write failed, the
workdir is locked) ends the command with one `error: ...` message and exit status 1. A
SIGTERM (to any one process of a multi-process run) makes training save a checkpoint and stop
with exit status 75 (checkpointing.EXIT_PREEMPTED); the same command resumes. See docs/training.md.
Several processes (`mbt.launch`): `--coordinator_address`, `--num_processes`, `--process_id`
(and `--local_device_ids`) on every process, or nothing under SLURM / Open MPI / Cloud TPU
(auto-detected); inconsistent values stop the command (status 2) before anything starts.
"""

import gc
import logging
import os
import sys

if __name__ == "__main__":
    gc.disable()  # until mbt.startup.import_and_freeze: collections walking the imports cost ~0.5 s

import jax
from absl import app
from absl import flags
from ml_collections import config_flags

from mbt import checkpointing
from mbt import cli
from mbt import config_validation
from mbt import launch
from mbt import robustness
from mbt import sharding
from mbt import siblings
from mbt import startup
from mbt import train
from mbt import workdir as workdir_lib
from mbt.data import random_input

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Config file: path/to/config.py or path/to/config.py:arg. Default: <workdir>/config.json, "
    "written by training.",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, logs and results go here.")
_MODE = flags.DEFINE_enum(
    "mode",
    "train",
    config_validation.MODES + ("robustness",),
    "train: train + evaluate + test; evaluate / test: restore the latest "
    "checkpoint of --workdir and run the eval / multi-view test; "
    "robustness: evaluate it under input noise and missing modalities.",
)
_LIBRARY_LOGS = flags.DEFINE_bool(
    "library_logs",
    False,
    "Show the INFO logs of orbax and TFDS (absl's logger) and the DEBUG metric lines; by "
    "default only mbt's own progress lines and the libraries' warnings are shown.",
)
_COORDINATOR_ADDRESS = flags.DEFINE_string(
    "coordinator_address",
    None,
    "Several processes: host:port of process 0 (a free port), the same on every process. "
    "Default: $JAX_COORDINATOR_ADDRESS, or auto-detected under SLURM / Open MPI / Cloud TPU.",
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes",
    None,
    "Several processes: how many, the same on every process (1 = a single process, no "
    "auto-detection). Default: $JAX_NUM_PROCESSES, or auto-detected.",
)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id",
    None,
    "Several processes: this process's id in 0..num_processes-1 (0 runs the coordinator). "
    "Default: $JAX_PROCESS_ID, or auto-detected.",
)
_LOCAL_DEVICE_IDS = flags.DEFINE_list(
    "local_device_ids",
    None,
    "Several processes: the local accelerators this process uses, e.g. 0,1 (one process per "
    "GPU: its GPU's number). Default: $JAX_LOCAL_DEVICE_IDS, else all (jax's default).",
)
_INITIALIZATION_TIMEOUT_S = flags.DEFINE_integer(
    "initialization_timeout_s",
    300,
    "Several processes: seconds to wait for all processes to join before giving up.",
)
flags.mark_flags_as_required(["workdir"])

_LOG = logging.getLogger("mbt.main")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.getLogger("mbt").setLevel(logging.INFO)
    if not _LIBRARY_LOGS.value:
        logging.getLogger("absl").setLevel(logging.WARNING)
    else:
        logging.getLogger("mbt.summaries").setLevel(logging.DEBUG)  # the metric lines
    try:  # before any other JAX call
        launch_spec = launch.resolve(
            _COORDINATOR_ADDRESS.value,
            _NUM_PROCESSES.value,
            _PROCESS_ID.value,
            _LOCAL_DEVICE_IDS.value,
            _INITIALIZATION_TIMEOUT_S.value,
        )
    except launch.LaunchError as error:
        cli.usage_error("python -m mbt.main", str(error))
    try:
        launch.initialize(launch_spec)
    except launch.LaunchError as error:
        sys.exit(f"error: {error}")
    _LOG.info("Topology (%s launch): %s", launch_spec.mode, launch.topology())
    # Fail before any data is read, anything restored or compiled.
    try:
        config = workdir_lib.resolve_config(_CONFIG.value, _WORKDIR.value)
    except (FileNotFoundError, workdir_lib.ConfigMismatchError) as error:
        sys.exit(f"error: {error}")
    mesh_shape = sharding.resolve_mesh_shape(config.get("mesh_shape"), jax.device_count())
    config_validation.validate_config(
        config, mesh_shape=mesh_shape, process_count=jax.process_count()
    )
    _LOG.info(
        "Config file %s, workdir %s, mode %s",
        config_flags.get_config_filename(flags.FLAGS["config"])
        if _CONFIG.value is not None
        else workdir_lib.config_path(_WORKDIR.value),
        _WORKDIR.value,
        _MODE.value,
    )
    # The input pipeline and TensorFlow, unless the input is random (no dataset, no TF).
    startup.import_and_freeze(*(() if random_input.enabled(config) else ("mbt.data.pipeline",)))
    try:
        _run_mode(config)
    except checkpointing.CheckpointError as error:  # its message says what to do
        sys.exit(f"error: {error}")


def _run_mode(config):
    if _MODE.value == "robustness":
        report = robustness.run_robustness(config, _WORKDIR.value)
        print(robustness.markdown_table(report), flush=True)
        return
    if _MODE.value != "train":
        train.evaluate(config, _WORKDIR.value, _MODE.value)
        return
    result = train.train_and_evaluate(config, _WORKDIR.value)
    if result["stopped_early"]:
        print(
            f"stopped at step {result['step']} on SIGTERM after saving a checkpoint; run the "
            f"same command to resume (exit status {checkpointing.EXIT_PREEMPTED})",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(checkpointing.EXIT_PREEMPTED)
    if config.get("siblings"):
        overrides = (
            config_flags.get_override_values(flags.FLAGS["config"])
            if _CONFIG.value is not None
            else {}
        )
        table = siblings.train_siblings(config, _WORKDIR.value, result, overrides)
        print(table, flush=True)
        print(f"(written to {os.path.join(_WORKDIR.value, 'comparison.md')})", flush=True)


def _one_line(error: BaseException) -> str:
    """ml_collections' message without its repr quoting and escaped newlines."""
    text = str(error).strip().strip("'\"").replace("\\n", " ").replace("\\'", "'")
    return " ".join(text.split())


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, except that a `--config.<key>=<value>` override naming no config key, or
    with a value of the wrong type, exits with one line (and status 2) instead of a chained
    ml_collections traceback."""
    try:
        return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        overrides = [a for a in argv[1:] if a.startswith("--config.")]
        what = "no such key: " if isinstance(error, (AttributeError, KeyError)) else ""
        cli.usage_error(
            "python -m mbt.main", f"bad config override in {overrides}: {what}{_one_line(error)}"
        )


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
