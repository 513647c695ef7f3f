"""Helpers shared by the TFDS builders (AudioSet, VGGSound, EPIC-Kitchens, sounding objects).

- File access goes through `tf.io.gfile`, so the manual dir and the data dir may be on any
  filesystem TensorFlow reads (`gs://`, `ram://`, local): `is_remote`, `is_file`,
  `read_text`, `require_file`, `resolve_path`.
- `read_csv` / `CsvRow`: the one CSV reader. Anything that cannot be read (bad encoding, a
  field holding a line break, a wrong field count, a value that fails validation) raises
  `MalformedCsvError` naming the file, the line and the column, and saying what to do.
- `index_files` / `FileIndex`: one walk over the manual dir, file name -> relative path.
  Links to folders and files are followed, also out of the manual dir; a folder reached a
  second time (a link loop) is not walked again; loops, broken links, links leading out of
  the manual dir and unreadable folders are counted.
- `BuildReport`: per-split counts of bad input, logged and written as JSON beside the data.
- `resample` / `fit_length`: waveform resampling (EPIC's 24 kHz HDF5 audio), cropping/padding.
"""

from __future__ import annotations

import codecs
import collections.abc
import csv
import dataclasses
import io
import json
import logging
import math
import os
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

AUDIO_SAMPLE_RATE = 16000
DEFAULT_ENCODING = "utf-8"

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


# ---------------------------------------------------------------------------------------
# Files on any filesystem


def is_remote(path: str) -> bool:
    """True for a URL-style path (`gs://bucket/x`, `ram://x`): read through tf.io.gfile only."""
    return "://" in os.fspath(path)


def is_file(path: str) -> bool:
    path = os.fspath(path)
    return tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path)


def resolve_path(manual_dir: str, path: str) -> str:
    """`path` if absolute (or a URL), else `path` inside `manual_dir`."""
    if os.path.isabs(path) or is_remote(path):
        return path
    return os.path.join(os.fspath(manual_dir), path)


def require_file(path: str, what: str) -> str:
    """Returns `path` or raises FileNotFoundError saying which metadata file is missing."""
    if not is_file(path):
        raise FileNotFoundError(f"{what} not found: {path} (see MANUAL_DOWNLOAD_INSTRUCTIONS).")
    return path


def check_encoding(encoding: str, where: str) -> None:
    """Raises ValueError unless `encoding` is a codec that writes ',', '"' and line breaks
    as ASCII does (UTF-8, Latin-1, cp1252, ...): CSV syntax is found in the decoded text,
    but line numbers in messages are counted in the bytes."""
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ValueError(f"{where}: unknown text encoding {encoding!r}") from None
    if ',"\r\n'.encode(encoding) != b',"\r\n':
        raise ValueError(
            f"{where}: encoding {encoding!r} is not ASCII-compatible; re-save the file as "
            "UTF-8 (or Latin-1 / cp1252)"
        )


def _line_and_column(data: bytes, offset: int) -> tuple[int, int]:
    """1-based line and column of byte `offset` (lines end at \\n, \\r\\n or \\r)."""
    lines = data[:offset].splitlines(keepends=True)
    if not lines or lines[-1].endswith((b"\n", b"\r")):
        return len(lines) + 1, 1
    return len(lines), len(lines[-1]) + 1


def read_text(path: str, encoding: str = DEFAULT_ENCODING) -> str:
    """The text of a metadata file (any filesystem), a UTF-8 byte-order mark dropped.

    Raises:
      FileNotFoundError: `path` does not exist.
      MalformedCsvError: a byte sequence is not valid in `encoding`; the message names the
        line, the byte offset and what to do.
    """
    path = os.fspath(path)
    check_encoding(encoding, path)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path} not found")
    with tf.io.gfile.GFile(path, "rb") as f:
        data = f.read()
    codec = "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding
    try:
        return data.decode(codec)
    except UnicodeDecodeError as e:
        # utf-8-sig reports offsets after the 3-byte mark it dropped.
        offset = e.start + (3 if codec == "utf-8-sig" and data.startswith(codecs.BOM_UTF8) else 0)
        line, column = _line_and_column(data, offset)
        bad = data[offset : offset + 1].hex()
        raise MalformedCsvError(
            path,
            line,
            f"byte 0x{bad} at byte offset {offset} (column {column}) is not valid {encoding} "
            f"({e.reason}). Re-save the file as UTF-8, or name its encoding in the builder "
            "config field `csv_encoding` (e.g. 'cp1252'; docs/datasets.md).",
        ) from None


# ---------------------------------------------------------------------------------------
# CSV


