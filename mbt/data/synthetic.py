"""Small local copies of AudioSet, VGGSound and EPIC-Kitchens-100 in their real on-disk layouts.

    python -m mbt.data.synthetic --dataset=audioset|vggsound|epic_kitchens --out=DIR --num_clips=N

The files (CSV formats, comment lines, quoting, line endings, file names, folder nesting)
match what users hold, so the TFDS builders are tested on the same formats they meet in
practice; the clips are tiny (default 64 px short side, 10 fps, 2 s) and made up. VGGSound
labels are official class names (the builder's default configs accept no others); AudioSet
and EPIC class lists are made up but have the official sizes (527; 97 verbs, 300 nouns).

Learnable signal. Class c is the pair (visual pattern v(c), tone a(c)) on a V x A grid,
V = ceil(sqrt(N)), A = ceil(N / V), v(c) = c mod V, a(c) = c div V (N = number of classes).
- Visual pattern p: a drifting sine grating of colour hue p / V (full saturation) at
  orientation p * 180 / V degrees, over a grey background. Per clip: random grey level,
  pixel noise, grating brightness, period, drift speed and phase, orientation jitter
  (+-10 degrees). The mean colour of a clip identifies p, even after H.264/HEVC, JPEG and
  downscaling to 32 px.
- Tone q: a sine at tone_hz[q], A frequencies geometrically spaced over 300 Hz - 3 kHz
  (well apart in mel), with random amplitude, phase and slow amplitude modulation per clip,
  over white noise of random level.
Classes sharing v differ only in tone and vice versa: rgb alone can reach about 1/A
accuracy, audio alone about 1/V, both together ~100 %. AudioSet clips carry 1-2 labels; the
clip's picture and sound are then the sums of both classes' gratings and tones. EPIC videos
hold several narrated segments, each with the grating of its verb (verb class = v) and the
tone of its noun (noun class = a); between segments only background. `generate` returns
(and writes to `synthetic_summary.json`) the grid, colours, orientations and tone frequencies.

Edge cases (`edge_cases=True`; extra rows, not counted in `num_clips`, listed by kind in
the summary): `missing_file` (row without a file), `no_audio` (mp4 without an audio stream),
`undecodable` (random bytes under the right name), `clip_shorter_than_segment` (the file
ends before the row's segment does) and, for AudioSet, `short_segment` (rows of 60-80 % of
the clip length, among the regular clips, with files to match).
"""

from __future__ import annotations

import colorsys
import csv
import dataclasses
import inspect
import json
import math
import os
import string

import numpy as np
from absl import flags

from mbt import cli
from mbt.data import media
from mbt.data import registry
from mbt.data.builders import vggsound_spec

EDGE_KINDS = ("missing_file", "no_audio", "undecodable", "clip_shorter_than_segment")
SUMMARY_FILE = "synthetic_summary.json"

AUDIOSET_NUM_CLASSES = 527
VGGSOUND_NUM_CLASSES = vggsound_spec.NUM_CLASSES
AUDIOSET_SPLITS = ("balanced_train", "eval", "unbalanced_train")
AUDIOSET_CLIP_NAME = "{ytid}_{start_ms}_{end_ms}.mp4"  # audiosetdl-style, integer ms
# Alternatives seen in the wild: "{ytid}_{start:06d}_{end:06d}.mp4", "{ytid}.mp4",
# "Y{ytid}.wav" (audio only); pass one as `clip_name_format`.
VGGSOUND_ARCHIVE_DIR = "scratch/shared/beegfs/hchen/train_data/VGGSound_final/video"
EPIC_NUM_VERBS, EPIC_NUM_NOUNS = 97, 300
EPIC_HEADER = (
    "narration_id,participant_id,video_id,narration_timestamp,start_timestamp,"
    "stop_timestamp,start_frame,stop_frame,narration,verb,verb_class,noun,"
    "noun_class,all_nouns,all_noun_classes"
).split(",")
EPIC_SEGMENTS_PER_VIDEO = 5
EPIC_HDF5_FILE = "EPIC-KITCHENS-100_audio.hdf5"
EPIC_HDF5_RATE = 24000

YOUTUBE_AUDIO_RATE = 22050  # not 16 kHz, so readers resample; low enough for fast AAC
EPIC_AUDIO_RATE = 48000
_YTID_CHARS = string.ascii_letters + string.digits + "-_"
_PRESET = "ultrafast"  # x264/x265 speed: these clips are throw-away test data

