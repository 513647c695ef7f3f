"""TFDS builder for EPIC-Kitchens-100 action segments (verb + noun) from a local copy.

Build (see docs/datasets.md):
  tfds build mbt/data/builders/epic_kitchens.py --config=default --manual_dir=DIR --data_dir=OUT
"""

from __future__ import annotations

import ast
import dataclasses
import logging
import os
import re

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from mbt.data import media
from mbt.data.builders import base
from mbt.data.builders import common

NUM_VERBS = 97
NUM_NOUNS = 300
SPLIT_CSVS = {"train": "EPIC_100_train.csv", "validation": "EPIC_100_validation.csv"}
VERB_CSV = "EPIC_100_verb_classes.csv"
NOUN_CSV = "EPIC_100_noun_classes.csv"
AUDIO_HDF5 = "EPIC-KITCHENS-100_audio.hdf5"
ANNOTATION_COLUMNS = (
    "narration_id",
    "participant_id",
    "video_id",
    "narration_timestamp",
    "start_timestamp",
    "stop_timestamp",
    "start_frame",
    "stop_frame",
    "narration",
    "verb",
    "verb_class",
    "noun",
    "noun_class",
    "all_nouns",
    "all_noun_classes",
)
_COLUMN = {name: i for i, name in enumerate(ANNOTATION_COLUMNS)}
CLASS_COLUMNS = ("id", "key", "instances", "category")
_TIMESTAMP = re.compile(r"^(\d+):([0-5]\d):([0-5]\d(?:\.\d+)?)$")
AUDIO_SOURCES = ("mp4", "hdf5")

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(eq=False)
class EpicKitchensConfig(base.MediaConfig):
    """EPIC-Kitchens options on top of `base.MediaConfig`.

    Attributes:
      audio_source: 'mp4' reads the audio stream of each video; 'hdf5' reads
        `audio_hdf5_file` (one 1-D float32 dataset per video id) instead.
      audio_hdf5_file: the HDF5 file, relative to the manual dir or absolute.
      hdf5_sample_rate: sample rate of the HDF5 waveforms in Hz (resampled to 16 kHz).
      num_verbs, num_nouns: the classes the class CSVs must list (EPIC-Kitchens-100: 97
        verbs, 300 nouns).
    """

    audio_source: str = "mp4"
    audio_hdf5_file: str = AUDIO_HDF5
    hdf5_sample_rate: int = 24000
    num_verbs: int = NUM_VERBS
    num_nouns: int = NUM_NOUNS

    def __post_init__(self):
        super().__post_init__()
        if self.audio_source not in AUDIO_SOURCES:
            raise ValueError(
                f"EpicKitchensConfig {self.name!r}: audio_source="
                f"{self.audio_source!r}, expected one of {AUDIO_SOURCES}."
            )


def parse_timestamp(text: str) -> float:
    """'HH:MM:SS.ss' -> seconds; ValueError when the text is not in that form."""
    match = _TIMESTAMP.match(text)
    if not match:
        raise ValueError(f"timestamp {text!r} is not HH:MM:SS.ss")
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def read_class_keys(path: str, encoding: str = common.DEFAULT_ENCODING) -> list[str]:
    """Class names (`key` column) of EPIC_100_{verb,noun}_classes.csv, by `id`."""
    keys: list[str] = []
    for row in common.read_csv(path, CLASS_COLUMNS, headers=(CLASS_COLUMNS,), encoding=encoding):
        class_id = row.as_int(0, "id")
        if class_id != len(keys):
            raise row.error(f"class id {class_id} out of order, expected {len(keys)}")
        keys.append(row.fields[1])
    if not keys:
        raise common.MalformedCsvError(path, 1, "no class rows")
    return keys


@dataclasses.dataclass(frozen=True)
class Narration:
    narration_id: str
    participant_id: str
    video_id: str
    start_s: float
    stop_s: float
    verb_class: int
    noun_class: int


