"""The Beam path of a media build: each split's `ClipReader` on a Beam runner's workers.

`ManualMediaBuilder._generate_examples` returns `ReadClips` instead of a generator when TFDS
was given a Beam runner (`tfds build ... --beam_pipeline_options=runner=...`); TFDS applies
it to its pipeline, then encodes the examples and writes the shards. Per split:

    row chunks --ReadClipsFn--> (key, example) ---------> TFDS encodes and writes the shards
                           \\--> each row's report, tagged "report"
                                --ReportCombineFn--> the split's build_report_<split>.json

- The located rows are staged as pickled chunks of `ROWS_PER_CHUNK` rows in
  `<data_dir>/beam_rows/<split>/`, not embedded in the pipeline with `beam.Create(rows)`:
  AudioSet-2M's two million rows would make a pipeline graph of hundreds of MB, beyond what
  Dataflow accepts. A chunk is the unit of work (a few minutes of decoding); `finish`
  removes the folder after the run (TFDS removes the whole unfinished folder on failure).
- The build report travels as a side output, not as metrics: every row's report (also a
  good row's, so rows and written examples are counted) leaves the DoFn tagged "report",
  and `CombineGlobally(ReportCombineFn)` sums them into the split's report, which one worker
  writes. The counts travel with the data, through the runner's shuffle, so no worker
  process's cases can be lost. The listed names of each kind are those of the earliest
  rows, as on the Beam-less path: both paths write the same JSON.
- Beam counters (namespace `COUNTER_NAMESPACE`, names `<split>/<kind>`, `<split>/csv_rows`,
  `<split>/examples_written`) count the same cases for watching a running job (Dataflow's
  job page); `finish` compares them with the reports and returns them.
- Workers import pickled classes by module name. A builder loaded from its file (`tfds
  build mbt/data/builders/vggsound.py` imports it as `builders.vggsound`, through a
  `sys.path` entry only the launching process had) has its module pickled by value instead.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import importlib.machinery
import json
import logging
import math
import os
import sys

import apache_beam as beam
import tensorflow as tf
from apache_beam.internal import pickler
from apache_beam.internal.cloudpickle import cloudpickle
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter

from mbt.data.builders import base
from mbt.data.builders import common

ROWS_PER_CHUNK = 256
# Small splits are cut finer, so that every worker gets rows.
MIN_CHUNKS = 64
STAGING_FOLDER = "beam_rows"
REPORT_TAG = "report"
COUNTER_NAMESPACE = "mbt.build_report"
_STAGING_THREADS = 16

_LOG = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------
# Staged rows


def staging_dir(data_dir: str, split: str) -> str:
    return os.path.join(data_dir, STAGING_FOLDER, split)


def stage_rows(located: list[base.LocatedRow], directory: str) -> list[str]:
    """Writes `(row index, row)` pairs in chunks to `directory`; returns the chunk paths."""
    per_chunk = max(1, min(ROWS_PER_CHUNK, math.ceil(len(located) / MIN_CHUNKS)))
    starts = range(0, len(located), per_chunk)
    paths = [
        os.path.join(directory, f"chunk-{i:05d}-of-{len(starts):05d}.pkl")
        for i in range(len(starts))
    ]
    tf.io.gfile.makedirs(directory)

    def write(i: int) -> None:
        stop = min(starts[i] + per_chunk, len(located))
        rows = [(j, located[j]) for j in range(starts[i], stop)]
        with tf.io.gfile.GFile(paths[i], "wb") as f:
            f.write(pickler.dumps(rows))

    with concurrent.futures.ThreadPoolExecutor(_STAGING_THREADS) as pool:
        list(pool.map(write, range(len(paths))))  # list() re-raises a failed write
    return paths


def load_rows(path: str) -> list[tuple[int, base.LocatedRow]]:
    with tf.io.gfile.GFile(path, "rb") as f:
        return pickler.loads(f.read())


def _importable_by_name(module_name: str) -> bool:
    """Whether a fresh interpreter with this `sys.path` finds the module's top package."""
    top = module_name.partition(".")[0]
    if top in sys.builtin_module_names or top == "__main__":
        return top != "__main__"
    return importlib.machinery.PathFinder.find_spec(top, sys.path) is not None


