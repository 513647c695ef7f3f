"""Input throughput at MBT's shapes: clips per second and per CPU core.

    python scripts/benchmark_input.py [--num_clips=4] [--batches=24] [--workdir=DIR]
        [--grain_threads=N] [--rounds=1]

1. Writes a synthetic VGGSound copy at the stored resolution of the `default` builder
   config (10 s clips, 25 fps, short side 256 px, H.264 + AAC).
2. Build: times `media.read_frames` + `media.read_audio` + JPEG encoding per clip, and the
   whole TFDS build (`vggsound/default`, which does the same plus TFRecord writing).
3. Training pipeline: times `make_dataset(..., 'train')` batches at MBT's defaults (32 frames,
   stride 2, 224² crop from 256, 8 s audio → 800×128 log-mel, SpecAugment, flip, scale
   jitter; then also with colour augmentation): read + decode the needed JPEGs + log-mel +
   augment; through tf.data from the TFRecord build and through grain from the same clips
   built as ArrayRecord, with the ratio of their clips/s/core. Both read the files on every
   pass (`tfds_autocache=False`: TFDS would otherwise serve this small copy from memory).
4. Parsing one stored clip (`tf.train.Example` → tensors, frames left encoded): with TFDS's
   `SkipDecoding` for the frames and with the pipeline's decoder (`sources.encoded_frames`).

"Per core" divides clips by the CPU seconds the process used (user + system over all
threads), so it does not depend on how many cores were free.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _page_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class _Timer:
    """Wall and CPU seconds, and minor page faults, of a block."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), _cpu_seconds()
        self.faults = _page_faults()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = _cpu_seconds() - self.cpu
        self.faults = _page_faults() - self.faults


def _wait_until_idle(poll_s: float = 0.25, timeout_s: float = 60.0) -> None:
    """Returns once the process's threads have stopped working (a poll interval with under
    5 % of one core used), or after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        before = _cpu_seconds()
        time.sleep(poll_s)
        if _cpu_seconds() - before < 0.05 * poll_s:
            return


def _report(what: str, clips: int, timer: _Timer) -> None:
    print(
        f"{what:<68} {clips:3d} clips  {timer.wall:7.2f} s wall  {timer.cpu:7.2f} s CPU  "
        f"{clips / timer.wall:7.2f} clips/s  {clips / timer.cpu:7.2f} clips/s/core",
        flush=True,
    )


def _time_loader(loader: str, loader_config, color: bool, args) -> tuple[float, dict]:
    """Clips per CPU-second of `loader` over `args.batches` batches, and its first batch."""
    import numpy as np

    from mbt.data import pipeline

    stream = pipeline.make_dataset(
        loader_config, "train", "train", args.batch_size, seed=0, process_index=0,
        process_count=1,
    )  # fmt: skip
    with _Timer() as timer:
        first = next(stream)
    _report(f"{loader} train: first batch (tracing + warm-up)", args.batch_size, timer)
    # Timed from prefetch buffers full to prefetch buffers full: each loader works ahead of
    # its consumer by a different number of batches, which a window that starts or ends with
    # them partly empty would count for or against it.
    _wait_until_idle()
    with _Timer() as timer:
        for _ in range(args.batches):
            batch = next(stream)
        loop_wall = time.perf_counter() - timer.wall
        _wait_until_idle()
    timer.wall = loop_wall  # CPU seconds include the refill; wall seconds do not
    assert np.isfinite(batch["spectrogram"]).all()
    what = "flip, jitter, SpecAugment" + (", colour" if color else "")
    clips = args.batches * args.batch_size
    _report(f"{loader} train: read + JPEG + log-mel + {what}", clips, timer)
    print(f"{'':<68} {timer.faults / clips:9.0f} page faults per clip", flush=True)
    # Stop this stream's prefetching threads before timing the next one (they would share
    # the cores and count in its CPU seconds).
    del stream
    gc.collect()
    return clips / timer.cpu, first


def _time_parsing(data_dir: str, repeats: int = 36, rounds: int = 3) -> None:
    """CPU ms to parse one stored clip, frames left encoded, with TFDS's `SkipDecoding` and
    with the pipeline's decoder (alternating, same records), and their ratio."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from mbt.data import sources

    builder = sources.tfds_builder("vggsound", "default", data_dir)
    records = builder.as_data_source(
        split="train", deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES
    )
    serialized = [tf.constant(records[i]) for i in range(len(records))]
    features = builder.info.features
    decoders = {
        "TFDS SkipDecoding": tfds.decode.SkipDecoding(),
        "pipeline (sources.encoded_frames)": sources.encoded_frames(),
    }
    parsers = {
        name: tf.function(lambda s, d=decoder: features.deserialize_example(s, decoders={"rgb": d}))
        for name, decoder in decoders.items()
    }
    cpu_s = dict.fromkeys(parsers, 0.0)
    for parse in parsers.values():
        parse(serialized[0])  # traced outside the timing
    for _ in range(rounds):
        for name, parse in parsers.items():
            with _Timer() as timer:
                for k in range(repeats):
                    parse(serialized[k % len(serialized)])
            cpu_s[name] += timer.cpu
    per_clip_ms = {name: 1e3 * total / (repeats * rounds) for name, total in cpu_s.items()}
    for name, ms in per_clip_ms.items():
        print(f"parse one stored clip, frames encoded, {name:<38} {ms:6.2f} ms CPU")
    skip, ours = per_clip_ms.values()
    print(f"parse: pipeline / SkipDecoding CPU per clip: {ours / skip:.2f}")