def read_annotations(
    path: str, num_verbs: int, num_nouns: int, encoding: str = common.DEFAULT_ENCODING
) -> list[Narration]:
    """Reads EPIC_100_{train,validation}.csv (header in `ANNOTATION_COLUMNS`).

    Raises:
      MalformedCsvError: wrong field count, bad timestamp, class out of range, or list
        columns that are not Python literals.
    """
    narrations = []
    rows = common.read_csv(
        path, ANNOTATION_COLUMNS, headers=(ANNOTATION_COLUMNS,), encoding=encoding
    )
    for row in rows:
        field = lambda name: row.fields[_COLUMN[name]]  # noqa: B023 (used in this iteration only)
        times = {}
        for column in ("start_timestamp", "stop_timestamp"):
            try:
                times[column] = parse_timestamp(field(column))
            except ValueError as e:
                raise row.error(f"column {column!r}: {e}") from None
        verb_class = row.as_int(_COLUMN["verb_class"], "verb_class")
        noun_class = row.as_int(_COLUMN["noun_class"], "noun_class")
        if not 0 <= verb_class < num_verbs:
            raise row.error(f"verb_class {verb_class} not in [0, {num_verbs})")
        if not 0 <= noun_class < num_nouns:
            raise row.error(f"noun_class {noun_class} not in [0, {num_nouns})")
        for column in ("all_nouns", "all_noun_classes"):
            try:
                value = ast.literal_eval(field(column))
            except (ValueError, SyntaxError):
                raise row.error(f"column {column!r} is not a Python list literal") from None
            if not isinstance(value, list):
                raise row.error(f"column {column!r} is not a list")
        narrations.append(
            Narration(
                narration_id=field("narration_id"),
                participant_id=field("participant_id"),
                video_id=field("video_id"),
                start_s=times["start_timestamp"],
                stop_s=times["stop_timestamp"],
                verb_class=verb_class,
                noun_class=noun_class,
            )
        )
    return narrations


def find_file(manual_dir: str, filename: str, index: common.FileIndex) -> str | None:
    """`manual_dir/filename`, else the first file of that name below the manual dir."""
    direct = os.path.join(manual_dir, filename)
    if common.is_file(direct):
        return direct
    if filename in index:
        return os.path.join(manual_dir, index[filename])
    return None


class Hdf5Audio:
    """Segments of the per-video waveforms in EPIC-KITCHENS-100_audio.hdf5, at 16 kHz."""

    # Extra input read on each side so the resampling filter has real context at the
    # segment edges (10 ms at 24 kHz).
    _MARGIN_S = 0.01

    def __init__(self, path: str, sample_rate: int):
        import h5py  # only needed for this audio source

        self.path = path
        self.sample_rate = sample_rate
        # h5py reads a local path itself, any other filesystem through a file object.
        self._source = tf.io.gfile.GFile(path, "rb") if common.is_remote(path) else None
        self._file = h5py.File(self._source or path, "r")

    def close(self):
        self._file.close()
        if self._source is not None:
            self._source.close()

    def loader(self, video_id: str):
        """`(start_s, end_s) -> float32 [round((end - start) * 16000)]`, or None per call when
        the file has no waveform for `video_id`; raises `media.MediaError` (the example is then
        skipped as undecodable) when the waveform is not 1-D."""
        if video_id not in self._file:
            return lambda start_s, end_s: None
        dataset = self._file[video_id]

        def load(start_s: float, end_s: float) -> np.ndarray:
            if dataset.ndim != 1:
                raise media.MediaError(
                    f"{self.path}: dataset {video_id!r} has shape "
                    f"{dataset.shape}; expected a 1-D waveform"
                )
            rate = self.sample_rate
            lo = max(0, round((start_s - self._MARGIN_S) * rate))
            hi = round((end_s + self._MARGIN_S) * rate)
            chunk = np.asarray(dataset[lo : min(hi, dataset.shape[0])], np.float32)
            chunk = common.fit_length(chunk, hi - lo, repeat_last=False)  # zero past the end
            resampled = common.resample(chunk, rate, common.AUDIO_SAMPLE_RATE)
            offset = round((start_s - lo / rate) * common.AUDIO_SAMPLE_RATE)
            num_samples = round((end_s - start_s) * common.AUDIO_SAMPLE_RATE)
            return common.fit_length(resampled[offset:], num_samples, repeat_last=False)

        return load