def _pickle_by_value_where_needed(*objects) -> None:
    """Has the modules of `objects`' classes pickled by value when workers could not import
    them by name (a builder loaded from its file path)."""
    for obj in objects:
        name = type(obj).__module__
        registered = cloudpickle.list_registry_pickle_by_value()
        if name in sys.modules and name not in registered and not _importable_by_name(name):
            cloudpickle.register_pickle_by_value(sys.modules[name])
            _LOG.info("Module %s is not importable by name: Beam workers get it by value.", name)


# ---------------------------------------------------------------------------------------
# Reading clips


class ReadClipsFn(beam.DoFn):
    """Chunk path -> (key, example) for each kept row, and (row index, row report) for
    every row on the tagged output `REPORT_TAG`."""

    def __init__(self, reader: base.ClipReader, report: common.BuildReport):
        self._reader = reader
        self._report = report  # the split's empty report: names the split in row reports

    def setup(self):
        self._reader.open()

    def teardown(self):
        self._reader.close()

    def process(self, chunk_path: str):
        split = self._report.split
        for index, located in load_rows(chunk_path):
            report = self._report.row_report()
            keyed = self._reader.read(located, report)
            Metrics.counter(COUNTER_NAMESPACE, f"{split}/csv_rows").inc(report.rows)
            Metrics.counter(COUNTER_NAMESPACE, f"{split}/examples_written").inc(report.written)
            for kind, count in report.counts.items():
                if count:
                    Metrics.counter(COUNTER_NAMESPACE, f"{split}/{kind}").inc(count)
            yield beam.pvalue.TaggedOutput(REPORT_TAG, (index, report))
            if keyed is not None:
                yield keyed


@dataclasses.dataclass
class Tally:
    """The sum of row reports: counts, and the listed cases of the earliest rows.

    Attributes:
      listed: kind -> [(row index, position of the kind in the row's report, entry)],
        sorted, at most `max_listed` long.
    """

    max_listed: int
    rows: int = 0
    written: int = 0
    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    listed: dict[str, list[tuple[int, int, dict]]] = dataclasses.field(default_factory=dict)

    def add_row(self, index: int, report: common.BuildReport) -> None:
        self.rows += report.rows
        self.written += report.written
        self.counts.update(report.counts)
        self.skipped.update(report.skipped)
        for position, (kind, entries) in enumerate(report.first.items()):
            self._list(kind, [(index, position, entry) for entry in entries])

    def merge(self, other: Tally) -> None:
        self.rows += other.rows
        self.written += other.written
        self.counts.update(other.counts)
        self.skipped.update(other.skipped)
        for kind, entries in other.listed.items():
            self._list(kind, entries)

    def _list(self, kind: str, entries: list[tuple[int, int, dict]]) -> None:
        merged = self.listed.get(kind, []) + entries
        merged.sort(key=lambda item: item[:2])
        self.listed[kind] = merged[: self.max_listed]

    def fill(self, report: common.BuildReport) -> None:
        """Sets `report`'s counts and lists (kinds in the order they first occur)."""
        report.rows, report.written = self.rows, self.written
        report.counts.update(self.counts)
        report.skipped.update({k: v for k, v in self.skipped.items() if k in report.skipped or v})
        listed = [(kind, entries) for kind, entries in self.listed.items() if entries]
        by_first = sorted(listed, key=lambda item: item[1][0][:2])
        report.first = {kind: [entry for *_, entry in entries] for kind, entries in by_first}


class ReportCombineFn(beam.CombineFn):
    """(row index, row report) pairs -> their `Tally`."""

    def __init__(self, max_listed: int):
        self._max_listed = max_listed

    def create_accumulator(self) -> Tally:
        return Tally(self._max_listed)

    def add_input(self, tally: Tally, indexed: tuple[int, common.BuildReport]) -> Tally:
        tally.add_row(*indexed)
        return tally

    def merge_accumulators(self, tallies) -> Tally:
        first, *rest = tallies
        for tally in rest:
            first.merge(tally)
        return first

    def extract_output(self, tally: Tally) -> Tally:
        return tally


