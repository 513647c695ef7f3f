"""The base TFDS builder of the media datasets: config fields, segment decoding, features.

A builder reads CSV rows, finds each row's clip in the manual dir and decodes a segment of
it to RGB frames (JPEG-encoded by TFDS) and a 16 kHz mono waveform. Everything that can be
wrong with one row (missing clip, undecodable file, no audio, clip shorter than its
segment) is sorted into a kind, counted in a `common.BuildReport` and never stops the build.

The per-row step is a `ClipReader`, run in this process or, when TFDS is given a Beam
runner, on the runner's workers (`beam_build`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import os
from collections.abc import Callable
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import writer as tfds_writer

from mbt.data import media
from mbt.data.builders import common

AUDIO_SAMPLE_RATE = common.AUDIO_SAMPLE_RATE

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(eq=False)
class MediaConfig(tfds.core.BuilderConfig):
    """Builder-config fields shared by the media builders.

    Attributes:
      fps: frames stored per second of segment.
      short_side: frames are resized so their short side has this many pixels
        (None keeps the decoded size).
      skip_no_audio: drop clips without audio instead of storing silence with
        has_audio=False.
      short_tolerance_s: a clip may end this much before its segment without counting
        as `short_clip` (container durations are rarely exact); the last frame is
        repeated and the audio zero-padded to fill the gap.
      csv_encoding: text encoding of the metadata files (CSVs, lists); any
        ASCII-compatible codec Python knows ('utf-8', 'cp1252', 'latin-1', ...).
    """

    fps: float = 25.0
    short_side: int | None = 256
    skip_no_audio: bool = False
    short_tolerance_s: float = 0.1
    csv_encoding: str = common.DEFAULT_ENCODING

    def __post_init__(self):
        common.check_encoding(self.csv_encoding, f"builder config {self.name!r}: csv_encoding")


@dataclasses.dataclass
class Segment:
    """A decoded segment.

    Attributes:
      rgb: uint8 [T, H, W, 3], T = round(duration_s * fps); T = 0 for audio-only files.
      audio: float32 [round(duration_s * 16000)] mono in [-1, 1] (zeros without audio).
      has_audio: False when the clip had no audio.
      start_s, end_s: the segment in seconds of the source file (end cut to the clip's end
        for a `short_clip`).
    """

    rgb: np.ndarray
    audio: np.ndarray
    has_audio: bool
    start_s: float
    end_s: float


AudioLoader = Callable[[float, float], "np.ndarray | None"]


def decode_segment(
    path: str,
    name: str,
    start_s: float,
    end_s: float,
    config: MediaConfig,
    report: common.BuildReport,
    *,
    audio_loader: AudioLoader | None = None,
) -> Segment | None:
    """Decodes [start_s, end_s) of the media file `path`, or returns None to skip it.

    Bad input is recorded in `report` under `name`: one skip kind for a dropped example;
    the kept kinds (no_audio, short_clip, no_video) only when the example is kept.
    `audio_loader(start_s, end_s)`, when given, supplies the audio (float32 at 16 kHz, or
    None when there is none) instead of the file's audio stream.
    """
    if end_s <= start_s:
        report.add("empty_segment", name, f"segment {start_s:.3f}-{end_s:.3f} s")
        return None
    try:
        info = media.probe(path)
    except media.MediaError as e:
        report.add("undecodable", name, str(e))
        return None
    if start_s >= info.duration_s:
        report.add(
            "empty_segment",
            name,
            f"segment starts at {start_s:.3f} s, clip is {info.duration_s:.3f} s long",
        )
        return None
    kept_kinds = []
    if end_s > info.duration_s + config.short_tolerance_s:
        kept_kinds.append(
            (
                "short_clip",
                f"segment {start_s:.3f}-{end_s:.3f} s, clip ends at {info.duration_s:.3f} s",
            )
        )
        end_s = info.duration_s
    duration_s = end_s - start_s
    num_frames = round(duration_s * config.fps)
    num_samples = round(duration_s * AUDIO_SAMPLE_RATE)

    audio, missing_audio = None, ""
    try:
        if info.has_video:
            rgb = media.read_frames(
                path, start_s, end_s, fps=config.fps, short_side=config.short_side
            )
            if len(rgb) == 0:
                report.add("undecodable", name, f"{path}: no frame decoded in the segment")
                return None
            rgb = common.fit_length(rgb, num_frames, repeat_last=True)
        else:
            side = config.short_side or 0
            rgb = np.zeros((0, side, side, 3), np.uint8)
            kept_kinds.append(("no_video", f"{path}: no video stream"))
        if audio_loader is not None:
            audio = audio_loader(start_s, end_s)
            missing_audio = "no waveform in the external audio source"
        elif info.has_audio:
            try:
                audio = media.read_audio(path, start_s, end_s, sample_rate=AUDIO_SAMPLE_RATE)
            except media.NoAudioStreamError as e:
                missing_audio = str(e)
        else:
            missing_audio = f"{path}: no audio stream"
    except media.MediaError as e:
        report.add("undecodable", name, str(e))
        return None

    has_audio = audio is not None
    if has_audio:
        audio = common.fit_length(np.asarray(audio, np.float32), num_samples, repeat_last=False)
    elif config.skip_no_audio:
        report.add("no_audio", name, missing_audio, skipped=True)
        return None
    else:
        audio = np.zeros([num_samples], np.float32)
        kept_kinds.append(("no_audio", missing_audio))
    for kind, detail in kept_kinds:
        report.add(kind, name, detail)
    return Segment(rgb=rgb, audio=audio, has_audio=has_audio, start_s=start_s, end_s=end_s)


def example_dict(example_id: str, video_path: str, segment: Segment, **labels) -> dict:
    """The stored example (docs/design.md) from a decoded segment and its labels."""
    return {
        "id": example_id,
        "video_path": video_path,
        "segment_start": np.float32(segment.start_s),
        "segment_end": np.float32(segment.end_s),
        "rgb": segment.rgb,
        "audio": segment.audio,
        "has_audio": segment.has_audio,
        **labels,
    }


def media_features(**label_features: tfds.features.FeatureConnector) -> tfds.features.FeaturesDict:
    """FeaturesDict of the stored example (docs/design.md) with the given label features.

    Frames are given to TFDS as uint8 arrays and stored as one JPEG each.
    """
    return tfds.features.FeaturesDict(
        {
            "id": tfds.features.Text(),
            "video_path": tfds.features.Text(),
            "segment_start": tfds.features.Scalar(dtype=np.float32),
            "segment_end": tfds.features.Scalar(dtype=np.float32),
            "rgb": tfds.features.Video(shape=(None, None, None, 3), encoding_format="jpeg"),
            "audio": tfds.features.Tensor(shape=(None,), dtype=np.float32),
            "has_audio": tfds.features.Scalar(dtype=np.bool_),
            **label_features,
        }
    )


@dataclasses.dataclass(frozen=True)
class LocatedRow:
    """A CSV row and where its clip is: `relative_path` in the manual dir, or None with
    `looked_for` saying which names were tried."""

    row: Any
    name: str
    relative_path: str | None
    looked_for: str


class ClipReader:
    """The per-clip step of a build: a located CSV row -> its stored example.

    The same reader serves a split on both build paths: the builder's own loop (no Beam)
    and each worker of a Beam runner (`beam_build.ReadClips`), which gets it pickled. So it
    holds only what a row needs (the config, the manual dir, lookups such as a label
    index): no open file until `open()`, and no builder (a pickled TFDS builder is rebuilt
    from its constructor arguments, without what `_split_generators` set).

    Subclasses implement `example`; they may override `open`/`close` to hold files open
    while rows are read (a Beam worker calls them once each, around all its rows).
    """

    def __init__(self, config: MediaConfig, manual_dir: str):
        self.config = config
        self.manual_dir = manual_dir

    def open(self) -> None:
        """Opens what `example` reads from for every row (nothing by default)."""

    def close(self) -> None:
        """Closes what `open` opened."""

    @contextlib.contextmanager
    def opened(self) -> Iterator[ClipReader]:
        self.open()
        try:
            yield self
        finally:
            self.close()

    def read(self, located: LocatedRow, report: common.BuildReport) -> tuple[str, dict] | None:
        """(key, example) of one row, or None when it is skipped; counts it in `report`."""
        report.rows += 1
        if located.relative_path is None:
            report.add("missing_clip", located.name, located.looked_for)
            return None
        path = os.path.join(self.manual_dir, located.relative_path)
        example = self.example(located, path, report)
        if example is None:
            return None
        report.written += 1
        return located.name, example

    def example(self, located: LocatedRow, path: str, report: common.BuildReport) -> dict | None:
        """The stored example of a located row whose clip is at `path`, or None to skip it
        (the reason recorded in `report`)."""
        raise NotImplementedError


def beam_requested(download_config: tfds.download.DownloadConfig) -> bool:
    """True when TFDS was given a Beam runner or Beam options (`tfds build
    --beam_pipeline_options=...` sets the options; without a `runner=` Beam's default,
    the DirectRunner, runs the pipeline)."""
    return download_config.beam_runner is not None or download_config.beam_options is not None


class UncompressedArrayRecordWriter(tfds_writer.ExampleWriter):
    """TFDS's example writer, but ArrayRecord without compression.

    TFDS writes ArrayRecord with zstd level 3, which cannot shrink JPEG frames (a 10 s clip's
    record stays ~10 MB) yet costs the reader ~2x the CPU of the whole view it cuts
    (decompressing each record in full). Other formats are written as TFDS writes them.
    """

    def write(self, path, examples):
        if self.file_format != tfds.core.file_adapters.FileFormat.ARRAY_RECORD:
            return super().write(path, examples)
        from array_record.python import array_record_module

        writer = array_record_module.ArrayRecordWriter(os.fspath(path), "group_size:1,uncompressed")
        try:
            for _, serialized in examples:
                writer.write(serialized)
        finally:
            writer.close()
        return None


# TFDS ships no type information, so the base is `Any`; mypy still checks the class keyword
# against `object.__init_subclass__`. TFDS's `RegisteredDataset.__init_subclass__` takes it.
class ManualMediaBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):  # type: ignore[call-arg]
    """Base of the media builders: manual-dir data, one bad-input report per split.

    Subclasses implement `_info`, `_split_generators` (which reads the CSVs and returns
    `self._make_splits(...)`), `_locate(row) -> LocatedRow` and
    `_clip_reader() -> ClipReader`.

    Each split's rows go through the subclass's `ClipReader` on one of two paths, chosen
    by the `DownloadConfig`: without a Beam runner, `_generate_examples` returns a
    generator that reads them one by one in this process; with one (`beam_requested`), it
    returns `beam_build.ReadClips`, which reads them on the runner's workers. Both write
    the same examples under the same keys and the same `build_report_<split>.json`.
    """

    _use_beam = False

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS 4.9.10 derives this through `importlib_resources`, which recent etils no longer
        # installs (tensorflow/datasets#11212); the builder's source file is all it needs.
        return epath.Path(inspect.getfile(cls))

    def _example_writer(self):
        return UncompressedArrayRecordWriter(file_format=self.info.file_format)

    def _download_and_prepare(self, dl_manager, download_config) -> None:
        self._use_beam = beam_requested(download_config)
        self._beam_splits: list[str] = []
        super()._download_and_prepare(dl_manager, download_config)

    def _new_report(self, split: str) -> common.BuildReport:
        index = getattr(self, "_file_index", None)
        return common.BuildReport(
            self.name,
            self.builder_config.name,
            str(self.version),
            split,
            manual_dir=index.counts() if index is not None else None,
        )

    def _index_files(self, manual_dir: str, suffixes: tuple[str, ...]) -> common.FileIndex:
        """`common.index_files` of the manual dir; what the walk met goes into the reports."""
        self._file_index = common.index_files(manual_dir, suffixes)
        return self._file_index

    def _make_splits(self, manual_dir: str, rows_by_split: dict[str, list]) -> dict:
        """Split generators for the splits that have rows and at least one clip on disk.

        A split none of whose clips exists is not built (TFDS cannot write an empty split);
        its report, all `missing_clip`, is still written.

        Raises:
          FileNotFoundError: no split has any clip in `manual_dir`.
        """
        self._manual_dir = manual_dir
        splits = {}
        for split, rows in rows_by_split.items():
            if not rows:
                _LOG.warning(
                    "%s: split %s has no rows in its CSV and is not built.", self.name, split
                )
                continue
            located = [self._locate(row) for row in rows]
            if any(r.relative_path is not None for r in located):
                splits[split] = self._generate_examples(split, located)
                continue
            _LOG.warning(
                "%s: split %s is not built: none of its %d clips is in %s.",
                self.name,
                split,
                len(located),
                manual_dir,
            )
            report = self._new_report(split)
            for r in located:
                report.rows += 1
                report.add("missing_clip", r.name, r.looked_for)
            report.write(self.data_dir, complete=True)
        if not splits:
            raise FileNotFoundError(
                f"{self.name}: no clip of any split found in {manual_dir} "
                "(see MANUAL_DOWNLOAD_INSTRUCTIONS for the expected file names)."
            )
        return splits

    def _generate_examples(self, split: str, located: list[LocatedRow]):
        """A generator of (key, example) or, on the Beam path, a `beam.PTransform` of them."""
        report = self._new_report(split)
        reader = self._clip_reader()
        if self._use_beam:
            from mbt.data.builders import beam_build  # imports apache_beam

            self._beam_splits.append(split)
            return beam_build.ReadClips(reader, located, report, os.fspath(self.data_dir))
        return common.report_examples(
            _read_rows(reader, located, report), report, lambda: self.data_dir
        )

    def _process_pipeline_result(self, pipeline_result) -> None:
        """After a Beam build: prints each split's report summary here on the launching
        machine, removes the staged rows, and keeps the Beam counters of bad input by split
        and kind in `beam_counters` (checked against the reports)."""
        from mbt.data.builders import beam_build

        self.beam_counters = beam_build.finish(
            pipeline_result, os.fspath(self.data_dir), self._beam_splits
        )

    def _locate(self, row) -> LocatedRow:
        raise NotImplementedError

    def _clip_reader(self) -> ClipReader:
        """The reader of this build's rows (called in `_split_generators`, after `_locate`)."""
        raise NotImplementedError


def _read_rows(
    reader: ClipReader, located: list[LocatedRow], report: common.BuildReport
) -> Iterator[tuple[str, dict]]:
    """The Beam-less path: every row in order, in this process."""
    with reader.opened():
        for r in located:
            keyed = reader.read(r, report)
            if keyed is not None:
                yield keyed