class EpicKitchens(base.ManualMediaBuilder):
    """EPIC-Kitchens-100 action segments as RGB frames + 16 kHz waveform, verb and noun labels."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [
        EpicKitchensConfig(name="default", description="25 fps, short side 256 px, MP4 audio."),
        EpicKitchensConfig(
            name="tiny",
            fps=10.0,
            short_side=64,
            description="10 fps, short side 64 px, MP4 audio (tests, demos).",
        ),
        EpicKitchensConfig(
            name="hdf5_audio",
            audio_source="hdf5",
            description=f"25 fps, short side 256 px, audio from {AUDIO_HDF5}.",
        ),
        EpicKitchensConfig(
            name="tiny_hdf5_audio",
            fps=10.0,
            short_side=64,
            audio_source="hdf5",
            description=f"10 fps, short side 64 px, audio from {AUDIO_HDF5}.",
        ),
    ]
    DEFAULT_CONFIG_NAME = "default"
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Put into the manual dir (the annotation CSVs may also sit in a subfolder, e.g. a
  checkout of epic-kitchens-100-annotations):
    {SPLIT_CSVS["train"]}, {SPLIT_CSVS["validation"]}, {VERB_CSV}, {NOUN_CSV}
    the videos as <participant>/videos/<video_id>.MP4 (or .mp4), e.g. P01/videos/P01_11.MP4
    for the hdf5_audio configs also {AUDIO_HDF5} (one float32 24 kHz waveform per video id)
  """

    def _info(self) -> tfds.core.DatasetInfo:
        # The class counts are the config's; the verb/noun names come from the class CSVs and
        # are set in `_split_generators`.
        config: EpicKitchensConfig = self.builder_config
        return self.dataset_info_from_configs(
            features=base.media_features(
                verb_label=tfds.features.ClassLabel(num_classes=config.num_verbs),
                noun_label=tfds.features.ClassLabel(num_classes=config.num_nouns),
            ),
            supervised_keys=None,
            homepage="https://epic-kitchens.github.io/",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        manual_dir = os.fspath(dl_manager.manual_dir)
        config: EpicKitchensConfig = self.builder_config
        index = self._index_files(manual_dir, (".mp4", ".csv"))

        def metadata(filename, what):
            path = find_file(manual_dir, filename, index)
            if path is None:
                raise FileNotFoundError(
                    f"{what} {filename} not found in or below {manual_dir} "
                    "(see MANUAL_DOWNLOAD_INSTRUCTIONS)."
                )
            return path

        encoding = config.csv_encoding
        class_lists = {}
        for kind, filename, expected, official in (
            ("verb", VERB_CSV, config.num_verbs, NUM_VERBS),
            ("noun", NOUN_CSV, config.num_nouns, NUM_NOUNS),
        ):
            path = metadata(filename, f"EPIC-Kitchens {kind} classes")
            class_lists[kind] = read_class_keys(path, encoding)
            if len(class_lists[kind]) != expected:
                count = len(class_lists[kind])
                raise ValueError(
                    f"{path} lists {count} {kind} classes, but builder config {config.name!r} "
                    f"has num_{kind}s={expected} (EPIC-Kitchens-100 has {official}). Use the "
                    f"official {filename}, or build a config with num_{kind}s={count} "
                    f"(docs/datasets.md)."
                )
        verbs, nouns = class_lists["verb"], class_lists["noun"]
        self.info.features["verb_label"].names = verbs
        self.info.features["noun_label"].names = nouns

        self._hdf5_path = None
        if config.audio_source == "hdf5":
            self._hdf5_path = common.require_file(
                common.resolve_path(manual_dir, config.audio_hdf5_file), "EPIC-Kitchens audio HDF5"
            )
        narrations = {}
        for split, filename in SPLIT_CSVS.items():
            path = find_file(manual_dir, filename, index)
            if path is None:
                _LOG.info("No %s in %s: split %s is not built.", filename, manual_dir, split)
                continue
            narrations[split] = read_annotations(path, len(verbs), len(nouns), encoding)
        if not narrations:
            raise FileNotFoundError(f"None of {sorted(SPLIT_CSVS.values())} found in {manual_dir}.")
        self._video_index = index
        return self._make_splits(manual_dir, narrations)

    def _locate(self, narration: Narration) -> base.LocatedRow:
        names = [f"{narration.video_id}{ext}" for ext in (".MP4", ".mp4")]
        relative = next((self._video_index[n] for n in names if n in self._video_index), None)
        return base.LocatedRow(
            narration, narration.narration_id, relative, f"video {names[0]} (or .mp4) not found"
        )

    def _clip_reader(self) -> EpicKitchensClips:
        return EpicKitchensClips(self.builder_config, self._manual_dir, self._hdf5_path)


class EpicKitchensClips(base.ClipReader):
    """Each narration's segment of its video, with the audio of the video or, when
    `hdf5_path` is given, of the HDF5 file (held open between `open` and `close`)."""

    def __init__(self, config: EpicKitchensConfig, manual_dir: str, hdf5_path: str | None):
        super().__init__(config, manual_dir)
        self.hdf5_path = hdf5_path
        self._hdf5: Hdf5Audio | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_hdf5": None}  # an open file does not travel to a worker

    def open(self) -> None:
        if self.hdf5_path:
            config: EpicKitchensConfig = self.config
            self._hdf5 = Hdf5Audio(self.hdf5_path, config.hdf5_sample_rate)

    def close(self) -> None:
        if self._hdf5 is not None:
            self._hdf5.close()
            self._hdf5 = None

    def example(self, located: base.LocatedRow, path: str, report: common.BuildReport):
        narration: Narration = located.row
        audio_loader = self._hdf5.loader(narration.video_id) if self._hdf5 else None
        segment = base.decode_segment(
            path,
            located.name,
            narration.start_s,
            narration.stop_s,
            self.config,
            report,
            audio_loader=audio_loader,
        )
        if segment is None:
            return None
        assert located.relative_path is not None  # `read` skips unlocated rows
        return base.example_dict(
            located.name,
            located.relative_path,
            segment,
            verb_label=narration.verb_class,
            noun_label=narration.noun_class,
        )