# Official VGGSound class names the synthetic copy uses first (the first has a comma, so
# the CSV quotes it); more classes take the other official names in sorted order.
_VGGSOUND_NAMES = (
    "bird chirping, tweeting",
    "church bell ringing",
    "dog barking",
    "playing piano",
    "owl hooting",
    "typing on typewriter",
    "raining",
    "wind chime",
    "underwater bubbling",
    "goat bleating",
    "people whistling",
    "cat meowing",
)
_AUDIOSET_NAMES = (
    "Humming kettle",
    "Marble roll",
    "Bell, bicycle",
    "Paper tear",
    "Owl hoot",
    "Typewriter",
    "Rain on roof",
    "Zipper",
    "Bubbles, underwater",
    "Wind chime",
    "Coin drop",
    "Goat bleat",
)
_VERBS = ("grab", "rinse", "stir", "slice", "pour", "fold", "shake", "peel", "wipe", "lift")
_VERB_CATEGORIES = ("retrieve", "clean", "mix", "cut", "move", "leave")
_NOUNS = (
    "pan",
    "bowl",
    "knife",
    "tap",
    "lid:pan",
    "sponge",
    "cup",
    "board:chopping",
    "spoon",
    "jar",
)
_NOUN_CATEGORIES = ("cookware", "utensils", "appliances", "cutlery", "containers")


# ----------------------------------------------------------------------------------------
# The learnable signal


@dataclasses.dataclass(frozen=True)
class ClassGrid:
    """Class c <-> (visual pattern c mod V, tone c div V); see the module docstring."""

    num_classes: int

    @property
    def num_patterns(self) -> int:
        return math.ceil(math.sqrt(self.num_classes))

    @property
    def num_tones(self) -> int:
        return math.ceil(self.num_classes / self.num_patterns)

    def pattern(self, c: int) -> int:
        return c % self.num_patterns

    def tone(self, c: int) -> int:
        return c // self.num_patterns

    def colour(self, p: int) -> tuple[float, float, float]:
        """RGB in [0, 1] of visual pattern p."""
        return colorsys.hsv_to_rgb(p / self.num_patterns, 1.0, 1.0)

    def orientation_deg(self, p: int) -> float:
        return p * 180.0 / self.num_patterns

    def tone_hz(self, q: int) -> float:
        if self.num_tones == 1:
            return 1000.0
        return float(np.geomspace(300.0, 3000.0, self.num_tones)[q])

    def describe(self, names: list[str]) -> dict:
        return {
            "rule": "class c = (visual pattern c % V, tone c // V)",
            "num_visual_patterns": self.num_patterns,
            "num_tones": self.num_tones,
            "classes": [
                {
                    "index": c,
                    "name": names[c],
                    "visual_pattern": self.pattern(c),
                    "tone": self.tone(c),
                }
                for c in range(self.num_classes)
            ],
            "patterns": [
                {
                    "colour_rgb": [round(x, 4) for x in self.colour(p)],
                    "orientation_deg": self.orientation_deg(p),
                }
                for p in range(self.num_patterns)
            ],
            "tones_hz": [round(self.tone_hz(q), 2) for q in range(self.num_tones)],
        }


@dataclasses.dataclass
class Event:
    """Time span `[start_s, stop_s)` showing `patterns` and sounding `tones`."""

    start_s: float
    stop_s: float
    patterns: list[int]
    tones: list[int]


def render_frames(
    grid: ClassGrid,
    events: list[Event],
    num_frames: int,
    fps: float,
    height: int,
    width: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """uint8 frames `[num_frames, height, width, 3]`: noisy grey plus each active grating."""
    times = np.arange(num_frames) / fps
    scale = min(height, width) / 64.0
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    x, y = x.astype(np.float32), y.astype(np.float32)
    grey = rng.uniform(50, 110)
    frames = np.full((num_frames, height, width, 3), grey, np.float32)
    frames += rng.uniform(3, 8) * rng.standard_normal(frames.shape, dtype=np.float32)
    for event in events:
        # Events are time intervals: the active frames are one slice.
        lo, hi = np.searchsorted(times, [event.start_s, event.stop_s], side="left")
        if lo >= hi:
            continue
        for p in event.patterns:
            theta = np.deg2rad(grid.orientation_deg(p) + rng.uniform(-10, 10))
            period = rng.uniform(10, 18) * scale
            speed = rng.uniform(0.5, 1.5) * rng.choice([-1, 1])  # cycles per second
            phase = (rng.uniform(0, 2 * np.pi) + 2 * np.pi * speed * times[lo:hi]).astype(
                np.float32
            )
            field = (2 * np.pi / period) * (x * np.cos(theta) + y * np.sin(theta))
            grating = np.sin(field[None] + phase[:, None, None]) * 0.5 + 0.5
            strength = rng.uniform(0.55, 0.9) * 150.0 / len(event.patterns)
            colour = np.asarray(grid.colour(p), np.float32) * np.float32(strength)
            frames[lo:hi] += grating[..., None] * colour
    np.clip(frames, 0, 255, out=frames)
    return (frames + 0.5).astype(np.uint8)


def render_audio(
    grid: ClassGrid, events: list[Event], seconds: float, sample_rate: int, rng: np.random.Generator
) -> np.ndarray:
    """float32 mono `[round(seconds * sample_rate)]`: white noise plus each active tone."""
    # All random parameters are drawn before the noise, so one generator state renders the
    # same sound at any sample rate (EPIC's mp4 audio and its 24 kHz HDF5 copy).
    noise_level = rng.uniform(0.005, 0.03)
    tones = [
        (
            event,
            q,
            rng.uniform(0.15, 0.35) / len(event.tones),
            rng.uniform(0.5, 3),
            rng.uniform(0, 2 * np.pi),
            rng.uniform(0, 2 * np.pi),
        )
        for event in events
        for q in event.tones
    ]
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    audio = rng.normal(0, noise_level, t.shape)
    for event, q, amplitude, wobble_hz, wobble_phase, phase in tones:
        active = (t >= event.start_s) & (t < event.stop_s)
        ramp = np.clip(np.minimum(t - event.start_s, event.stop_s - t) / 0.01, 0, 1)
        wobble = 1 + 0.3 * np.sin(2 * np.pi * wobble_hz * t + wobble_phase)
        tone = np.sin(2 * np.pi * grid.tone_hz(q) * t + phase)
        audio += np.where(active, amplitude * wobble * ramp * tone, 0.0)
    return np.clip(audio, -1, 1).astype(np.float32)


# ----------------------------------------------------------------------------------------
# Shared helpers


# Random stream of each generator (fixed: the same seed gives the same copy as before).
_RNG_STREAMS = {"audioset": 0, "vggsound": 1, "epic_kitchens": 2}


def _clip_rng(seed: int, dataset: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _RNG_STREAMS[dataset], index])


