"""Sounding objects: an embedded audio-visual benchmark that needs fusion by construction.

    python -m mbt.data.synthetic --dataset=sounding_objects --out=DIR --num_clips=2400
    tfds build mbt/data/builders/sounding_objects.py --manual_dir=DIR --data_dir=OUT

Construction (one clip; defaults in brackets):
- N object types [4], each a coloured square with its own colour and its own place in the
  frame (types are laid out on a grid; with N = 4 one per quadrant). A clip shows K distinct
  types [2] drawn uniformly, on a dark noisy background, at `fps` [10] for `clip_seconds` [3.2].
- Each shown object pulses at its own random frames: in every frame it is bright with
  probability p [0.4], else dim. Pulses last one frame.
- The sound is a burst of decaying white noise at every pulse of exactly one of the shown
  objects — the sounding object — over faint noise. Every object sounds the same (same
  envelope, same timbre, random loudness per burst).
- The label is the type of the sounding object, uniform among the K shown.
- Files: `clips/<id>.mp4` (H.264 + AAC, 16 kHz mono), `sounding_objects.csv` with rows
  `clip_id,split,label,shown` (label and shown as object names, `shown` joined by ';') and a
  header line, `classes.txt` (one object name per line; the line number is the class index).

What each input can know:
- Video alone sees which K objects are present but not which sounds: best top-1 = 1/K [0.5].
- Audio alone hears when the sounding object pulses but not what it is: 1/N [0.25].
- Late fusion (averaged per-modality logits) adds a video score and an audio score per
  class; neither can tell which shown object matches the sound, so it stays at 1/K.
- A model whose audio and video tokens interact can match the burst times to one object's
  pulse times and reach ~1.0 (two objects' pulse patterns over an 8-frame window coincide
  with probability (p² + (1-p)²)⁸ ≈ 0.4 %).
Any window of the clip follows the same rule, so random training windows are fresh examples.
"""

from __future__ import annotations

import colorsys
import csv
import dataclasses
import logging
import math
import os
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from mbt.data import media
from mbt.data import synthetic
from mbt.data.builders import base
from mbt.data.builders import common

CSV_NAME = "sounding_objects.csv"
CLASSES_NAME = "classes.txt"
CLIP_DIR = "clips"
SPLITS = ("train", "test")
CSV_HEADER = ("clip_id", "split", "label", "shown")
SHOWN_SEPARATOR = ";"
AUDIO_RATE = common.AUDIO_SAMPLE_RATE

DEFAULT_NUM_OBJECTS = 4
DEFAULT_NUM_SHOWN = 2
DEFAULT_PULSE_PROBABILITY = 0.4
DEFAULT_FPS = 10.0
DEFAULT_CLIP_SECONDS = 3.2
DEFAULT_FRAME_SIZE = 32
TEST_FRACTION = 0.2

_COLOUR_NAMES = ("red", "green", "blue", "yellow", "magenta", "cyan", "orange", "white")
_HUES = {
    "red": 0.0,
    "green": 1 / 3,
    "blue": 2 / 3,
    "yellow": 1 / 6,
    "magenta": 5 / 6,
    "cyan": 1 / 2,
    "orange": 1 / 12,
}
_BURST_DELAY_S = 0.02  # burst onset after the frame starts: keeps it inside the frame's time
_BURST_DECAY_S = 0.012
_BURST_SECONDS = 0.06

_LOG = logging.getLogger(__name__)


def object_names(num_objects: int) -> list[str]:
    """Class names: '<colour> square', in class-index order."""
    if not 2 <= num_objects <= len(_COLOUR_NAMES):
        raise ValueError(f"num_objects={num_objects} must be in [2, {len(_COLOUR_NAMES)}]")
    return [f"{colour} square" for colour in _COLOUR_NAMES[:num_objects]]


def _colour(index: int) -> np.ndarray:
    name = _COLOUR_NAMES[index]
    if name == "white":
        return np.ones(3, np.float32)
    return np.asarray(colorsys.hsv_to_rgb(_HUES[name], 1.0, 1.0), np.float32)


