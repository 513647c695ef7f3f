"""TFDS builder for VGGSound from a local copy of its clips and `vggsound.csv`.

Build (see docs/datasets.md):
  tfds build mbt/data/builders/vggsound.py --config=default --manual_dir=DIR --data_dir=OUT
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os

import tensorflow_datasets as tfds

from mbt.data.builders import base
from mbt.data.builders import common
from mbt.data.builders import vggsound_spec

NUM_CLASSES = vggsound_spec.NUM_CLASSES
CSV_NAME = "vggsound.csv"
CSV_COLUMNS = ("youtube_id", "start_seconds", "label", "split")
# First lines taken as a header (the official CSV has none).
CSV_HEADERS = (CSV_COLUMNS, ("ytid", "start_seconds", "label", "split"))
SPLITS = ("train", "test")
CLASS_SOURCES = ("official", "csv")

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(eq=False)
class VggsoundConfig(base.MediaConfig):
    """VGGSound options on top of `base.MediaConfig`.

    Attributes:
      clip_seconds: length of the segment read from the start of each clip file (the
        official clips are 10 s; a file that ends earlier counts as `short_clip`).
      file_pattern: clip file name; `{ytid}` and `{start}` (integer seconds) are filled in.
      class_names_from: 'official': the 309 official classes (`vggsound_spec`), a class
        index is a position in that list and a CSV label outside it is an error; 'csv':
        the sorted label names the CSV holds (custom label sets; the head is as wide as
        the number of names found).
    """

    clip_seconds: float = 10.0
    file_pattern: str = "{ytid}_{start:06d}.mp4"
    class_names_from: str = "official"

    def __post_init__(self):
        super().__post_init__()
        if self.class_names_from not in CLASS_SOURCES:
            raise ValueError(
                f"VggsoundConfig {self.name!r}: class_names_from={self.class_names_from!r}, "
                f"expected one of {CLASS_SOURCES}."
            )


@dataclasses.dataclass(frozen=True)
class ClipRow:
    ytid: str
    start_s: int
    label: str
    split: str
    line: int


def read_rows(path: str, encoding: str = common.DEFAULT_ENCODING) -> list[ClipRow]:
    """Reads `vggsound.csv` rows `youtube_id,start_seconds,label,split`.

    The first line is skipped when it is a header (`CSV_HEADERS`); CRLF and quoted labels
    with commas are fine.

    Raises:
      MalformedCsvError: a line with a wrong field count, non-integer start, empty label,
        a split other than train/test, or a label spanning lines.
    """
    rows: list[ClipRow] = []
    for row in common.read_csv(path, CSV_COLUMNS, headers=CSV_HEADERS, encoding=encoding):
        ytid, start, label, split = row.fields
        start_s = row.as_int(1, "start_seconds")
        if not label:
            raise row.error("empty label")
        if split not in SPLITS:
            raise row.error(f"split {split!r} is not one of {SPLITS}")
        rows.append(ClipRow(ytid, start_s, label, split, row.line))
    if not rows:
        raise common.MalformedCsvError(path, 1, "no rows")
    return rows


def class_names(rows: list[ClipRow], source: str = "official", path: str = CSV_NAME) -> list[str]:
    """The class names; a class index is a position in this list.

    `source` 'official': the 309 official names (sorted as the official code sorts them);
    'csv': the sorted label names of `rows`.

    Raises:
      MalformedCsvError: with 'official', a label that is not an official class name (the
        message names the first such line of `path` and the closest official names).
    """
    if source == "csv":
        names = sorted({row.label for row in rows})
        if len(names) != NUM_CLASSES:
            _LOG.warning(
                "%s has %d label names (the official VGGSound has %d): class_names_from='csv' "
                "gives a %d-way head.",
                path,
                len(names),
                NUM_CLASSES,
                len(names),
            )
        return names
    official = vggsound_spec.official_class_names()
    known = set(official)
    unknown = [row for row in rows if row.label not in known]
    if unknown:
        first = unknown[0]
        close = difflib.get_close_matches(first.label, official, n=3)
        distinct = sorted({row.label for row in unknown})
        raise common.MalformedCsvError(
            path,
            first.line,
            f"label {first.label!r} is not one of the {NUM_CLASSES} official VGGSound classes "
            f"(mbt/data/builders/{vggsound_spec.CLASS_LIST})"
            + (f"; closest: {close}" if close else "")
            + f". {len(unknown)} of {len(rows)} rows hold labels outside the list "
            f"({len(distinct)} distinct: {distinct[:5]}{', ...' if len(distinct) > 5 else ''}). "
            "Correct the labels, or for a custom label set build a config with "
            "class_names_from='csv' (e.g. --config=csv_classes).",
        )
    used = len({row.label for row in rows})
    if used < NUM_CLASSES:
        _LOG.info(
            "%s uses %d of the %d official classes; the label space stays the official one.",
            path,
            used,
            NUM_CLASSES,
        )
    return list(official)


class Vggsound(base.ManualMediaBuilder):
    """VGGSound clips as RGB frames + 16 kHz waveform with one label each."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [
        VggsoundConfig(name="default", description="25 fps, short side 256 px, 10 s clips."),
        VggsoundConfig(
            name="tiny",
            fps=10.0,
            short_side=64,
            clip_seconds=2.0,
            description="10 fps, short side 64 px, first 2 s (tests, demos).",
        ),
        VggsoundConfig(
            name="csv_classes",
            class_names_from="csv",
            description="As default, classes = the label names in the CSV (custom label sets).",
        ),
        VggsoundConfig(
            name="tiny_csv_classes",
            fps=10.0,
            short_side=64,
            clip_seconds=2.0,
            class_names_from="csv",
            description="As tiny, classes = the label names in the CSV (the synthetic demo).",
        ),
    ]
    DEFAULT_CONFIG_NAME = "default"
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Put into the manual dir:
    {CSV_NAME}  (rows youtube_id,start_seconds,label,split)
    the clips anywhere below it (searched recursively), named {{ytid}}_{{start:06d}}.mp4,
    e.g. ---g-f_I2yQ_000001.mp4
  Labels must be official class names (vggsound_classes.txt) unless the config has
  class_names_from='csv' (configs csv_classes, tiny_csv_classes).
  """

    def _info(self) -> tfds.core.DatasetInfo:
        config: VggsoundConfig = self.builder_config
        if config.class_names_from == "official":
            label = tfds.features.ClassLabel(names=vggsound_spec.official_class_names())
        else:  # the CSV's names, set in `_split_generators`
            label = tfds.features.ClassLabel()
        return self.dataset_info_from_configs(
            features=base.media_features(label=label),
            supervised_keys=None,
            homepage="https://www.robots.ox.ac.uk/~vgg/data/vggsound/",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        manual_dir = os.fspath(dl_manager.manual_dir)
        config: VggsoundConfig = self.builder_config
        csv_path = common.require_file(os.path.join(manual_dir, CSV_NAME), "VGGSound CSV")
        rows = read_rows(csv_path, config.csv_encoding)
        names = class_names(rows, config.class_names_from, csv_path)
        if config.class_names_from == "csv":
            self.info.features["label"].names = names
        self._label_index = {name: i for i, name in enumerate(names)}
        self._clip_index = self._index_files(manual_dir, (".mp4",))
        return self._make_splits(
            manual_dir, {split: [r for r in rows if r.split == split] for split in SPLITS}
        )

    def _locate(self, row: ClipRow) -> base.LocatedRow:
        filename = self.builder_config.file_pattern.format(ytid=row.ytid, start=row.start_s)
        return base.LocatedRow(
            row,
            os.path.splitext(filename)[0],
            self._clip_index.get(filename),
            f"{filename} not found",
        )

    def _clip_reader(self) -> VggsoundClips:
        return VggsoundClips(self.builder_config, self._manual_dir, self._label_index)


class VggsoundClips(base.ClipReader):
    """The first `clip_seconds` of each clip, labelled by the row's class index."""

    def __init__(self, config: VggsoundConfig, manual_dir: str, label_index: dict[str, int]):
        super().__init__(config, manual_dir)
        self.label_index = label_index

    def example(self, located: base.LocatedRow, path: str, report: common.BuildReport):
        config: VggsoundConfig = self.config
        segment = base.decode_segment(path, located.name, 0.0, config.clip_seconds, config, report)
        if segment is None:
            return None
        assert located.relative_path is not None  # `read` skips unlocated rows
        return base.example_dict(
            located.name, located.relative_path, segment, label=self.label_index[located.row.label]
        )