def datasets() -> tuple[str, ...]:
    """Names of the registered datasets that have a synthetic generator."""
    return tuple(n for n in registry.names() if registry.get(n).synthetic)


def _even(x: float) -> int:
    return max(2, int(round(x / 2.0)) * 2)


def _ytids(rng: np.random.Generator, count: int) -> list[str]:
    """Unique 11-character YouTube ids; every fourth starts with '-'."""
    ids: list[str] = []
    seen: set[str] = set()
    while len(ids) < count:
        ytid = "".join(rng.choice(list(_YTID_CHARS), 11))
        if len(ids) % 4 == 1:
            ytid = "-" + ytid[1:]
        if ytid not in seen:
            seen.add(ytid)
            ids.append(ytid)
    return ids


def _write_media(
    path: str,
    grid: ClassGrid,
    events: list[Event],
    seconds: float,
    fps: float,
    height: int,
    width: int,
    rng: np.random.Generator,
    *,
    with_audio: bool = True,
    audio_rate: int = YOUTUBE_AUDIO_RATE,
    video_codec: str = "h264",
) -> None:
    """Render and write one clip (mp4, or audio-only wav when `path` ends in .wav)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    frames = render_frames(grid, events, int(round(seconds * fps)), fps, height, width, rng)
    audio = render_audio(grid, events, seconds, audio_rate, rng)
    if path.lower().endswith(".wav"):
        media.write_wav(path, audio, audio_rate)
    else:
        media.write_clip(
            path,
            frames,
            fps,
            audio if with_audio else None,
            audio_rate,
            video_codec,
            preset=_PRESET,
        )


def _write_garbage(path: str, rng: np.random.Generator) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())


def _edge_plan(edge_cases: bool) -> list[str]:
    return list(EDGE_KINDS) if edge_cases else []


def _check_args(dataset, num_clips, num_classes, frame_size, fps, clip_seconds) -> None:
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if dataset == "audioset" and num_classes is not None and num_classes > AUDIOSET_NUM_CLASSES:
        raise ValueError(f"num_classes={num_classes} > {AUDIOSET_NUM_CLASSES} AudioSet classes")
    if dataset == "vggsound" and num_classes is not None and num_classes > VGGSOUND_NUM_CLASSES:
        raise ValueError(f"num_classes={num_classes} > {VGGSOUND_NUM_CLASSES} VGGSound classes")
    if frame_size < 16 or frame_size % 2:
        raise ValueError(f"frame_size must be even and >= 16, got {frame_size}")
    if fps <= 0 or clip_seconds < 0.5:
        raise ValueError(f"need fps > 0 and clip_seconds >= 0.5, got {fps}, {clip_seconds}")


# ----------------------------------------------------------------------------------------
# VGGSound


def _vggsound_names(num_classes: int) -> list[str]:
    """`num_classes` official VGGSound class names, sorted (their order in the official list)."""
    official = vggsound_spec.official_class_names()
    names = list(_VGGSOUND_NAMES) + [n for n in official if n not in _VGGSOUND_NAMES]
    return sorted(names[:num_classes])


def generate_vggsound(
    out_dir, num_clips, *, seed, num_classes, frame_size, fps, clip_seconds, edge_cases
) -> dict:
    names = _vggsound_names(num_classes or 6)
    grid = ClassGrid(len(names))
    height, width = frame_size, _even(frame_size * 4 / 3)
    edges = _edge_plan(edge_cases)
    rng = np.random.default_rng([seed, 1])
    ytids = _ytids(rng, num_clips + len(edges))
    starts = rng.integers(0, 300, num_clips + len(edges))
    order = rng.permutation(num_clips)
    clips = []
    for i in range(num_clips + len(edges)):
        edge = edges[i - num_clips] if i >= num_clips else None
        c = int(order[i] % grid.num_classes) if edge is None else i % grid.num_classes
        # Every fourth clip of a class is a test clip; edge cases alternate train/test.
        if edge is None:
            split = "test" if (order[i] // grid.num_classes) % 4 == 3 else "train"
        else:
            split = ("train", "test")[i % 2]
        ytid, start = ytids[i], int(starts[i])
        name = f"{ytid}_{start:06d}.mp4"
        part = f"vggsound_{i % 2:02d}"
        clips.append(
            {
                "id": f"{ytid}_{start:06d}",
                "ytid": ytid,
                "start_s": float(start),
                "end_s": float(start + clip_seconds),
                "split": split,
                "labels": [c],
                "label_names": [names[c]],
                "path": os.path.join(part, VGGSOUND_ARCHIVE_DIR, name),
                "file_seconds": (
                    round(0.6 * clip_seconds, 3)
                    if edge == "clip_shorter_than_segment"
                    else clip_seconds
                ),
                "has_audio": True,
                "edge_case": edge,
            }
        )
    for i, clip in enumerate(clips):
        _write_youtube_clip(
            out_dir,
            clip,
            grid,
            fps,
            height,
            width,
            clip["file_seconds"],
            _clip_rng(seed, "vggsound", i),
        )
    csv_path = os.path.join(out_dir, "vggsound.csv")
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\r\n")
        for clip in sorted(clips, key=lambda r: r["ytid"]):
            writer.writerow(
                [clip["ytid"], int(clip["start_s"]), clip["label_names"][0], clip["split"]]
            )
    return _youtube_summary(
        "vggsound",
        out_dir,
        grid,
        names,
        clips,
        {"csv": csv_path},
        frame_size,
        fps,
        clip_seconds,
        seed,
    )


# ----------------------------------------------------------------------------------------
# AudioSet


def _audioset_ontology(rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """527 (mid, display name) pairs: made up, unique, some names with commas."""
    names = list(_AUDIOSET_NAMES)
    for i in range(len(names), AUDIOSET_NUM_CLASSES):
        names.append(f"Synthetic sound {i}, variant" if i % 9 == 4 else f"Synthetic sound {i}")
    mids: list[str] = []
    seen: set[str] = set()
    chars = string.ascii_lowercase + string.digits
    while len(mids) < AUDIOSET_NUM_CLASSES:
        k = len(mids)
        if k % 11 == 7:
            mid = f"/t/dd{rng.integers(0, 10**5):05d}"
        elif k % 13 == 5:
            mid = "/g/11" + "".join(rng.choice(list(chars), 6))
        else:
            mid = "/m/0" + "".join(rng.choice(list(chars), int(rng.integers(3, 6))))
        if mid not in seen:
            seen.add(mid)
            mids.append(mid)
    return mids, names


def _audioset_clip_name(fmt: str, ytid: str, start_s: float, end_s: float) -> str:
    try:
        return fmt.format(
            ytid=ytid,
            start_ms=int(round(start_s * 1000)),
            end_ms=int(round(end_s * 1000)),
            start=int(start_s),
            end=int(end_s),
        )
    except (KeyError, ValueError, IndexError) as e:
        raise ValueError(
            f"clip_name_format={fmt!r}: fields are ytid, start_ms, end_ms, start, end ({e})"
        ) from e


def generate_audioset(
    out_dir,
    num_clips,
    *,
    seed,
    num_classes,
    frame_size,
    fps,
    clip_seconds,
    edge_cases,
    clip_name_format=None,
) -> dict:
    rng = np.random.default_rng([seed, 0])
    mids, all_names = _audioset_ontology(rng)
    grid = ClassGrid(num_classes or 6)
    height, width = frame_size, _even(frame_size * 4 / 3)
    edges = _edge_plan(edge_cases)
    total = num_clips + len(edges)
    ytids = _ytids(rng, total)
    fmt = clip_name_format or AUDIOSET_CLIP_NAME
    short_rows = {1, num_clips - 1} if edge_cases and num_clips > 2 else set()
    clips = []
    for i in range(total):
        edge = edges[i - num_clips] if i >= num_clips else None
        c = i % grid.num_classes
        labels = [c]
        if grid.num_classes > 1 and rng.random() < 0.35:
            labels.append(int((c + rng.integers(1, grid.num_classes)) % grid.num_classes))
        round_index = i // grid.num_classes
        if edge is not None:
            split = AUDIOSET_SPLITS[i % 2]
        elif round_index % 4 == 3:
            split = "eval"
        elif round_index % 4 == 2 and i % 2 == 0:
            split = "unbalanced_train"
        else:
            split = "balanced_train"
        start = float(rng.integers(0, 30) * 10)
        seconds = clip_seconds
        if i in short_rows:
            seconds = round(clip_seconds * rng.uniform(0.6, 0.8), 3)
        end = start + seconds
        file_seconds = seconds
        if edge == "clip_shorter_than_segment":
            file_seconds = round(0.6 * seconds, 3)
        name = _audioset_clip_name(fmt, ytids[i], start, end)
        clips.append(
            {
                "id": ytids[i],
                "ytid": ytids[i],
                "start_s": start,
                "end_s": end,
                "split": split,
                "labels": labels,
                "label_names": [all_names[c] for c in labels],
                "mids": [mids[c] for c in labels],
                "path": os.path.join(split, name),
                "file_seconds": file_seconds,
                "has_audio": True,
                "edge_case": edge or ("short_segment" if i in short_rows else None),
            }
        )
    for i, clip in enumerate(clips):
        _write_youtube_clip(
            out_dir,
            clip,
            grid,
            fps,
            height,
            width,
            clip["file_seconds"],
            _clip_rng(seed, "audioset", i),
        )
    files = {
        "class_labels_indices": os.path.join(out_dir, "class_labels_indices.csv"),
        "ontology": os.path.join(out_dir, "ontology.json"),
    }
    with open(files["class_labels_indices"], "w", newline="") as f:
        f.write("index,mid,display_name\n")
        for k, (mid, name) in enumerate(zip(mids, all_names)):
            f.write(f'{k},{mid},"{name}"\n')
    with open(files["ontology"], "w") as f:
        json.dump(
            [
                {
                    "id": mid,
                    "name": name,
                    "description": f"Made-up class {name}.",
                    "citation_uri": "",
                    "positive_examples": [],
                    "child_ids": [],
                    "restrictions": [],
                }
                for mid, name in zip(mids, all_names)
            ],
            f,
            indent=1,
        )
    for split in AUDIOSET_SPLITS:
        rows = [clip for clip in clips if clip["split"] == split]
        files[split] = os.path.join(out_dir, f"{split}_segments.csv")
        positives = sum(len(r["mids"]) for r in rows)
        unique = len({m for r in rows for m in r["mids"]})
        with open(files[split], "w", newline="") as f:
            f.write("# Segments csv created Sun Mar  5 10:54:31 2017\n")
            f.write(
                f"# num_ytids={len(rows)}, num_segs={len(rows)}, num_unique_labels={unique}"
                f", num_positive_labels={positives}\n"
            )
            f.write("# YTID, start_seconds, end_seconds, positive_labels\n")
            for r in rows:
                f.write(
                    f'{r["ytid"]}, {r["start_s"]:.3f}, {r["end_s"]:.3f}, "{",".join(r["mids"])}"\n'
                )
    summary = _youtube_summary(
        "audioset",
        out_dir,
        grid,
        all_names[: grid.num_classes],
        clips,
        files,
        frame_size,
        fps,
        clip_seconds,
        seed,
    )
    summary["clip_name_format"] = fmt
    summary["mids"] = mids[: grid.num_classes]
    return summary


# ----------------------------------------------------------------------------------------
# YouTube-style clip writing and summaries (AudioSet, VGGSound)


def _write_youtube_clip(out_dir, clip, grid, fps, height, width, seconds, rng) -> None:
    path = os.path.join(out_dir, clip["path"])
    if clip["edge_case"] == "missing_file":
        return
    if clip["edge_case"] == "undecodable":
        _write_garbage(path, rng)
        return
    event = Event(
        0.0,
        seconds,
        [grid.pattern(c) for c in clip["labels"]],
        [grid.tone(c) for c in clip["labels"]],
    )
    clip["has_audio"] = clip["edge_case"] != "no_audio"
    _write_media(
        path, grid, [event], seconds, fps, height, width, rng, with_audio=clip["has_audio"]
    )


def _youtube_summary(
    dataset, out_dir, grid, names, clips, files, frame_size, fps, clip_seconds, seed
) -> dict:
    splits = sorted({c["split"] for c in clips})
    return {
        "dataset": dataset,
        "root": os.path.abspath(out_dir),
        "seed": seed,
        "frame_size": frame_size,
        "fps": fps,
        "clip_seconds": clip_seconds,
        "audio_sample_rate": YOUTUBE_AUDIO_RATE,
        "class_names": list(names),
        "num_classes": grid.num_classes,
        "class_construction": grid.describe(list(names)),
        "files": {k: os.path.abspath(v) for k, v in files.items()},
        "clips": clips,
        "counts": {
            "rows": len(clips),
            "regular_clips": sum(c["edge_case"] in (None, "short_segment") for c in clips),
            "files_on_disk": sum(c["edge_case"] != "missing_file" for c in clips),
            **{f"rows_{s}": sum(c["split"] == s for c in clips) for s in splits},
        },
        "edge_cases": _edge_index(clips, "id"),
    }


def _edge_index(records: list[dict], key: str) -> dict:
    kinds: dict[str, list[str]] = {}
    for r in records:
        if r.get("edge_case"):
            kinds.setdefault(r["edge_case"], []).append(r[key])
    return kinds


# ----------------------------------------------------------------------------------------
# EPIC-Kitchens-100


def _hms(seconds: float, decimals: int) -> str:
    """00:01:02.35-style timestamp."""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    width = 3 + decimals if decimals else 2
    return f"{int(hours):02d}:{int(minutes):02d}:{secs:0{width}.{decimals}f}"


def _epic_class_rows(keys, pool_categories, count) -> list[list]:
    """`id, key, instances, category` rows; instances is a Python list literal."""
    rows = []
    for k in range(count):
        key = keys[k] if k < len(keys) else f"thing{k}" if count > 100 else f"act{k}"
        base = key.split(":")[0]
        instances = [key, f"{base}-up", f"{base} again"] if k % 3 else [key]
        rows.append([k, key, repr(instances), pool_categories[k % len(pool_categories)]])
    return rows


def _epic_video_plan(num_segments: int):
    """(video_id, participant, fps, codec, nominal frame rate, split) per regular video."""
    num_videos = math.ceil(num_segments / EPIC_SEGMENTS_PER_VIDEO)
    num_val = 0 if num_videos < 2 else max(1, round(num_videos / 4))
    plan = []
    for v in range(num_videos):
        participant = f"P{v // 3 + 1:02d}"
        kind = v % 3  # EPIC-55 at 59.94, extension (HEVC, 50 fps), EPIC-55 at 29.97
        if kind == 1:
            video_id, fps, codec, nominal = f"{participant}_{101 + v}", 50.0, "hevc", 50
        else:
            fps = 59.94 if kind == 0 else 29.97
            video_id, codec, nominal = f"{participant}_{11 + v}", "h264", 60
        split = "validation" if v >= num_videos - num_val else "train"
        plan.append((video_id, participant, fps, codec, nominal, split))
    return plan


def generate_epic(
    out_dir,
    num_clips,
    *,
    seed,
    num_classes,
    frame_size,
    fps=None,
    clip_seconds=None,
    edge_cases,
    hdf5_audio=False,
) -> dict:
    """EPIC videos have their own rates and lengths: `fps` and `clip_seconds` are unused."""

    rng = np.random.default_rng([seed, 2])
    grid = ClassGrid(num_classes or 6)
    if grid.num_patterns > EPIC_NUM_VERBS or grid.num_tones > EPIC_NUM_NOUNS:
        raise ValueError(f"num_classes={num_classes} needs more verbs/nouns than EPIC has")
    verb_rows = _epic_class_rows(_VERBS, _VERB_CATEGORIES, EPIC_NUM_VERBS)
    noun_rows = _epic_class_rows(_NOUNS, _NOUN_CATEGORIES, EPIC_NUM_NOUNS)
    height, width = frame_size, _even(frame_size * 16 / 9)
    plan = _epic_video_plan(num_clips)
    segments, videos, audio_tracks = [], [], {}
    action = 0

    def add_segment(video_id, participant, split, nominal, start, stop, c, k, edge=None):
        verb, noun = grid.pattern(c), grid.tone(c)
        nouns = [noun]
        if k % 4 == 2:  # some narrations mention a second noun: the list gets a comma
            nouns.append(int(grid.num_tones + k % 7))
        narration_s = max(0.0, start - float(rng.uniform(0, 0.4)))
        segments.append(
            {
                "narration_id": f"{video_id}_{k}",
                "participant_id": participant,
                "video_id": video_id,
                "split": split,
                "start_s": start,
                "stop_s": stop,
                "narration_timestamp": "" if k % 5 == 3 else _hms(narration_s, 3),
                "start_frame": max(1, int(round(start * nominal))),
                "stop_frame": int(round(stop * nominal)),
                "verb_class": verb,
                "noun_class": noun,
                "all_noun_classes": nouns,
                "action": c,
                "edge_case": edge,
            }
        )

    def timeline(count):
        """Segment (start, stop) pairs in 0.01 s steps, with background gaps between."""
        t, spans = 0.3, []
        for _ in range(count):
            length = round(float(rng.uniform(0.6, 1.6)), 2)
            spans.append((round(t, 2), round(t + length, 2)))
            t += length + float(rng.uniform(0.2, 0.5))
        return spans, round(t + 0.1, 2)

    remaining = num_clips
    extra = (
        [
            ("P07_09", "P07", 59.94, "h264", 60, "train", "no_audio"),
            ("P08_104", "P08", 50.0, "hevc", 50, "validation", "undecodable"),
            ("P09_02", "P09", 59.94, "h264", 60, "train", "missing_file"),
        ]
        if edge_cases
        else []
    )
    for index, (video_id, participant, fps, codec, nominal, split, *edge) in enumerate(
        [p + (None,) for p in plan] + extra
    ):
        edge = edge[0]
        count = min(EPIC_SEGMENTS_PER_VIDEO, remaining) if edge is None else 2
        remaining -= count if edge is None else 0
        spans, duration = timeline(count)
        first_segment = len(segments)
        for k, (start, stop) in enumerate(spans):
            add_segment(
                video_id,
                participant,
                split,
                nominal,
                start,
                stop,
                action % grid.num_classes,
                k,
                edge,
            )
            action += 1
        if edge_cases and index == 0:
            # The last narration runs past the end of the first video.
            start = duration + 0.2
            duration = round(start + 0.6, 2)
            add_segment(
                video_id,
                participant,
                split,
                nominal,
                round(start, 2),
                round(start + 1.5, 2),
                action % grid.num_classes,
                len(spans),
                "clip_shorter_than_segment",
            )
            action += 1
        path = os.path.join(participant, "videos", f"{video_id}.MP4")
        video = {
            "video_id": video_id,
            "participant_id": participant,
            "path": path,
            "fps": fps,
            "codec": codec,
            "duration_s": duration,
            "split": split,
            "has_audio": edge != "no_audio",
            "width": width,
            "height": height,
            "edge_case": edge,
        }
        videos.append(video)
        clip_rng = _clip_rng(seed, "epic_kitchens", index)
        events = [
            Event(s["start_s"], s["stop_s"], [s["verb_class"]], [s["noun_class"]])
            for s in segments[first_segment:]
        ]
        full_path = os.path.join(out_dir, path)
        if edge == "missing_file":
            continue
        if edge == "undecodable":
            _write_garbage(full_path, clip_rng)
            continue
        os.makedirs(os.path.dirname(full_path), exist_ok=True)
        frames = render_frames(
            grid, events, int(round(duration * fps)), fps, height, width, clip_rng
        )
        audio_rng = np.random.default_rng([seed, 2, index, 1])
        audio = render_audio(grid, events, duration, EPIC_AUDIO_RATE, audio_rng)
        media.write_clip(
            full_path,
            frames,
            fps,
            audio if video["has_audio"] else None,
            EPIC_AUDIO_RATE,
            codec,
            preset=_PRESET,
        )
        if video["has_audio"] and hdf5_audio:
            # The same sound at 24 kHz, as in the HDF5 alternative.
            audio_tracks[video_id] = render_audio(
                grid, events, duration, EPIC_HDF5_RATE, np.random.default_rng([seed, 2, index, 1])
            )
        video["duration_s"] = round(media.probe(full_path).duration_s, 6)

    files = _write_epic_csvs(out_dir, segments, videos, verb_rows, noun_rows)
    if hdf5_audio:
        import h5py  # only needed for this optional file

        files["audio_hdf5"] = os.path.join(out_dir, EPIC_HDF5_FILE)
        with h5py.File(files["audio_hdf5"], "w") as f:
            for video_id, track in audio_tracks.items():
                f.create_dataset(video_id, data=track)
    verbs_used = {grid.pattern(c) for c in range(grid.num_classes)}
    nouns_used = {grid.tone(c) for c in range(grid.num_classes)}
    construction = grid.describe(
        [
            f"{verb_rows[grid.pattern(c)][1]} {noun_rows[grid.tone(c)][1]}"
            for c in range(grid.num_classes)
        ]
    )
    construction["rule"] += "; verb_class = visual pattern, noun_class = tone"
    return {
        "dataset": "epic_kitchens",
        "root": os.path.abspath(out_dir),
        "seed": seed,
        "frame_size": frame_size,
        "audio_sample_rate": EPIC_AUDIO_RATE,
        "hdf5_sample_rate": EPIC_HDF5_RATE if hdf5_audio else None,
        "num_classes": grid.num_classes,
        "class_construction": construction,
        "verb_classes_used": sorted(verbs_used),
        "noun_classes_used": sorted(nouns_used),
        "files": {k: os.path.abspath(v) for k, v in files.items()},
        "videos": videos,
        "segments": segments,
        "counts": {
            "videos": len(videos),
            "segments": len(segments),
            "regular_segments": sum(s["edge_case"] is None for s in segments),
            **{
                f"segments_{s}": sum(x["split"] == s for x in segments)
                for s in ("train", "validation")
            },
        },
        "edge_cases": {
            **_edge_index(videos, "video_id"),
            **_edge_index(
                [s for s in segments if s["edge_case"] == "clip_shorter_than_segment"],
                "narration_id",
            ),
        },
    }


def _write_epic_csvs(out_dir, segments, videos, verb_rows, noun_rows) -> dict:
    files = {
        "train": os.path.join(out_dir, "EPIC_100_train.csv"),
        "validation": os.path.join(out_dir, "EPIC_100_validation.csv"),
        "verb_classes": os.path.join(out_dir, "EPIC_100_verb_classes.csv"),
        "noun_classes": os.path.join(out_dir, "EPIC_100_noun_classes.csv"),
        "video_info": os.path.join(out_dir, "EPIC_100_video_info.csv"),
    }
    for split in ("train", "validation"):
        with open(files[split], "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(EPIC_HEADER)
            for s in segments:
                if s["split"] != split:
                    continue
                verb, noun = verb_rows[s["verb_class"]][1], noun_rows[s["noun_class"]][1]
                all_nouns = [noun_rows[n][1] for n in s["all_noun_classes"]]
                writer.writerow(
                    [
                        s["narration_id"],
                        s["participant_id"],
                        s["video_id"],
                        s["narration_timestamp"],
                        _hms(s["start_s"], 2),
                        _hms(s["stop_s"], 2),
                        s["start_frame"],
                        s["stop_frame"],
                        f"{verb} {noun.split(':')[0]}",
                        verb,
                        s["verb_class"],
                        noun,
                        s["noun_class"],
                        repr(all_nouns),
                        repr(s["all_noun_classes"]),
                    ]
                )
    for name, rows in (("verb_classes", verb_rows), ("noun_classes", noun_rows)):
        with open(files[name], "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["id", "key", "instances", "category"])
            writer.writerows(rows)
    with open(files["video_info"], "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["video_id", "duration", "fps", "resolution"])
        for v in videos:
            fps = float(media._fraction_rate(v["fps"]))
            writer.writerow([v["video_id"], v["duration_s"], fps, f"{v['width']}x{v['height']}"])
    return files


# ----------------------------------------------------------------------------------------
# Entry points


def generate(
    dataset: str,
    out_dir: str,
    num_clips: int,
    *,
    seed: int = 0,
    num_classes: int | None = None,
    frame_size: int = 64,
    fps: float = 10.0,
    clip_seconds: float = 2.0,
    edge_cases: bool = True,
    hdf5_audio: bool = False,
    clip_name_format: str | None = None,
) -> dict:
    """Write a synthetic copy of `dataset` under `out_dir`; returns (and saves as
    `synthetic_summary.json`) what was written: files, classes, clips/segments, counts and
    edge cases. `num_clips` counts regular clips (EPIC: narrated segments); `num_classes`
    defaults to 6 (EPIC: verb x noun actions). `fps` and `clip_seconds` apply to the
    YouTube sets (EPIC videos have their own rates and lengths). `hdf5_audio` (EPIC) also
    writes EPIC-KITCHENS-100_audio.hdf5; `clip_name_format` (AudioSet) picks the file names.
    The generator is the dataset spec's `synthetic` (mbt.data.registry).
    """
    spec = registry.get(dataset)
    if spec.synthetic is None:
        raise ValueError(
            f"dataset={dataset!r} has no synthetic generator; those that do: {datasets()}"
        )
    _check_args(dataset, num_clips, num_classes, frame_size, fps, clip_seconds)
    os.makedirs(out_dir, exist_ok=True)
    generator = registry.load(spec.synthetic)
    # Dataset-specific options go only to generators that take them (others ignore them).
    accepted = inspect.signature(generator).parameters
    options = {
        k: v
        for k, v in (("hdf5_audio", hdf5_audio), ("clip_name_format", clip_name_format))
        if v and k in accepted
    }
    summary = generator(
        out_dir,
        num_clips,
        seed=seed,
        num_classes=num_classes,
        frame_size=frame_size,
        fps=fps,
        clip_seconds=clip_seconds,
        edge_cases=edge_cases,
        **options,
    )
    with open(os.path.join(out_dir, SUMMARY_FILE), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def _flags() -> flags.FlagValues:
    """The CLI's flags, on their own `FlagValues` (see `mbt.cli`)."""
    fv = flags.FlagValues()
    flags.DEFINE_enum("dataset", None, datasets(), "dataset layout to write", flag_values=fv)
    flags.DEFINE_string("out", None, "output directory", flag_values=fv)
    flags.DEFINE_integer("num_clips", 24, "clips to write", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "random seed", flag_values=fv)
    flags.DEFINE_integer("num_classes", None, "classes (default: the dataset's)", flag_values=fv)
    flags.DEFINE_integer("frame_size", 64, "frame height and width in pixels", flag_values=fv)
    flags.DEFINE_float("fps", 10.0, "frames per second", flag_values=fv)
    flags.DEFINE_float("clip_seconds", 2.0, "clip length in seconds", flag_values=fv)
    flags.DEFINE_bool("no_edge_cases", False, "write no edge-case rows", flag_values=fv)
    flags.DEFINE_bool(
        "hdf5_audio", False, "EPIC: also write EPIC-KITCHENS-100_audio.hdf5", flag_values=fv
    )
    flags.DEFINE_string(
        "clip_name_format", None, "AudioSet: file name format of the clips", flag_values=fv
    )
    flags.mark_flags_as_required(["dataset", "out"], flag_values=fv)
    return fv


def main(argv: list[str] | None = None) -> None:
    args = _flags()
    cli.parse(args, argv, prog="python -m mbt.data.synthetic", description=__doc__.splitlines()[0])
    summary = generate(
        args.dataset,
        args.out,
        args.num_clips,
        seed=args.seed,
        num_classes=args.num_classes,
        frame_size=args.frame_size,
        fps=args.fps,
        clip_seconds=args.clip_seconds,
        edge_cases=not args.no_edge_cases,
        hdf5_audio=args.hdf5_audio,
        clip_name_format=args.clip_name_format,
    )
    print(f"wrote a synthetic {args.dataset} copy to {summary['root']}")
    for key, path in summary["files"].items():
        print(f"  {key}: {path}")
    print(f"  classes: {summary['num_classes']}  counts: {summary['counts']}")
    print(f"  edge cases: {summary['edge_cases']}")
    print(f"  summary: {os.path.join(summary['root'], SUMMARY_FILE)}")


if __name__ == "__main__":
    main()
