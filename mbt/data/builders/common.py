"""Helpers shared by the AudioSet, VGGSound and EPIC-Kitchens TFDS builders.

- `read_csv` / `CsvRow`: strict CSV reading; a malformed line raises `MalformedCsvError`
  naming the file and the line number.
- `index_files`: one `os.walk` over the manual dir, file name -> relative path.
- `BuildReport`: per-split counts of bad input, logged and written as JSON beside the data.
- `resample` / `fit_length`: waveform resampling (EPIC's 24 kHz HDF5 audio), cropping/padding.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
from collections.abc import Callable
from collections.abc import Iterator

import numpy as np

AUDIO_SAMPLE_RATE = 16000

# Kinds of bad input. Examples of the first group are dropped, the others are kept.
SKIPPED_KINDS = {
    "missing_clip": "the CSV row has no clip file in the manual dir",
    "undecodable": "the clip file could not be opened or decoded",
    "empty_segment": "the segment starts at/after the end of the clip, or ends before it starts",
}
KEPT_KINDS = {
    "no_audio": "no audio (stream): stored with silent audio and has_audio=False",
    "short_clip": "the clip ends before the segment does: segment_end cut to the clip end",
    "no_video": "audio-only file: stored with zero frames (rgb shape [0, H, W, 3])",
}

_LOG = logging.getLogger(__name__)


class MalformedCsvError(ValueError):
    """A CSV line that cannot be parsed; the message names the file and line."""

    def __init__(self, path: str, line: int, reason: str):
        super().__init__(f"{path}, line {line}: {reason}")
        self.path = path
        self.line = line


@dataclasses.dataclass(frozen=True)
class CsvRow:
    """One parsed CSV record with where it came from, for error messages."""

    path: str
    line: int
    fields: list[str]

    def error(self, reason: str) -> MalformedCsvError:
        return MalformedCsvError(self.path, self.line, f"{reason} (row {self.fields})")

    def as_float(self, index: int, column: str) -> float:
        try:
            value = float(self.fields[index])
        except ValueError:
            raise self.error(f"column {column!r} is not a number: {self.fields[index]!r}") from None
        if not math.isfinite(value):
            raise self.error(f"column {column!r} is not finite: {self.fields[index]!r}")
        return value

    def as_int(self, index: int, column: str) -> int:
        try:
            return int(self.fields[index])
        except ValueError:
            raise self.error(
                f"column {column!r} is not an integer: {self.fields[index]!r}"
            ) from None


def read_csv(
    path: str, *, num_fields: int, skip_comments: bool = False, skip_initial_space: bool = False
) -> Iterator[CsvRow]:
    """Yields the records of a CSV file, each with exactly `num_fields` stripped fields.

    Tolerates a UTF-8 BOM, CRLF line endings and blank lines. With `skip_comments`,
    lines starting with '#' are skipped (AudioSet's header lines). With
    `skip_initial_space`, the space after each ',' is dropped so that quoted fields
    after ', ' parse (AudioSet's `"--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"`).

    Raises:
      FileNotFoundError: `path` does not exist.
      MalformedCsvError: a line has the wrong number of fields or broken quoting.
    """
    path = os.fspath(path)
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, strict=True, skipinitialspace=skip_initial_space)
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise MalformedCsvError(path, reader.line_num, f"bad CSV syntax: {e}") from None
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue
            if skip_comments and fields[0].lstrip().startswith("#"):
                continue
            if len(fields) != num_fields:
                raise MalformedCsvError(
                    path,
                    reader.line_num,
                    f"expected {num_fields} fields, found {len(fields)}: {fields}",
                )
            yield CsvRow(path, reader.line_num, [field.strip() for field in fields])


def index_files(root: str, suffixes: tuple[str, ...]) -> dict[str, str]:
    """Maps the file names under `root` (recursively) to their paths relative to `root`.

    Suffixes are matched case-insensitively ('.mp4' also finds '.MP4'). When a name
    occurs twice, the first in sorted walk order wins and the duplicate is logged.
    """
    suffixes = tuple(s.lower() for s in suffixes)
    index: dict[str, str] = {}
    duplicates = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for filename in sorted(filenames):
            if not filename.lower().endswith(suffixes):
                continue
            relative = os.path.relpath(os.path.join(dirpath, filename), root)
            if filename in index:
                duplicates.append(relative)
            else:
                index[filename] = relative
    if duplicates:
        _LOG.warning(
            "%d files under %s share a name with an earlier one and are ignored, e.g. %s",
            len(duplicates),
            root,
            duplicates[:3],
        )
    return index


class BuildReport:
    """Counts bad input of one split, logs the first few of each kind, writes JSON.

    Works inside `_generate_examples` of a Beam-less TFDS build: the builder calls
    `write()` when its generator ends (also when it is closed early), so the JSON lands
    in the dataset directory TFDS renames into place on success.
    """

    def __init__(
        self,
        dataset: str,
        config: str,
        version: str,
        split: str,
        *,
        max_logged: int = 5,
        max_listed: int = 50,
    ):
        self.dataset, self.config, self.version, self.split = dataset, config, version, split
        self.max_logged = max_logged
        self.max_listed = max_listed
        self.rows = 0
        self.written = 0
        self.counts = {kind: 0 for kind in (*SKIPPED_KINDS, *KEPT_KINDS)}
        self.skipped = {kind: 0 for kind in SKIPPED_KINDS}
        self.first: dict[str, list[dict[str, str]]] = {}

    def add(self, kind: str, name: str, detail: str = "", *, skipped: bool | None = None):
        """Records one bad input of `kind` for the clip/row `name`.

        `skipped` says whether the example was dropped; by default that follows the kind
        (SKIPPED_KINDS are dropped, the others kept).
        """
        if skipped is None:
            skipped = kind in SKIPPED_KINDS
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if skipped:
            self.skipped[kind] = self.skipped.get(kind, 0) + 1
        listed = self.first.setdefault(kind, [])
        if len(listed) < self.max_listed:
            listed.append({"name": name, "detail": detail})
        if self.counts[kind] <= self.max_logged:
            _LOG.warning(
                "%s/%s %s: %s %s%s%s",
                self.dataset,
                self.config,
                self.split,
                kind,
                name,
                ": " if detail else "",
                detail,
            )
            if self.counts[kind] == self.max_logged:
                _LOG.warning(
                    "%s/%s %s: further %s cases are only counted",
                    self.dataset,
                    self.config,
                    self.split,
                    kind,
                )

    def as_dict(self, complete: bool = True) -> dict:
        return {
            "dataset": self.dataset,
            "config": self.config,
            "version": self.version,
            "split": self.split,
            "complete": complete,
            "csv_rows": self.rows,
            "examples_written": self.written,
            "examples_skipped": sum(self.skipped.values()),
            "counts": self.counts,
            "skipped": self.skipped,
            "kinds": {**SKIPPED_KINDS, **KEPT_KINDS},
            "first": self.first,
        }

    def summary(self) -> str:
        bad = ", ".join(f"{k}={v}" for k, v in self.counts.items() if v) or "no bad input"
        return (
            f"[{self.dataset}/{self.config} {self.split}] {self.written} examples written "
            f"from {self.rows} rows; {bad}"
        )

    def write(self, directory: str, complete: bool = True) -> str:
        """Writes `build_report_<split>.json` into `directory`, prints a summary, returns the path.

        During `download_and_prepare` TFDS builds into `<config dir>/incomplete.XXXX_<version>`
        and renames it to `<config dir>/<version>` on success; the message names the latter.
        """
        directory = os.path.normpath(directory)
        path = os.path.join(directory, f"build_report_{self.split}.json")
        os.makedirs(directory, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.as_dict(complete), f, indent=2)
        shown = path
        if os.path.basename(directory).startswith("incomplete."):
            shown = os.path.join(os.path.dirname(directory), self.version, os.path.basename(path))
        message = self.summary() + ("" if complete else " (stopped early)") + f"; report: {shown}"
        print(message, flush=True)
        _LOG.info(message)
        return path


def report_examples(examples: Iterator, report: BuildReport, directory: Callable[[], str]):
    """Passes `examples` through and writes `report` when they end or the consumer stops.

    `directory` is called at that moment: during `download_and_prepare`, TFDS points the
    builder's `data_dir` at a temporary folder that it renames into place on success.
    """
    complete = False
    try:
        yield from examples
        complete = True
    finally:
        report.write(directory(), complete=complete)


def fit_length(array: np.ndarray, length: int, *, repeat_last: bool) -> np.ndarray:
    """Crops or pads axis 0 of `array` to `length` (repeating the last item or zero-padding)."""
    if len(array) >= length:
        return array[:length]
    if repeat_last and len(array):
        pad = np.repeat(array[-1:], length - len(array), axis=0)
    else:
        pad = np.zeros((length - len(array),) + array.shape[1:], array.dtype)
    return np.concatenate([array, pad], axis=0)


def resolve_path(manual_dir: str, path: str) -> str:
    """`path` if absolute, else `path` inside `manual_dir`."""
    return path if os.path.isabs(path) else os.path.join(os.fspath(manual_dir), path)


def require_file(path: str, what: str) -> str:
    """Returns `path` or raises FileNotFoundError saying which metadata file is missing."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path} (see MANUAL_DOWNLOAD_INSTRUCTIONS).")
    return path


def resample(
    waveform: np.ndarray, rate_in: int, rate_out: int, zero_crossings: int = 16
) -> np.ndarray:
    """Polyphase (windowed-sinc) resampling of a mono float waveform.

    Args:
      waveform: float [samples] at `rate_in` Hz.
      rate_in, rate_out: integer sample rates in Hz.
      zero_crossings: filter half-length in zero crossings of the low-pass sinc.

    Returns:
      float32 [round(samples * rate_out / rate_in)] at `rate_out` Hz, low-passed at
      0.95 × the lower Nyquist frequency.
    """
    waveform = np.asarray(waveform, np.float32)
    if rate_in == rate_out:
        return waveform.copy()
    g = math.gcd(int(rate_in), int(rate_out))
    up, down = rate_out // g, rate_in // g
    num_out = round(len(waveform) * up / down)
    # Low-pass at the lower Nyquist, in cycles per sample of the upsampled signal.
    cutoff = 0.95 * 0.5 / max(up, down)
    half = int(math.ceil(zero_crossings / (2 * cutoff)))
    taps = np.arange(-half, half + 1)
    kernel = 2 * cutoff * np.sinc(2 * cutoff * taps) * np.kaiser(len(taps), 8.0) * up
    upsampled = np.zeros(len(waveform) * up, np.float32)
    upsampled[::up] = waveform
    filtered = np.convolve(upsampled, kernel.astype(np.float32), mode="full")[half:]
    return fit_length(filtered[::down].astype(np.float32), num_out, repeat_last=False)