class MalformedCsvError(ValueError):
    """A line of a metadata file that cannot be read; the message names the file and line."""

    def __init__(self, path: str, line: int, reason: str):
        super().__init__(f"{path}, line {line}: {reason}")
        self.path = path
        self.line = line


@dataclasses.dataclass(frozen=True)
class CsvRow:
    """One parsed CSV record with where it came from, for error messages.

    Attributes:
      path: the file.
      line: the line the record is on (1-based, counting blank and comment lines).
      fields: the stripped fields, one per column.
      columns: the column names, for messages.
      header_note: appended to errors of the file's first record when the file may have a
        header: says why that line was read as data.
    """

    path: str
    line: int
    fields: list[str]
    columns: tuple[str, ...] = ()
    header_note: str = ""

    def error(self, reason: str) -> MalformedCsvError:
        return MalformedCsvError(
            self.path, self.line, f"{reason} (row {self.fields}){self.header_note}"
        )

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


def _header_key(fields: Sequence[str]) -> tuple[str, ...]:
    """Header fields compared without case, surrounding spaces, or ' '/'-' vs '_'."""
    return tuple(f.strip().lower().replace(" ", "_").replace("-", "_") for f in fields)


def read_csv(
    path: str,
    columns: Sequence[str],
    *,
    headers: Sequence[Sequence[str]] = (),
    skip_comments: bool = False,
    skip_initial_space: bool = False,
    encoding: str = DEFAULT_ENCODING,
) -> Iterator[CsvRow]:
    """Yields the records of a CSV file, each with one stripped field per column.

    Tolerates a UTF-8 byte-order mark, CRLF line endings and blank lines. The first record
    is skipped as a header only when it reads like one of `headers` (ignoring case, spaces
    around fields and ' '/'-' vs '_'); otherwise it is data, and an error about it says
    why it was not taken as a header. With `skip_comments`, lines starting with '#' are
    skipped (AudioSet's header lines). With `skip_initial_space`, the space after each ','
    is dropped so that quoted fields after ', ' parse (AudioSet's
    `--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"`).

    Raises:
      FileNotFoundError: `path` does not exist.
      MalformedCsvError: bytes not valid in `encoding`; broken quoting; a field holding a
        line break (a quoted field spanning lines: usually a quote left open, which would
        shift every later field); a record with the wrong number of fields.
    """
    path = os.fspath(path)
    columns = tuple(columns)
    known_headers = {_header_key(h) for h in headers}
    header_note = ""
    if headers:
        shown = " or ".join(repr(",".join(h)) for h in headers)
        header_note = (
            f"; the first record is read as data: a header is recognised only when it reads {shown}"
        )
    reader = csv.reader(
        io.StringIO(read_text(path, encoding), newline=""),
        strict=True,
        skipinitialspace=skip_initial_space,
    )
    first = True
    while True:
        start = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise MalformedCsvError(
                path, start, f"bad CSV syntax in the record starting here: {e}"
            ) from None
        if not fields or (len(fields) == 1 and not fields[0].strip()):
            continue
        if skip_comments and fields[0].lstrip().startswith("#"):
            continue
        for i, field in enumerate(fields):
            if "\n" in field or "\r" in field:
                column = columns[i] if i < len(columns) else f"#{i + 1}"
                raise MalformedCsvError(
                    path,
                    start,
                    f"field {i + 1} ({column!r}) holds a line break, so the record runs on to "
                    f"line {reader.line_num}: {field!r}. A quote is probably left open; "
                    "no field may span lines: fix the quoting.",
                )
        if len(fields) != len(columns):
            raise MalformedCsvError(
                path,
                start,
                f"expected {len(columns)} fields ({','.join(columns)}), "
                f"found {len(fields)}: {fields}",
            )
        stripped = [field.strip() for field in fields]
        if first and _header_key(stripped) in known_headers:
            first = False
            continue
        yield CsvRow(path, start, stripped, columns, header_note if first else "")
        first = False


# ---------------------------------------------------------------------------------------
# The manual dir's files


