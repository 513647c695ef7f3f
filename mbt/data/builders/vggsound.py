"""TFDS builder for VGGSound from a local copy of its clips and `vggsound.csv`.

Build (see docs/datasets.md):
  tfds build mbt/data/builders/vggsound.py --config=default --manual_dir=DIR --data_dir=OUT
"""

from __future__ import annotations

import dataclasses
import logging
import os

import tensorflow_datasets as tfds

from mbt.data.builders import base
from mbt.data.builders import common

NUM_CLASSES = 309
CSV_NAME = "vggsound.csv"
SPLITS = ("train", "test")

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(eq=False)
class VggsoundConfig(base.MediaConfig):
    """VGGSound options on top of `base.MediaConfig`.

    Attributes:
      clip_seconds: length of the segment read from the start of each clip file (the
        official clips are 10 s; a file that ends earlier counts as `short_clip`).
      file_pattern: clip file name; `{ytid}` and `{start}` (integer seconds) are filled in.
    """

    clip_seconds: float = 10.0
    file_pattern: str = "{ytid}_{start:06d}.mp4"


@dataclasses.dataclass(frozen=True)
class ClipRow:
    ytid: str
    start_s: int
    label: str
    split: str
    line: int


def read_rows(path: str) -> list[ClipRow]:
    """Reads `vggsound.csv` rows `youtube_id,start_seconds,label,split`.

    A header line (first line, non-numeric start) is skipped; CRLF and quoted labels
    with commas are fine.

    Raises:
      MalformedCsvError: a line with a wrong field count, non-integer start, empty label
        or a split other than train/test.
    """
    rows: list[ClipRow] = []
    for row in common.read_csv(path, num_fields=4):
        ytid, start, label, split = row.fields
        if not rows and row.line == 1 and not start.lstrip("-").isdigit():
            continue  # header such as `youtube_id,start_seconds,label,split`
        start_s = row.as_int(1, "start_seconds")
        if not label:
            raise row.error("empty label")
        if split not in SPLITS:
            raise row.error(f"split {split!r} is not one of {SPLITS}")
        rows.append(ClipRow(ytid, start_s, label, split, row.line))
    if not rows:
        raise common.MalformedCsvError(path, 1, "no rows")
    return rows


def class_names(rows: list[ClipRow]) -> list[str]:
    """Sorted label names: a class index is a position in this list (as the official code)."""
    names = sorted({row.label for row in rows})
    if len(names) != NUM_CLASSES:
        _LOG.warning(
            "vggsound CSV has %d label names (the official VGGSound has %d).",
            len(names),
            NUM_CLASSES,
        )
    return names


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
    ]
    DEFAULT_CONFIG_NAME = "default"
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Put into the manual dir:
    {CSV_NAME}  (rows youtube_id,start_seconds,label,split)
    the clips anywhere below it (searched recursively), named {{ytid}}_{{start:06d}}.mp4,
    e.g. ---g-f_I2yQ_000001.mp4
  """

    def _info(self) -> tfds.core.DatasetInfo:
        # Class names come from the CSV; they are set in `_split_generators`.
        return self.dataset_info_from_configs(
            features=base.media_features(label=tfds.features.ClassLabel()),
            supervised_keys=None,
            homepage="https://www.robots.ox.ac.uk/~vgg/data/vggsound/",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        manual_dir = os.fspath(dl_manager.manual_dir)
        rows = read_rows(common.require_file(os.path.join(manual_dir, CSV_NAME), "VGGSound CSV"))
        names = class_names(rows)
        self.info.features["label"].names = names
        self._label_index = {name: i for i, name in enumerate(names)}
        self._clip_index = common.index_files(manual_dir, (".mp4",))
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

    def _example(self, located: base.LocatedRow, path, report):
        config: VggsoundConfig = self.builder_config
        segment = base.decode_segment(path, located.name, 0.0, config.clip_seconds, config, report)
        if segment is None:
            return None
        assert located.relative_path is not None  # `_located_examples` skips unlocated rows
        return base.example_dict(
            located.name, located.relative_path, segment, label=self._label_index[located.row.label]
        )
