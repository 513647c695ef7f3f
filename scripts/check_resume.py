"""Stop a run anywhere and resume it on another platform or device count: same parameters?

    # On a GPU node with JAX alone (no dataset, no TensorFlow): stop on the GPU, resume on CPU.
    python scripts/check_resume.py --config=configs/vggsound.py --first=gpu --then=cpu:1 \
        --set=dataset.random_input.enabled=True --set=model.variant=Ti/16 \
        --set=dataset.num_frames=8 --set=dataset.frame_size=112 --set=batch_size=8

    # Here (what tests/test_benchmarks.py runs): 1 CPU device, then 2.
    python scripts/check_resume.py --config=configs/synthetic.py:model=sft --first=cpu:1 \
        --then=cpu:2 --set=dataset.random_input.enabled=True --steps=12 --stop_after=4

Three `python -m mbt.main` runs of the same config, each in its own workdir under `--out`:
the reference trains `--steps` steps on `--first`; the second run, also on `--first`, gets
SIGTERM once its checkpoint at `--stop_after` is written, saves at the step it is at and exits
with status 75; it is then resumed on `--then` with `python -m mbt.main --workdir=...` alone
(the workdir's config), as a user would. The script prints the stop step, the relative L2
distance between the two runs' final parameters (read from their last checkpoints), and their
test metrics; it exits 1 when the distance exceeds `--tolerance` or a run misbehaves.

Platforms: `cpu:N` (N simulated devices), `gpu`, `tpu`. Every run computes float32 matmuls at
full precision (`JAX_DEFAULT_MATMUL_PRECISION=highest`, no TF32), and GPU runs with XLA's
deterministic ops, so that only the platforms' arithmetic differs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from mbt.pretrained import formats  # noqa: E402
from mbt.pretrained import train_state  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXIT_PREEMPTED = 75  # mbt.checkpointing.EXIT_PREEMPTED (imported there with orbax and jax)

_CONFIG = flags.DEFINE_string("config", None, "Config file[:arg], as for mbt.main.")
_SET = flags.DEFINE_multi_string("set", [], "key=value: a --config.key=value override.")
_STEPS = flags.DEFINE_integer("steps", 40, "Training steps of every run.")
_STOP_AFTER = flags.DEFINE_integer(
    "stop_after", 20, "SIGTERM once this step's checkpoint is written (also the interval)."
)
_FIRST = flags.DEFINE_string("first", "gpu", "Platform of the reference and the stopped run.")
_THEN = flags.DEFINE_string("then", "cpu:1", "Platform the stopped run resumes on.")
_TOLERANCE = flags.DEFINE_float(
    "tolerance", 1e-3, "Largest relative L2 distance of the final parameters that passes."
)
_OUT = flags.DEFINE_string("out", "", "Folder of the three workdirs ('' = a new temporary one).")
_TIMEOUT = flags.DEFINE_integer("timeout_s", 1800, "Time limit of each run, in seconds.")
flags.mark_flags_as_required(["config"])


def platform_env(platform: str) -> dict[str, str]:
    """The environment of a run on `platform` ('cpu:N', 'gpu', 'tpu')."""
    env = dict(os.environ, JAX_DEFAULT_MATMUL_PRECISION="highest")
    env.pop("XLA_FLAGS", None)
    name, _, count = platform.partition(":")
    if name == "cpu":
        env["JAX_PLATFORMS"] = "cpu"
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={int(count or 1)}"
    elif name == "gpu":
        env["JAX_PLATFORMS"] = "cuda"
        env["XLA_FLAGS"] = "--xla_gpu_deterministic_ops=true"
    elif name == "tpu":
        env["JAX_PLATFORMS"] = "tpu"
    else:
        raise app.UsageError(f"platform {platform!r}: use cpu:N, gpu or tpu")
    return env


def main_command(workdir: str, with_config: bool) -> list[str]:
    command = [sys.executable, "-m", "mbt.main", f"--workdir={workdir}"]
    if with_config:
        command.append(f"--config={_CONFIG.value}")
        command += [f"--config.{kv}" for kv in _SET.value]
        command += [
            f"--config.num_train_steps={_STEPS.value}",
            f"--config.checkpoint.every_steps={_STOP_AFTER.value}",
        ]
    return command


def run(command: list[str], platform: str, log: str) -> int:
    with open(log, "w") as out:
        return subprocess.run(
            command,
            env=platform_env(platform),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            timeout=_TIMEOUT.value,
        ).returncode


def committed(workdir: str, step: int) -> bool:
    return os.path.exists(os.path.join(workdir, "checkpoints", str(step), "_CHECKPOINT_METADATA"))


def run_and_stop(workdir: str, log: str) -> int:
    """Starts the run, sends SIGTERM once checkpoint `--stop_after` is written; its status."""
    with open(log, "w") as out:
        process = subprocess.Popen(
            main_command(workdir, with_config=True),
            env=platform_env(_FIRST.value),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        deadline = time.monotonic() + _TIMEOUT.value
        while not committed(workdir, _STOP_AFTER.value) and process.poll() is None:
            if time.monotonic() > deadline:
                process.kill()
                raise SystemExit(f"no checkpoint {_STOP_AFTER.value} in time; see {log}")
            time.sleep(0.05)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        return process.wait(timeout=_TIMEOUT.value)


def test_metrics(workdir: str) -> dict[str, float]:
    with open(os.path.join(workdir, "results_test.json")) as f:
        metrics = json.load(f)["metrics"]
    return {k: round(float(metrics[k]), 6) for k in ("top1", "map", "loss") if k in metrics}


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax's INFO lines while reading the checkpoints
    out = _OUT.value or tempfile.mkdtemp(prefix="mbt_check_resume_")
    os.makedirs(out, exist_ok=True)
    reference, moved = os.path.join(out, "reference"), os.path.join(out, "moved")
    logs = {name: os.path.join(out, f"{name}.log") for name in ("reference", "stop", "resume")}

    status = run(main_command(reference, with_config=True), _FIRST.value, logs["reference"])
    if status != 0:
        raise SystemExit(f"the reference run failed (status {status}); see {logs['reference']}")
    status = run_and_stop(moved, logs["stop"])
    if status == 0:
        raise SystemExit(
            f"the run to stop finished all {_STEPS.value} steps before the SIGTERM reached it "
            f"(sent once checkpoint {_STOP_AFTER.value} was written); give it more --steps"
        )
    if status != EXIT_PREEMPTED:
        raise SystemExit(
            f"the stopped run exited {status}, not {EXIT_PREEMPTED} (SIGTERM after its "
            f"checkpoint {_STOP_AFTER.value}); see {logs['stop']}"
        )
    with open(logs["stop"]) as f:
        stopped_at = int(re.findall(r"stopped at step (\d+) on SIGTERM", f.read())[-1])
    status = run(main_command(moved, with_config=False), _THEN.value, logs["resume"])
    if status != 0:
        raise SystemExit(f"the resumed run failed (status {status}); see {logs['resume']}")

    a = formats.flatten(train_state.read_params(reference).params)
    b = formats.flatten(train_state.read_params(moved).params)
    difference = np.sqrt(sum(np.sum((a[k].astype(np.float64) - b[k]) ** 2) for k in a))
    size = np.sqrt(sum(np.sum(a[k].astype(np.float64) ** 2) for k in a))
    relative = float(difference / size)
    largest = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
    print(
        f"| {_FIRST.value} reference, {_STEPS.value} steps | stopped at step {stopped_at} on "
        f"{_FIRST.value}, resumed on {_THEN.value} |"
    )
    print("|---|---|")
    print(f"| test {test_metrics(reference)} | test {test_metrics(moved)} |")
    print(
        f"parameters: relative L2 distance {relative:.3g}, largest difference {largest:.3g} "
        f"({len(a)} arrays); tolerance {_TOLERANCE.value:g}; workdirs in {out}"
    )
    if not relative <= _TOLERANCE.value:
        raise SystemExit(1)


if __name__ == "__main__":
    app.run(main)