def _write_report(tally: Tally, report: common.BuildReport, data_dir: str) -> None:
    tally.fill(report)
    report.log_listed()
    # Printed on the launching machine by `finish`; a worker's stdout may be anywhere.
    report.write(data_dir, complete=True, announce=False)


class ReadClips(beam.PTransform):
    """The examples of one split, read by `reader` on the workers; writes its report.

    Args:
      reader: the builder's `ClipReader` (pickled to the workers).
      located: the split's rows, in CSV order.
      report: the split's empty report (its `manual_dir` counts already set).
      data_dir: the folder TFDS builds into (read and written by the workers).
    """

    def __init__(
        self,
        reader: base.ClipReader,
        located: list[base.LocatedRow],
        report: common.BuildReport,
        data_dir: str,
    ):
        super().__init__()
        self._reader, self._located, self._report, self._data_dir = (
            reader,
            located,
            report,
            data_dir,
        )

    def expand(self, pbegin):
        split = self._report.split
        _pickle_by_value_where_needed(self._reader, self._reader.config, self._located[0].row)
        chunks = stage_rows(self._located, staging_dir(self._data_dir, split))
        self._located = []  # staged: nothing more to carry
        outputs = (
            pbegin
            | "RowChunks" >> beam.Create(chunks)
            | "ReadClips"
            >> beam.ParDo(ReadClipsFn(self._reader, self._report)).with_outputs(
                REPORT_TAG, main="examples"
            )
        )
        _ = (
            outputs[REPORT_TAG]
            | "SumReports" >> beam.CombineGlobally(ReportCombineFn(self._report.max_listed))
            | "WriteReport" >> beam.Map(_write_report, self._report, self._data_dir)
        )
        return outputs["examples"]


# ---------------------------------------------------------------------------------------
# After the run


def counters(pipeline_result) -> dict[str, dict[str, int]]:
    """split -> counter name -> value of the `COUNTER_NAMESPACE` counters (committed where
    the runner reports them, else attempted)."""
    found: dict[str, dict[str, int]] = {}
    query = pipeline_result.metrics().query(MetricsFilter().with_namespace(COUNTER_NAMESPACE))
    for result in query["counters"]:
        split, _, name = result.key.metric.name.partition("/")
        value = result.committed if result.committed is not None else result.attempted
        found.setdefault(split, {}).setdefault(name, 0)
        found[split][name] += value or 0
    return found


def _reported(report: common.BuildReport) -> dict[str, int]:
    """The report's numbers under the counters' names."""
    return {
        "csv_rows": report.rows,
        "examples_written": report.written,
        **{kind: count for kind, count in report.counts.items() if count},
    }


def finish(pipeline_result, data_dir: str, splits: list[str]) -> dict[str, dict[str, int]]:
    """Removes the staged rows, prints each split's report summary, returns the counters.

    A counter that disagrees with its report is logged (the report is what the rows'
    outcomes say; a runner may report metrics late or not at all).
    """
    staged = os.path.join(data_dir, STAGING_FOLDER)
    if tf.io.gfile.exists(staged):
        tf.io.gfile.rmtree(staged)
    counted = counters(pipeline_result)
    disagree = []
    for split in splits:
        path = os.path.join(data_dir, f"build_report_{split}.json")
        with tf.io.gfile.GFile(path) as f:
            report = common.BuildReport.from_dict(json.load(f))
        report.announce(path)
        if counted.get(split, {}) != _reported(report):
            disagree.append(split)
            _LOG.warning(
                "%s %s: Beam counters %s differ from the build report %s.",
                report.dataset,
                split,
                counted.get(split),
                _reported(report),
            )
    agreement = f"differ in {disagree}" if disagree else "agree"
    print(f"Beam build of {splits}: the Beam counters {agreement} with the reports.", flush=True)
    return counted
