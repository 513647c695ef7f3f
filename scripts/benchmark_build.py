"""Dataset build throughput of both build paths, plain and Beam: clips/s and clips per core.

    python scripts/benchmark_build.py [--num_clips=32] [--small=4] [--workers=2] \
        [--repeats=2] [--workdir=DIR] [--out=FILE]

1. Writes a synthetic VGGSound copy at the `default` builder config's resolution (10 s
   clips, 25 fps, short side 256 px, H.264 + AAC, no edge cases) and a second manual dir
   holding the first `--small` of its clips.
2. Builds `vggsound/default` from each copy on each path, each build in its own process:
     plain              python -m mbt.data.builders --dataset=vggsound --config=default ...
     beam_in_memory     the same + --beam_pipeline_options=runner=DirectRunner,
                        direct_running_mode=in_memory (one process: Beam's own work)
     beam_multi_processing   ... direct_num_workers=W,direct_running_mode=multi_processing
                        (W worker processes; every element between stages, e.g. the
                        JPEG-encoded examples TFDS's writer shuffles, passes through the
                        launching process over gRPC)
   The builds alternate (all paths small, then all large), so the paths see the same load
   from other jobs.
3. CPU seconds of a build: user + system time of its process and of every process it
   waited for (the Beam workers), from `os.wait4`. "Per core" divides clips by CPU
   seconds, so it does not depend on how many cores were free. The marginal rate,
   (N_large - N_small) / (CPU_large - CPU_small), leaves out the start-up (imports, the
   workers' launch) that both sizes pay: it is the rate a large build runs at.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATHS = ("plain", "beam_in_memory", "beam_multi_processing")


def _flags():
    from absl import flags

    fv = flags.FlagValues()
    flags.DEFINE_integer("num_clips", 32, "clips of the large build", flag_values=fv)
    flags.DEFINE_integer("small", 4, "clips of the small build", flag_values=fv)
    flags.DEFINE_integer("workers", 2, "Beam DirectRunner worker processes", flag_values=fv)
    flags.DEFINE_integer(
        "repeats", 2, "times each build is run (the least CPU of them counts)", flag_values=fv
    )
    flags.DEFINE_string("workdir", None, "default: a temporary directory", flag_values=fv)
    flags.DEFINE_string("out", None, "also write the table (markdown) to this file", flag_values=fv)
    return fv


def _subset(manual_dir: str, clips: list[dict], out_dir: str) -> None:
    """A manual dir with only `clips`: their CSV rows, and links to their files."""
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    wanted = {clip["id"] for clip in clips}
    with open(os.path.join(manual_dir, "vggsound.csv"), newline="") as f:
        rows = [row for row in csv.reader(f) if f"{row[0]}_{int(row[1]):06d}" in wanted]
    with open(os.path.join(out_dir, "vggsound.csv"), "w", newline="") as f:
        csv.writer(f).writerows(rows)
    for clip in clips:
        link = os.path.join(out_dir, os.path.basename(clip["path"]))
        if not os.path.lexists(link):
            os.symlink(os.path.join(manual_dir, clip["path"]), link)


def build_command(manual_dir: str, data_dir: str, path: str, workers: int) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "mbt.data.builders",
        "--dataset=vggsound",
        "--config=default",
        f"--manual_dir={manual_dir}",
        f"--data_dir={data_dir}",
    ]
    if path == "beam_in_memory":
        command.append("--beam_pipeline_options=runner=DirectRunner,direct_running_mode=in_memory")
    elif path == "beam_multi_processing":
        command.append(
            "--beam_pipeline_options=runner=DirectRunner,"
            f"direct_num_workers={workers},direct_running_mode=multi_processing"
        )
    return command


def timed_run(command: list[str], log_path: str) -> tuple[float, float]:
    """Runs `command`; returns (wall seconds, CPU seconds of it and the processes it waited for)."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with open(log_path, "w") as log:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}); see {log_path}")
    return wall, usage.ru_utime + usage.ru_stime


def rates(clips: int, wall: float, cpu: float) -> dict:
    return {
        "clips": clips,
        "wall_s": wall,
        "cpu_s": cpu,
        "per_s": clips / wall,
        "per_core": clips / cpu,
    }


def marginal(small: dict, large: dict) -> float:
    """Clips per CPU-second of the clips the large build has beyond the small one."""
    return (large["clips"] - small["clips"]) / max(large["cpu_s"] - small["cpu_s"], 1e-9)


def table(results: dict, workers: int) -> str:
    lines = [
        "| path | clips | wall s | CPU s | clips/s | clips/s/core "
        "| marginal clips/s/core | vs plain |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    plain = marginal(results["plain"]["small"], results["plain"]["large"])
    for path in PATHS:
        name = path.replace("multi_processing", f"multi_processing ({workers} workers)")
        rate = marginal(results[path]["small"], results[path]["large"])
        for size in ("small", "large"):
            r = results[path][size]
            extra = f"{rate:.2f} | {rate / plain:.2f}" if size == "large" else " | "
            lines.append(
                f"| {name} | {r['clips']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
                f"{r['per_s']:.2f} | {r['per_core']:.2f} | {extra} |"
            )
    return "\n".join(lines)


def main(argv=None) -> None:
    from mbt import cli

    args = _flags()
    cli.parse(
        args, argv, prog="python scripts/benchmark_build.py", description=__doc__.splitlines()[0]
    )
    if not 0 < args.small < args.num_clips:
        cli.usage_error("benchmark_build.py", "need 0 < --small < --num_clips")

    from mbt.data import synthetic

    workdir = args.workdir or tempfile.mkdtemp(prefix="mbt_build_bench_")
    cores = len(os.sched_getaffinity(0))
    print(
        f"workdir {workdir}; {cores} CPU cores available; load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        flush=True,
    )
    large_dir = os.path.join(workdir, "manual_large")
    summary_path = os.path.join(large_dir, synthetic.SUMMARY_FILE)
    summary = None
    if os.path.isfile(summary_path):  # reuse a copy from an earlier run with this workdir
        with open(summary_path) as f:
            summary = json.load(f)
        if len(summary["clips"]) != args.num_clips:
            shutil.rmtree(large_dir)
            summary = None
    if summary is None:
        summary = synthetic.generate(
            "vggsound",
            large_dir,
            args.num_clips,
            seed=0,
            frame_size=256,
            fps=25.0,
            clip_seconds=10.0,
            edge_cases=False,
        )
    small_dir = os.path.join(workdir, "manual_small")
    _subset(large_dir, summary["clips"][: args.small], small_dir)
    sizes = {"small": (small_dir, args.small), "large": (large_dir, len(summary["clips"]))}

    results: dict = {path: {} for path in PATHS}
    for repeat in range(args.repeats):
        for size, (manual_dir, clips) in sizes.items():
            for path in PATHS:
                data_dir = os.path.join(workdir, f"tfds_{path}_{size}")
                shutil.rmtree(data_dir, ignore_errors=True)  # always time a fresh build
                command = build_command(manual_dir, data_dir, path, args.workers)
                log = os.path.join(workdir, f"{path}_{size}_{repeat}.log")
                wall, cpu = timed_run(command, log)
                print(
                    f"  {path:22s} {size:5s} {clips:3d} clips: {wall:6.1f} s wall, "
                    f"{cpu:6.1f} s CPU",
                    flush=True,
                )
                best = results[path].get(size)
                if best is None or cpu < best["cpu_s"]:  # least disturbed run
                    results[path][size] = rates(clips, wall, cpu)
    text = table(results, args.workers)
    print(text)
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