def _flags():
    from absl import flags

    fv = flags.FlagValues()
    flags.DEFINE_integer("num_clips", 4, "synthetic clips to write and build", flag_values=fv)
    flags.DEFINE_integer("batches", 24, "timed training batches", flag_values=fv)
    flags.DEFINE_integer("batch_size", 4, "clips per training batch", flag_values=fv)
    flags.DEFINE_string("workdir", None, "default: a temporary directory", flag_values=fv)
    flags.DEFINE_integer(
        "grain_threads",
        None,
        "config.dataset.grain_threads of the grain loader (default: the config's, one per 4 "
        "cores, 1-4)",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "rounds",
        1,
        "timed rounds of both loaders (which goes first alternates); >1 also prints the median "
        "grain / tf.data ratio",
        flag_values=fv,
    )
    flags.DEFINE_bool(
        "keep_freed_buffers",
        True,
        "config.dataset.keep_freed_buffers of both loaders (glibc keeps freed buffers)",
        flag_values=fv,
    )
    return fv


def main(argv=None) -> None:
    from mbt import cli

    args = _flags()
    cli.parse(
        args, argv, prog="python scripts/benchmark_input.py", description=__doc__.splitlines()[0]
    )

    if args.rounds < 1:
        sys.exit(f"--rounds={args.rounds}: give 1 or more")

    import ml_collections
    import numpy as np
    import tensorflow as tf

    from mbt.data import media
    from mbt.data import pipeline
    from mbt.data import synthetic

    workdir = args.workdir or tempfile.mkdtemp(prefix="mbt_bench_")
    cores = len(os.sched_getaffinity(0))
    print(
        f"workdir {workdir}; {cores} CPU cores available; TF {tf.__version__}; load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    source_dir = os.path.join(workdir, "synthetic_src")

    summary_path = os.path.join(source_dir, synthetic.SUMMARY_FILE)
    if os.path.isfile(summary_path):  # reuse a copy from an earlier run with this workdir
        with open(summary_path) as f:
            summary = json.load(f)
    else:
        with _Timer() as timer:
            summary = synthetic.generate(
                "vggsound",
                source_dir,
                args.num_clips,
                seed=0,
                frame_size=256,
                fps=25.0,
                clip_seconds=10.0,
                edge_cases=False,
            )
        _report("write synthetic mp4s (10 s, 25 fps, 256 px, H.264+AAC)", args.num_clips, timer)

    # (a) Build: decode the segment at 25 fps / 256 px and 16 kHz, JPEG-encode the frames.
    paths = [os.path.join(source_dir, clip["path"]) for clip in summary["clips"]]
    with _Timer() as timer:
        for path in paths:
            frames = media.read_frames(path, 0.0, 10.0, fps=25.0, short_side=256)
            media.read_audio(path, 0.0, 10.0, sample_rate=16000)
            for frame in frames:
                tf.io.encode_jpeg(frame, quality=95).numpy()
    _report(
        f"build: read_frames + read_audio + JPEG ({frames.shape[0]} x {frames.shape[1]}"
        f"x{frames.shape[2]})",
        len(paths),
        timer,
    )

    config = ml_collections.ConfigDict({"dataset": pipeline.default_dataset_config()})
    # Both loaders read the files on every pass, as they do at full scale: TFDS would keep a
    # copy this small (under 250 MiB) in memory after its first pass and tf.data would time
    # reads from that cache.
    config.dataset.update(
        name="vggsound",
        builder_config="default",
        data_dir=os.path.join(workdir, "tfds"),
        tfds_autocache=False,
        keep_freed_buffers=args.keep_freed_buffers,
    )
    config.dataset.synthetic.update(
        num_clips=len(summary["clips"]),
        frame_size=256,
        fps=25.0,
        clip_seconds=10.0,
        edge_cases=False,
    )
    shutil.rmtree(config.dataset.data_dir, ignore_errors=True)  # always time a fresh build
    with _Timer() as timer:
        pipeline.prepare_dataset(config, workdir)  # the copy exists: only the TFDS build runs
    meta = pipeline.get_dataset_meta(config)
    built = sum(meta.num_examples.values())
    _report("build: whole TFDS build (vggsound/default)", built, timer)

    # The same clips built as ArrayRecord, which the grain loader reads.
    grain_config = config.copy_and_resolve_references()
    grain_config.dataset.update(
        file_format="array_record",
        data_dir=config.dataset.data_dir + "_ar",
        grain_threads=(
            config.dataset.grain_threads if args.grain_threads is None else args.grain_threads
        ),
    )
    shutil.rmtree(grain_config.dataset.data_dir, ignore_errors=True)
    with _Timer() as timer:
        pipeline.prepare_dataset(grain_config, workdir)
    _report("build: whole TFDS build as ArrayRecord (vggsound/default)", built, timer)

    _time_parsing(grain_config.dataset.data_dir)

    # (b) Training pipeline at MBT's shapes, with and without colour augmentation, through
    # tf.data (TFRecord) and grain (ArrayRecord).
    loaders = [("tf.data", config), ("grain", grain_config)]
    ratios: dict[bool, list[float]] = {False: [], True: []}
    for round_index in range(args.rounds):
        if args.rounds > 1:
            print(f"round {round_index + 1} of {args.rounds}")
        for color in (False, True):
            per_core = {}
            for loader, loader_config in loaders[:: -1 if round_index % 2 else 1]:
                loader_config.dataset.rgb_augment.color = color
                loader_config.dataset.loader = loader
                per_core[loader], first = _time_loader(loader, loader_config, color, args)
            ratios[color].append(per_core["grain"] / per_core["tf.data"])
            print(
                f"grain / tf.data clips/s/core{' with colour' if color else ''}: "
                f"{ratios[color][-1]:.2f}"
            )
    if args.rounds > 1:
        for color, values in ratios.items():
            print(
                f"median grain / tf.data clips/s/core{' with colour' if color else ''} over "
                f"{args.rounds} rounds: {np.median(values):.2f} (range {min(values):.2f}–"
                f"{max(values):.2f})"
            )
    print(f"batch shapes: { ({k: v.shape for k, v in first.items()}) }")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak_mb:.0f} MB; grain_threads={grain_config.dataset.grain_threads}")
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
