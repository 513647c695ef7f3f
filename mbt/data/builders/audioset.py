"""TFDS builder for AudioSet from a local copy of its clips and segment CSVs.

Build (see docs/datasets.md):
  tfds build mbt/data/builders/audioset.py --config=default --manual_dir=DIR --data_dir=OUT
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np
import tensorflow_datasets as tfds

from mbt.data.builders import base
from mbt.data.builders import common

NUM_CLASSES = 527
CLASS_CSV = "class_labels_indices.csv"
SEGMENT_CSVS = {
    "balanced_train": "balanced_train_segments.csv",
    "eval": "eval_segments.csv",
    "unbalanced_train": "unbalanced_train_segments.csv",
}
# Segment lists the `subset` split draws its ids from (AS-500K style subsets of the
# training data).
SUBSET_SOURCES = ("balanced_train", "unbalanced_train")
DEFAULT_FILE_PATTERNS = (
    "{ytid}_{start_ms}_{end_ms}.mp4",
    "{ytid}_{start:06d}_{end:06d}.mp4",
    "Y{ytid}.mp4",
    "Y{ytid}.wav",
    "{ytid}.mp4",
)
MEDIA_SUFFIXES = (".mp4", ".wav", ".mkv", ".webm", ".m4a", ".flac")
CLASS_COLUMNS = ("index", "mid", "display_name")
SEGMENT_COLUMNS = ("YTID", "start_seconds", "end_seconds", "positive_labels")

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(eq=False)
class AudiosetConfig(base.MediaConfig):
    """AudioSet options on top of `base.MediaConfig`.

    Attributes:
      file_patterns: clip file names tried in order for each CSV row. Placeholders:
        `{ytid}`, `{start}`/`{end}` (integer seconds, format specs allowed, e.g.
        `{start:06d}`), `{start_ms}`/`{end_ms}` (integer milliseconds).
      clips_hold_segment_only: True when each clip file holds just its 10 s segment (what
        the common download tools write), so the segment is read from time 0 of the file;
        False when the files are whole videos and the CSV times are cut out of them.
      subset_ids_file: text file (relative to the manual dir, or absolute) with one YTID
        per line ('#' comments allowed; a CSV line's first field is used); when present,
        a `subset` split is built from the balanced and unbalanced training rows whose
        YTID it lists.
      num_classes: the classes `class_labels_indices.csv` must list (527 for AudioSet;
        another number for a custom class list).
    """

    file_patterns: tuple[str, ...] = DEFAULT_FILE_PATTERNS
    clips_hold_segment_only: bool = True
    subset_ids_file: str = "subset_ids.txt"
    num_classes: int = NUM_CLASSES


def read_class_names(
    path: str, encoding: str = common.DEFAULT_ENCODING
) -> tuple[list[str], dict[str, int]]:
    """Reads `class_labels_indices.csv` -> (display names by index, MID -> index).

    Raises MalformedCsvError when the indices are not 0, 1, 2, ... in file order or a
    MID repeats.
    """
    names: list[str] = []
    mid_to_index: dict[str, int] = {}
    for row in common.read_csv(path, CLASS_COLUMNS, headers=(CLASS_COLUMNS,), encoding=encoding):
        index = row.as_int(0, "index")
        mid = row.fields[1]
        if index != len(names):
            raise row.error(f"class index {index} out of order, expected {len(names)}")
        if mid in mid_to_index:
            raise row.error(f"MID {mid!r} listed twice")
        mid_to_index[mid] = index
        names.append(row.fields[2])
    if not names:
        raise common.MalformedCsvError(path, 1, "no class rows")
    return names, mid_to_index


@dataclasses.dataclass(frozen=True)
class SegmentRow:
    ytid: str
    start_s: float
    end_s: float
    label_indices: tuple[int, ...]
    line: int


def read_segments(
    path: str, mid_to_index: dict[str, int], encoding: str = common.DEFAULT_ENCODING
) -> list[SegmentRow]:
    """Reads a segment CSV (`YTID, start_seconds, end_seconds, "mid1,mid2"`); its header
    lines are '#' comments.

    Raises MalformedCsvError for a bad line or a MID not in the class list.
    """
    segments = []
    for row in common.read_csv(
        path, SEGMENT_COLUMNS, skip_comments=True, skip_initial_space=True, encoding=encoding
    ):
        ytid = row.fields[0]
        if not ytid:
            raise row.error("empty YTID")
        start_s = row.as_float(1, "start_seconds")
        end_s = row.as_float(2, "end_seconds")
        mids = [m.strip() for m in row.fields[3].split(",") if m.strip()]
        if not mids:
            raise row.error("no positive labels")
        unknown = [m for m in mids if m not in mid_to_index]
        if unknown:
            raise row.error(f"label MIDs {unknown} are not in {CLASS_CSV}")
        segments.append(
            SegmentRow(ytid, start_s, end_s, tuple(mid_to_index[m] for m in mids), row.line)
        )
    return segments


def read_subset_ids(path: str, encoding: str = common.DEFAULT_ENCODING) -> list[str]:
    """YTIDs of a subset file: one per line ('#' comments, blanks, extra CSV fields ignored)."""
    ids = []
    for line in common.read_text(path, encoding).splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            ids.append(line.split(",")[0].strip())
    return ids


def format_candidates(patterns: tuple[str, ...], segment: SegmentRow) -> list[str]:
    """File names the patterns give for one segment, in pattern order."""
    values = dict(
        ytid=segment.ytid,
        start=int(round(segment.start_s)),
        end=int(round(segment.end_s)),
        start_ms=int(round(segment.start_s * 1000)),
        end_ms=int(round(segment.end_s * 1000)),
    )
    names = []
    for pattern in patterns:
        try:
            names.append(pattern.format(**values))
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(
                f"AudioSet file pattern {pattern!r} is invalid ({e!r}); allowed "
                f"placeholders: {sorted(values)}"
            ) from None
    return names


class Audioset(base.ManualMediaBuilder):
    """AudioSet clips as RGB frames + 16 kHz waveform with multi-label targets."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [
        AudiosetConfig(name="default", description="25 fps, short side 256 px."),
        AudiosetConfig(
            name="tiny",
            fps=10.0,
            short_side=64,
            description="10 fps, short side 64 px (tests, demos).",
        ),
    ]
    DEFAULT_CONFIG_NAME = "default"
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Put into the manual dir:
    {CLASS_CSV}
    {SEGMENT_CSVS["balanced_train"]}, {SEGMENT_CSVS["eval"]} and/or
    {SEGMENT_CSVS["unbalanced_train"]} (a split is built when its CSV is present)
    optionally subset_ids.txt (one YTID per line) for the `subset` split
    the clips anywhere below it (searched recursively), named like
    {", ".join(DEFAULT_FILE_PATTERNS)}
    (first match wins; change with the config field `file_patterns`).
  """

    def _info(self) -> tfds.core.DatasetInfo:
        # The class count is the config's; the names come from the manual dir and are set in
        # `_split_generators`.
        label = tfds.features.ClassLabel(num_classes=self.builder_config.num_classes)
        return self.dataset_info_from_configs(
            features=base.media_features(label=tfds.features.Sequence(label)),
            supervised_keys=None,
            homepage="https://research.google.com/audioset/",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        manual_dir = os.fspath(dl_manager.manual_dir)
        config: AudiosetConfig = self.builder_config
        class_path = common.require_file(os.path.join(manual_dir, CLASS_CSV), "AudioSet class list")
        names, mid_to_index = read_class_names(class_path, config.csv_encoding)
        if len(names) != config.num_classes:
            raise ValueError(
                f"{class_path} lists {len(names)} classes, but builder config {config.name!r} "
                f"has num_classes={config.num_classes} (AudioSet has {NUM_CLASSES}). Use the "
                f"official {CLASS_CSV}, or for a custom class list build a config with "
                f"num_classes={len(names)}, e.g. "
                f'--config=\'{{"name": "classes{len(names)}", "num_classes": {len(names)}}}\'.'
            )
        self.info.features["label"].feature.names = names

        segments = {}
        for split, filename in SEGMENT_CSVS.items():
            path = os.path.join(manual_dir, filename)
            if common.is_file(path):
                segments[split] = read_segments(path, mid_to_index, config.csv_encoding)
            else:
                _LOG.info("No %s in %s: split %s is not built.", filename, manual_dir, split)
        subset_path = common.resolve_path(manual_dir, config.subset_ids_file)
        if common.is_file(subset_path):
            segments["subset"] = self._subset_segments(subset_path, segments)
        if not segments:
            raise FileNotFoundError(
                f"None of {sorted(SEGMENT_CSVS.values())} found in {manual_dir}."
            )
        self._clip_index = self._index_files(manual_dir, MEDIA_SUFFIXES)
        return self._make_splits(manual_dir, segments)

    def _subset_segments(self, path: str, segments: dict[str, list[SegmentRow]]):
        wanted = read_subset_ids(path, self.builder_config.csv_encoding)
        by_ytid: dict[str, SegmentRow] = {}
        for source in SUBSET_SOURCES:
            for segment in segments.get(source, []):
                by_ytid.setdefault(segment.ytid, segment)
        missing = [ytid for ytid in wanted if ytid not in by_ytid]
        if missing:
            _LOG.warning(
                "%d of %d ids in %s are in none of the %s CSVs present, e.g. %s",
                len(missing),
                len(wanted),
                path,
                SUBSET_SOURCES,
                missing[:5],
            )
        return [by_ytid[ytid] for ytid in dict.fromkeys(wanted) if ytid in by_ytid]

    def _locate(self, segment: SegmentRow) -> base.LocatedRow:
        candidates = format_candidates(self.builder_config.file_patterns, segment)
        relative = next((self._clip_index[c] for c in candidates if c in self._clip_index), None)
        return base.LocatedRow(
            segment,
            f"{segment.ytid}_{int(round(segment.start_s * 1000))}",
            relative,
            f"none of {candidates} found",
        )

    def _clip_reader(self) -> AudiosetClips:
        return AudiosetClips(self.builder_config, self._manual_dir)


class AudiosetClips(base.ClipReader):
    """Each row's segment (from time 0 of a segment-only file, else cut at the CSV times),
    labelled by the row's class indices."""

    def example(self, located: base.LocatedRow, path: str, report: common.BuildReport):
        config: AudiosetConfig = self.config
        segment: SegmentRow = located.row
        if config.clips_hold_segment_only:
            start_s, end_s = 0.0, segment.end_s - segment.start_s
        else:
            start_s, end_s = segment.start_s, segment.end_s
        decoded = base.decode_segment(path, located.name, start_s, end_s, config, report)
        if decoded is None:
            return None
        assert located.relative_path is not None  # `read` skips unlocated rows
        return base.example_dict(
            segment.ytid,
            located.relative_path,
            decoded,
            label=np.asarray(segment.label_indices, np.int64),
        )