@dataclasses.dataclass(eq=False)
class FileIndex(collections.abc.Mapping):
    """File name -> path relative to `root` of the files `index_files` found, and what the
    walk met on the way (each list holds 'relative path -> target' or 'path: reason').

    Attributes:
      root: the walked folder.
      paths: file name -> relative path (the first in sorted walk order).
      duplicates: relative paths of later files with an already indexed name (ignored).
      revisited: links to a folder already walked (a loop, or a second link to it): not
        walked again.
      outside: links whose target lies outside `root`: followed.
      broken: links whose target does not exist (or that loop onto themselves).
      unreadable: folders that could not be listed.
    """

    root: str
    paths: dict[str, str] = dataclasses.field(default_factory=dict)
    duplicates: list[str] = dataclasses.field(default_factory=list)
    revisited: list[str] = dataclasses.field(default_factory=list)
    outside: list[str] = dataclasses.field(default_factory=list)
    broken: list[str] = dataclasses.field(default_factory=list)
    unreadable: list[str] = dataclasses.field(default_factory=list)

    def __getitem__(self, name: str) -> str:
        return self.paths[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def counts(self) -> dict[str, int]:
        """What the walk met, by kind (for build reports)."""
        return {
            "duplicate_names": len(self.duplicates),
            "links_revisited": len(self.revisited),
            "links_outside": len(self.outside),
            "links_broken": len(self.broken),
            "unreadable_folders": len(self.unreadable),
        }

    def _add(self, name: str, relative: str) -> None:
        if name in self.paths:
            self.duplicates.append(relative)
        else:
            self.paths[name] = relative

    def log(self) -> None:
        """One log line per kind met: warnings, and an info line for the followed outside links."""
        root = self.root
        for items, message in (
            (self.duplicates, "files share a name with an earlier one and are ignored"),
            (
                self.revisited,
                "folder links lead to a folder already indexed (a link loop, or a second "
                "link to it) and are not walked again",
            ),
            (self.broken, "links are broken (their target is missing); their files are missing"),
            (self.unreadable, "folders could not be read; files in them are missing"),
        ):
            if items:
                _LOG.warning("%s: %d %s, e.g. %s", root, len(items), message, items[:3])
        if self.outside:
            _LOG.info(
                "%s: %d links lead outside it and are followed, e.g. %s",
                root,
                len(self.outside),
                self.outside[:3],
            )


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _walk_local(index: FileIndex, suffixes: tuple[str, ...]) -> None:
    """Fills `index` from a local folder: links followed, each folder walked once (by device
    and inode, which also catches bind-mount loops)."""
    root = os.fspath(index.root)
    root_real = os.path.realpath(root)

    def inside(real: str) -> bool:
        return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)

    root_stat = os.stat(root)
    walked = {(root_stat.st_dev, root_stat.st_ino)}

    def visit(folder: str, relative: str) -> None:
        try:
            with os.scandir(folder) as entries:
                listing = sorted(entries, key=lambda e: e.name)
        except OSError as e:
            index.unreadable.append(f"{relative or '.'}: {e.strerror or e}")
            return
        folders = []
        for entry in listing:
            path = _join(relative, entry.name)
            if entry.is_symlink():
                if not os.path.exists(entry.path):
                    index.broken.append(f"{path} -> {os.readlink(entry.path)}")
                    continue
                real = os.path.realpath(entry.path)
                if not inside(real):
                    index.outside.append(f"{path} -> {real}")
            try:
                is_folder = entry.is_dir()
            except OSError:
                is_folder = False
            if is_folder:
                folders.append((entry.path, path))
            elif entry.name.lower().endswith(suffixes):
                index._add(entry.name, path)
        for folder_path, path in folders:
            try:
                stat = os.stat(folder_path)
            except OSError as e:
                index.unreadable.append(f"{path}: {e.strerror or e}")
                continue
            key = (stat.st_dev, stat.st_ino)
            if key in walked:
                index.revisited.append(f"{path} -> {os.path.realpath(folder_path)}")
                continue
            walked.add(key)
            visit(folder_path, path)

    visit(root, "")


def _walk_remote(index: FileIndex, suffixes: tuple[str, ...]) -> None:
    """Fills `index` from a URL-style folder through tf.io.gfile (object stores have no links)."""
    root = index.root.rstrip("/")

    def unreadable(error) -> None:
        index.unreadable.append(str(error))

    for folder, subfolders, files in tf.io.gfile.walk(root, onerror=unreadable):
        subfolders.sort()  # walked in this order
        relative = folder[len(root) :].strip("/")
        for name in sorted(files):
            if name.lower().endswith(suffixes):
                index._add(name, _join(relative, name))


def index_files(root: str, suffixes: tuple[str, ...]) -> FileIndex:
    """Indexes the files under `root` (recursively) whose names end in one of `suffixes`.

    Suffixes are matched case-insensitively ('.mp4' also finds '.MP4'). Folders are walked
    in sorted order, a folder's files before its subfolders; when a name occurs twice, the
    first wins. Links to files and folders are followed, also when they lead outside
    `root` (a manual dir made of links into a shared store works); a folder reached again
    through a link is not walked again, so link loops end. Everything met on the way is
    counted in the returned index and logged (`FileIndex.log`).

    Raises:
      FileNotFoundError: `root` is not a folder.
    """
    root = os.fspath(root)
    if not tf.io.gfile.isdir(root):
        raise FileNotFoundError(f"manual dir not found or not a folder: {root}")
    index = FileIndex(root)
    suffixes = tuple(s.lower() for s in suffixes)
    if is_remote(root):
        _walk_remote(index, suffixes)
    else:
        _walk_local(index, suffixes)
    index.log()
    return index