def _layout(num_objects: int, size: int) -> list[tuple[int, int, int]]:
    """(top, left, side) in pixels of each object type's square on a `size`² frame."""
    cells = math.ceil(math.sqrt(num_objects))
    cell = size // cells
    side = max(2, int(cell * 0.6))
    margin = (cell - side) // 2
    return [
        ((i // cells) * cell + margin, (i % cells) * cell + margin, side)
        for i in range(num_objects)
    ]


@dataclasses.dataclass(frozen=True)
class ClipPlan:
    """One clip: which objects are shown, which one sounds, and when each pulses."""

    clip_id: str
    split: str
    shown: tuple[int, ...]
    sounding: int
    pulses: np.ndarray  # bool [len(shown), num_frames]


def plan_clip(
    rng: np.random.Generator,
    clip_id: str,
    split: str,
    num_objects: int,
    num_shown: int,
    num_frames: int,
    pulse_probability: float,
) -> ClipPlan:
    shown = tuple(int(i) for i in np.sort(rng.choice(num_objects, num_shown, replace=False)))
    sounding = shown[int(rng.integers(num_shown))]
    pulses = rng.random((num_shown, num_frames)) < pulse_probability
    return ClipPlan(clip_id, split, shown, sounding, pulses)


def render_frames(plan: ClipPlan, num_objects: int, size: int, rng: np.random.Generator):
    """uint8 `[num_frames, size, size, 3]`: noisy dark background, each shown object's
    square dim (30 % of its colour) or, in its pulse frames, at full brightness."""
    num_frames = plan.pulses.shape[1]
    frames = rng.normal(40.0, 6.0, (num_frames, size, size, 3)).astype(np.float32)
    layout = _layout(num_objects, size)
    for row, obj in enumerate(plan.shown):
        top, left, side = layout[obj]
        brightness = np.where(plan.pulses[row], 1.0, 0.3).astype(np.float32)
        patch = brightness[:, None, None, None] * _colour(obj) * 215.0
        frames[:, top : top + side, left : left + side, :] += patch
    return np.clip(frames + 0.5, 0, 255).astype(np.uint8)


def render_audio(plan: ClipPlan, fps: float, rng: np.random.Generator) -> np.ndarray:
    """float32 `[round(num_frames / fps * 16000)]`: faint noise plus one decaying noise burst
    (random loudness) at each pulse frame of the sounding object."""
    num_frames = plan.pulses.shape[1]
    audio = rng.normal(0.0, 0.01, int(round(num_frames / fps * AUDIO_RATE)))
    burst_len = int(_BURST_SECONDS * AUDIO_RATE)
    envelope = np.exp(-np.arange(burst_len) / (_BURST_DECAY_S * AUDIO_RATE))
    row = plan.shown.index(plan.sounding)
    for frame in np.flatnonzero(plan.pulses[row]):
        start = int(round((frame / fps + _BURST_DELAY_S) * AUDIO_RATE))
        stop = min(start + burst_len, audio.size)
        burst = rng.uniform(0.2, 0.35) * envelope * rng.standard_normal(burst_len)
        audio[start:stop] += burst[: stop - start]
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


def generate(
    out_dir: str,
    num_clips: int,
    *,
    seed: int = 0,
    num_classes: int | None = None,
    frame_size: int = DEFAULT_FRAME_SIZE,
    fps: float = DEFAULT_FPS,
    clip_seconds: float = DEFAULT_CLIP_SECONDS,
    edge_cases: bool = False,
    num_shown: int = DEFAULT_NUM_SHOWN,
    pulse_probability: float = DEFAULT_PULSE_PROBABILITY,
) -> dict:
    """Writes `num_clips` clips (a fifth of them test clips), the CSV and the class list under
    `out_dir` (see the module docstring); returns a summary of what was written.

    `num_classes` is the number of object types N (default 4). `edge_cases` adds one row of
    each kind of `mbt.data.synthetic.EDGE_KINDS` (missing or undecodable file: skipped and
    counted by the builder; no audio stream, file shorter than the clip: kept and counted).
    """
    num_objects = num_classes or DEFAULT_NUM_OBJECTS
    names = object_names(num_objects)
    if not 1 <= num_shown <= num_objects:
        raise ValueError(f"num_shown={num_shown} must be in [1, num_objects={num_objects}]")
    if not 0.0 < pulse_probability < 1.0:
        raise ValueError(f"pulse_probability={pulse_probability} must be in (0, 1)")
    num_frames = int(round(clip_seconds * fps))
    num_test = int(round(num_clips * TEST_FRACTION)) if num_clips > 1 else 0
    kinds: list[str | None] = [None] * num_clips + (
        list(synthetic.EDGE_KINDS) if edge_cases else []
    )
    os.makedirs(os.path.join(out_dir, CLIP_DIR), exist_ok=True)
    clips: list[dict[str, Any]] = []
    for i, kind in enumerate(kinds):
        if kind is None:
            split = "test" if i >= num_clips - num_test else "train"
        else:
            split = SPLITS[i % 2]
        rng = np.random.default_rng([seed, 7, i])
        frames = num_frames if kind != "clip_shorter_than_segment" else int(0.6 * num_frames)
        plan = plan_clip(
            rng, f"clip{i:06d}", split, num_objects, num_shown, frames, pulse_probability
        )
        path = os.path.join(CLIP_DIR, plan.clip_id + ".mp4")
        if kind == "undecodable":
            with open(os.path.join(out_dir, path), "wb") as f:
                f.write(rng.bytes(2048))
        elif kind != "missing_file":
            media.write_clip(
                os.path.join(out_dir, path),
                render_frames(plan, num_objects, frame_size, rng),
                fps,
                None if kind == "no_audio" else render_audio(plan, fps, rng),
                AUDIO_RATE,
                crf=12,
                preset="ultrafast",
            )
        clips.append(
            {
                "id": plan.clip_id,
                "path": path,
                "split": split,
                "start_s": 0.0,
                "end_s": clip_seconds,
                "labels": [plan.sounding],
                "label_names": [names[plan.sounding]],
                "shown": [names[i] for i in plan.shown],
                "edge_case": kind,
            }
        )
    with open(os.path.join(out_dir, CLASSES_NAME), "w", encoding="utf-8") as f:
        f.write("".join(name + "\n" for name in names))
    with open(os.path.join(out_dir, CSV_NAME), "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(CSV_HEADER)
        for clip in clips:
            shown = SHOWN_SEPARATOR.join(clip["shown"])
            writer.writerow([clip["id"], clip["split"], clip["label_names"][0], shown])
    regular = [c for c in clips if c["edge_case"] is None]
    return {
        "dataset": "sounding_objects",
        "root": os.path.abspath(out_dir),
        "seed": seed,
        "num_classes": num_objects,
        "class_names": names,
        "construction": {
            "num_objects": num_objects,
            "num_shown": num_shown,
            "pulse_probability": pulse_probability,
            "fps": fps,
            "clip_seconds": clip_seconds,
            "frame_size": frame_size,
            "chance_top1": {"rgb": 1 / num_shown, "audio": 1 / num_objects, "late": 1 / num_shown},
        },
        "files": {
            "csv": os.path.abspath(os.path.join(out_dir, CSV_NAME)),
            "classes": os.path.abspath(os.path.join(out_dir, CLASSES_NAME)),
        },
        "clips": clips,
        "counts": {split: sum(c["split"] == split for c in regular) for split in SPLITS},
        "edge_cases": {c["edge_case"]: [c["id"]] for c in clips if c["edge_case"]},
    }


# ----------------------------------------------------------------------------------------
# Reading the files back


@dataclasses.dataclass(frozen=True)
class ClipRow:
    clip_id: str
    split: str
    label: str
    shown: tuple[str, ...]
    line: int


def read_class_names(path: str, encoding: str = common.DEFAULT_ENCODING) -> list[str]:
    """Object names of `classes.txt`, one per non-blank line, in class-index order."""
    names = [line.strip() for line in common.read_text(path, encoding).splitlines()]
    names = [name for name in names if name]
    if len(names) < 2 or len(set(names)) != len(names):
        raise ValueError(f"{path}: needs at least 2 distinct class names, found {names}")
    return names


def read_rows(
    path: str, names: list[str], encoding: str = common.DEFAULT_ENCODING
) -> list[ClipRow]:
    """Rows of `sounding_objects.csv` (header `clip_id,split,label,shown`).

    Raises:
      MalformedCsvError: wrong field count, unknown split or object name, or a label that is
        not among the row's shown objects.
    """
    known = set(names)
    rows: list[ClipRow] = []
    for row in common.read_csv(path, CSV_HEADER, headers=(CSV_HEADER,), encoding=encoding):
        clip_id, split, label, shown_field = row.fields
        shown = tuple(s.strip() for s in shown_field.split(SHOWN_SEPARATOR) if s.strip())
        if split not in SPLITS:
            raise row.error(f"split {split!r} is not one of {SPLITS}")
        unknown = [n for n in (label, *shown) if n not in known]
        if unknown:
            raise row.error(f"object names {unknown} are not in {CLASSES_NAME} {names}")
        if label not in shown:
            raise row.error(f"label {label!r} is not one of the shown objects {shown}")
        rows.append(ClipRow(clip_id, split, label, shown, row.line))
    if not rows:
        raise common.MalformedCsvError(path, 1, "no rows")
    return rows


@dataclasses.dataclass(eq=False)
class SoundingObjectsConfig(base.MediaConfig):
    """`base.MediaConfig` with the clip length read from each file (from its start) and the
    number of object types N (`classes.txt` must list `object_names(num_classes)`)."""

    clip_seconds: float = DEFAULT_CLIP_SECONDS
    num_classes: int = DEFAULT_NUM_OBJECTS


class SoundingObjects(base.ManualMediaBuilder):
    """Sounding-objects clips as RGB frames + 16 kHz waveform; label = the sounding object."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [
        SoundingObjectsConfig(
            name="default",
            fps=DEFAULT_FPS,
            short_side=DEFAULT_FRAME_SIZE,
            description="10 fps, 32 px frames, 3.2 s clips (the generator's defaults).",
        )
    ]
    DEFAULT_CONFIG_NAME = "default"
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Generate the files (nothing to download):
    python -m mbt.data.synthetic --dataset=sounding_objects --out=DIR --num_clips=2400
  which writes {CSV_NAME}, {CLASSES_NAME} and {CLIP_DIR}/<clip_id>.mp4 into DIR.
  """

    def _info(self) -> tfds.core.DatasetInfo:
        names = object_names(self.builder_config.num_classes)  # classes.txt is checked against
        return self.dataset_info_from_configs(
            features=base.media_features(
                label=tfds.features.ClassLabel(names=names),
                shown=tfds.features.Sequence(tfds.features.Text()),
            ),
            supervised_keys=None,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        manual_dir = os.fspath(dl_manager.manual_dir)
        config: SoundingObjectsConfig = self.builder_config
        classes_path = common.require_file(os.path.join(manual_dir, CLASSES_NAME), "class list")
        names = read_class_names(classes_path, config.csv_encoding)
        expected = object_names(config.num_classes)
        if names != expected:
            raise ValueError(
                f"{classes_path} lists {names}, but builder config {config.name!r} has "
                f"num_classes={config.num_classes}: {expected}. Generate the clips with "
                f"--num_classes={config.num_classes}, or build a config with "
                f"num_classes={len(names)}, e.g. "
                f'--config=\'{{"name": "n{len(names)}", "num_classes": {len(names)}}}\'.'
            )
        csv_path = common.require_file(os.path.join(manual_dir, CSV_NAME), "CSV")
        rows = read_rows(csv_path, names, config.csv_encoding)
        self._label_index = {name: i for i, name in enumerate(names)}
        self._clip_index = self._index_files(manual_dir, (".mp4",))
        return self._make_splits(
            manual_dir, {split: [r for r in rows if r.split == split] for split in SPLITS}
        )

    def _locate(self, row: ClipRow) -> base.LocatedRow:
        filename = row.clip_id + ".mp4"
        return base.LocatedRow(
            row, row.clip_id, self._clip_index.get(filename), f"{filename} not found"
        )

    def _clip_reader(self) -> SoundingObjectsClips:
        return SoundingObjectsClips(self.builder_config, self._manual_dir, self._label_index)


class SoundingObjectsClips(base.ClipReader):
    """The first `clip_seconds` of each clip, its label and shown objects."""

    def __init__(self, config: SoundingObjectsConfig, manual_dir: str, label_index: dict[str, int]):
        super().__init__(config, manual_dir)
        self.label_index = label_index

    def example(self, located: base.LocatedRow, path: str, report: common.BuildReport):
        config: SoundingObjectsConfig = self.config
        segment = base.decode_segment(path, located.name, 0.0, config.clip_seconds, config, report)
        if segment is None:
            return None
        assert located.relative_path is not None  # `read` skips unlocated rows
        return base.example_dict(
            located.name,
            located.relative_path,
            segment,
            label=self.label_index[located.row.label],
            shown=list(located.row.shown),
        )