# ---------------------------------------------------------------------------------------
# Build reports


class BuildReport:
    """Counts bad input of one split, logs the first few of each kind, writes JSON.

    A Beam-less build fills one report as its generator runs and writes it when the
    generator ends (also when it is closed early), so the JSON lands in the dataset
    directory TFDS renames into place on success. A Beam build fills one `row_report()`
    per row on the workers and sums them into the split's report (`beam_build`).
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
        manual_dir: dict[str, int] | None = None,
    ):
        self.dataset, self.config, self.version, self.split = dataset, config, version, split
        # What the walk over the manual dir met (`FileIndex.counts`), shared by all splits.
        self.manual_dir = dict(manual_dir or {})
        self.max_logged = max_logged
        self.max_listed = max_listed
        self.rows = 0
        self.written = 0
        self.counts = {kind: 0 for kind in (*SKIPPED_KINDS, *KEPT_KINDS)}
        self.skipped = {kind: 0 for kind in SKIPPED_KINDS}
        self.first: dict[str, list[dict[str, str]]] = {}

    def row_report(self) -> BuildReport:
        """An empty report of the same split for one row, which logs nothing (the split's
        report logs the first cases of each kind once the rows' reports are summed)."""
        return BuildReport(
            self.dataset,
            self.config,
            self.version,
            self.split,
            max_logged=0,
            max_listed=self.max_listed,
        )

    @classmethod
    def from_dict(cls, values: dict) -> BuildReport:
        """The report `as_dict` (the JSON file) holds."""
        report = cls(
            values["dataset"],
            values["config"],
            values["version"],
            values["split"],
            manual_dir=values["manual_dir"],
        )
        report.rows, report.written = values["csv_rows"], values["examples_written"]
        report.counts.update(values["counts"])
        report.skipped.update(values["skipped"])
        report.first = {kind: list(entries) for kind, entries in values["first"].items()}
        return report

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
            self._log_case(kind, name, detail)
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
            "manual_dir": self.manual_dir,
        }

    def summary(self) -> str:
        bad = ", ".join(f"{k}={v}" for k, v in self.counts.items() if v) or "no bad input"
        walk = ", ".join(f"{k}={v}" for k, v in self.manual_dir.items() if v)
        return (
            f"[{self.dataset}/{self.config} {self.split}] {self.written} examples written "
            f"from {self.rows} rows; {bad}" + (f"; manual dir: {walk}" if walk else "")
        )

    def _log_case(self, kind: str, name: str, detail: str) -> None:
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

    def log_listed(self) -> None:
        """Logs the first `max_logged` listed cases of each kind (what `add` logs as it goes)."""
        for kind, entries in self.first.items():
            for entry in entries[: self.max_logged]:
                self._log_case(kind, entry["name"], entry["detail"])

    def path(self, directory: str) -> str:
        """Where `write` puts this report in `directory`."""
        directory = os.fspath(directory)
        directory = directory.rstrip("/") if is_remote(directory) else os.path.normpath(directory)
        return os.path.join(directory, f"build_report_{self.split}.json")

    def announce(self, path: str, complete: bool = True) -> None:
        """Prints and logs the summary line of the report written to `path`.

        During `download_and_prepare` TFDS builds into `<config dir>/incomplete.XXXX_<version>`
        and renames it to `<config dir>/<version>` on success; the message names the latter.
        """
        directory, filename = os.path.split(path)
        shown = path
        if os.path.basename(directory).startswith("incomplete."):
            shown = os.path.join(os.path.dirname(directory), self.version, filename)
        message = self.summary() + ("" if complete else " (stopped early)") + f"; report: {shown}"
        print(message, flush=True)
        _LOG.info(message)

    def write(self, directory: str, complete: bool = True, *, announce: bool = True) -> str:
        """Writes `build_report_<split>.json` into `directory` and returns its path; with
        `announce`, also prints the summary line (`BuildReport.announce`)."""
        path = self.path(directory)
        tf.io.gfile.makedirs(os.path.dirname(path))
        with tf.io.gfile.GFile(path, "w") as f:
            f.write(json.dumps(self.as_dict(complete), indent=2))
        if announce:
            self.announce(path, complete)
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
