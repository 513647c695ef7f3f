"""`collect`: the table of whatever runs of an experiment have finished.

Writes, in the experiment's `--out`:
- `table.json`: `{"experiment", "figure", "description", "data", "commands", "metric",
  "rows": [{"run", <swept key>: value, ..., <metric>: value, "gflops", "params",
  "train_seconds", ...}], "unfinished": [run names]}` plus the experiment's own entries;
- `table.md`: the same as markdown, naming the runs that have not finished;
- `plot.png`: the experiment's plot.

`gflops` is the per-example inference count of `mbt.tools.flops` (analytic, 1 multiply-add =
1 FLOP) at the run's input shapes and class count; `params` its parameter count;
`train_memory_mib` (where the experiment asks for it) XLA's temporary-buffer size of the
compiled forward + backward pass at the run's global batch on one device, the activation
memory estimate of `mbt.tools.bench`. They are measured once per run and kept in its record.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections

from mbt import metrics as metrics_lib
from mbt import models
from mbt import workdir as workdir_lib
from mbt.data import registry
from mbt.experiments import records
from mbt.experiments.catalogue import Experiment
from mbt.tools import bench
from mbt.tools import flops

_LOG = logging.getLogger(__name__)

TABLE_JSON, TABLE_MD, PLOT_PNG = "table.json", "table.md", "plot.png"


def metric_name(config: ml_collections.ConfigDict) -> str:
    """The dataset's headline metric: 'map' (multi-label), 'action_top1' (verb + noun) or
    'top1'."""
    dataset = config.dataset
    spec = registry.get(dataset.name, dataset.get("imports") or ())
    if spec.label_kind == registry.FROM_CONFIG:
        multi_label, splits = bool(dataset.get("multi_label")), dataset.get("class_splits")
    else:
        multi_label = spec.label_kind == registry.MULTI_LABEL
        splits = spec.class_splits if spec.label_kind == registry.CLASS_SPLITS else None
    return metrics_lib.primary_metric_name(multi_label, tuple(splits) if splits else None)


def train_activation_bytes(
    model_config: ml_collections.ConfigDict,
    input_shapes: Mapping[str, tuple[int, ...]],
    num_classes: int,
    batch_size: int,
) -> int | None:
    """XLA's temporary buffers (bytes) of the compiled forward + backward pass (gradients of a
    sigmoid cross-entropy) at `batch_size` on one device; compiled from shapes only."""
    model = models.build_model(model_config, num_classes)
    inputs = flops.input_structs(input_shapes, batch_size)
    params = flops.abstract_params(model, inputs)
    labels = jax.ShapeDtypeStruct((batch_size, num_classes), jax.numpy.float32)

    compiled = jax.jit(bench.loss_and_grads(model)).lower(
        params, inputs, labels, jax.random.PRNGKey(0)
    )
    memory = compiled.compile().memory_analysis()
    value = getattr(memory, "temp_size_in_bytes", None) if memory is not None else None
    return None if value is None else int(value)


def compute_stats(
    config: ml_collections.ConfigDict, record: Mapping[str, Any], train_memory: bool
) -> dict[str, Any]:
    """`{'gflops', 'params'[, 'train_memory_mib']}` of a run's model at its data's shapes.

    The parameter count is the record's `num_params` (counted from the trained state) where
    it has one; otherwise, and for a family without an analytic count, the model is traced.
    """
    shapes = {m: tuple(s) for m, s in (record.get("input_shapes") or {}).items()}
    shapes = shapes or flops.input_shapes_from_config(config)
    num_classes = int(record.get("num_classes") or flops.num_classes_from_config(config))
    analytic = flops.analytic_count(config.model, shapes, num_classes)
    num_params = record.get("num_params")
    if analytic is not None:
        gflops = analytic.total / 1e9
    else:  # a family without an analytic count: XLA's, in multiply-adds
        lowered = flops.analyse(config.model, shapes, num_classes, xla="lowered")
        gflops, num_params = (lowered.xla_gflops or math.nan) / 2, lowered.num_params
    if num_params is None:
        num_params = flops.analyse(config.model, shapes, num_classes, xla="none").num_params
    stats: dict[str, Any] = {"gflops": gflops, "params": int(num_params)}
    if train_memory:
        temp = train_activation_bytes(config.model, shapes, num_classes, int(config.batch_size))
        stats["train_memory_mib"] = None if temp is None else temp / 2**20
    return stats


def noise_summary(workdir: str) -> dict[str, Any] | None:
    """`{'metric', 'split', 'clean': v, <target>: {'<snr>': v}}` of the run's robustness.json."""
    report = records.read_json(os.path.join(workdir, records.ROBUSTNESS_FILE))
    if report is None:
        return None
    metric = report["metric"]
    summary: dict[str, Any] = {"metric": metric, "split": report.get("split")}
    for condition in report["conditions"]:
        value = condition["metrics"].get(metric)
        if condition["target"] == "none":
            summary["clean"] = value
        elif condition.get("snr_db") is not None:
            summary.setdefault(condition["target"], {})[f"{condition['snr_db']:g}"] = value
    return summary


def run_row(
    workdir: str, name: str, swept: Mapping[str, Any], experiment: Experiment
) -> dict[str, Any] | None:
    """The table row of a finished run (None while it has not finished)."""
    record = records.run_record(workdir)
    results = records.test_results(workdir)
    if not record.get("finished") or results is None:
        return None
    config = workdir_lib.load_config(workdir)
    metric = metric_name(config)
    compute = record.get("compute") or {}
    if "gflops" not in compute or (experiment.train_memory and "train_memory_mib" not in compute):
        compute = compute_stats(config, record, experiment.train_memory)
        records.save_run_record(workdir, {**record, "compute": compute})
    row = {
        "run": name,
        **swept,
        metric: results["metrics"].get(metric),
        **compute,
        "train_seconds": record.get("train_seconds"),
    }
    noise = noise_summary(workdir)
    if noise is not None:
        row["noise"] = noise
    return row


def _cell(value: Any, key: str = "") -> str:
    """A table cell: '–' for None, params with thousands separators, seconds and MiB to 0.1,
    GFLOPs to 4 significant digits below 1, other floats to 4 decimals."""
    if value is None:
        return "–"
    if isinstance(value, bool) or isinstance(value, str):
        return str(value)
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    if key == "params":
        return f"{value:,.0f}"
    if isinstance(value, int):
        return str(value)
    if key in ("train_seconds", "train_memory_mib"):
        return f"{value:,.1f}"
    if key == "gflops":
        return f"{value:.3f}" if abs(value) >= 1 else f"{value:.4g}"
    return f"{value:.4f}"


_COST_COLUMNS = ("gflops", "params", "train_memory_mib", "train_seconds")
_HEADINGS = {
    "gflops": "GFLOPs",
    "params": "params",
    "train_memory_mib": "train MiB",
    "train_seconds": "train s",
}


def markdown(table: Mapping[str, Any]) -> str:
    """table.md: heading, commands, the runs' table, the unfinished runs and the experiment's
    extras."""
    metric, rows = table["metric"], table["rows"]
    swept: list[str] = []
    for row in rows:
        swept += [
            k for k in row if k not in ("run", metric, "noise", *_COST_COLUMNS) and k not in swept
        ]
    costs = [c for c in _COST_COLUMNS if any(c in row for row in rows)]
    columns = ["run", *swept, metric, *costs]
    lines = [
        f"# {table['experiment']} ({table['figure']})",
        "",
        f"{table['description']}.",
        "",
        f"Data `{table['data']}`; made by:" if table.get("commands") else "",
        "",
        *(f"    {command}" for command in table.get("commands") or []),
        "",
        f"`{metric}` on the test split (all test views); GFLOPs per example at inference "
        "(1 multiply-add = 1 FLOP); train s = wall seconds of training on the machine that ran it.",
        "",
        "| " + " | ".join(_HEADINGS.get(c, c) for c in columns) + " |",
        "|" + "---|" * len(columns),
    ]
    lines += ["| " + " | ".join(_cell(row.get(c), c) for c in columns) + " |" for row in rows]
    unfinished = table["unfinished"]
    total = len(rows) + len(unfinished)
    lines += [
        "",
        f"Not finished: {len(unfinished)} of {total} runs ({', '.join(unfinished)})."
        if unfinished
        else f"All {total} runs finished.",
    ]
    lines += _noise_lines(rows) + _per_class_lines(table)
    return "\n".join(line for line in lines if line is not None) + "\n"


def _noise_lines(rows: list[Mapping[str, Any]]) -> list[str]:
    noisy = [r for r in rows if r.get("noise")]
    if not noisy:
        return []
    first = noisy[0]["noise"]
    snrs = sorted(
        {s for r in noisy for t in ("audio", "video", "both") for s in r["noise"].get(t, {})},
        key=float,
        reverse=True,
    )
    lines = [
        "",
        f"White noise on the model inputs: `{first['metric']}` on split `{first['split']}` "
        "(one view per video), clean and at each SNR (dB):",
        "",
        "| run | noise on | clean | " + " | ".join(f"{s} dB" for s in snrs) + " |",
        "|" + "---|" * (len(snrs) + 3),
    ]
    for row in noisy:
        for target in ("audio", "video", "both"):
            values = row["noise"].get(target)
            if values:
                cells = [_cell(values.get(s)) for s in snrs]
                lines.append(
                    f"| {row['run']} | {target} | {_cell(row['noise'].get('clean'))} | "
                    + " | ".join(cells)
                    + " |"
                )
    return lines


def _per_class_lines(table: Mapping[str, Any]) -> list[str]:
    from mbt.experiments import per_class  # pylint: disable=g-import-not-at-top

    if per_class.KEY not in table:
        return []
    found = table[per_class.KEY]
    if found is None:
        return ["", f"Per-class comparison unavailable: {table.get(per_class.KEY + '_missing')}."]
    return [
        "",
        f"Fusion beats audio only on {found['fusion_better']} of {found['classes']} classes "
        f"(per-class {found['metric']}; audio only better on {found['audio_better']}, equal on "
        f"{found['equal']}).",
    ]


def collect(
    experiment: Experiment, out: str, runs: Mapping[str, Mapping[str, Any]], info: Mapping[str, Any]
) -> dict[str, Any]:
    """Writes table.json, table.md and plot.png for the finished runs among `runs` (name ->
    swept values) in `out`; returns the table. `info` adds `data` and `commands` (the `run`
    commands that made them)."""
    rows, unfinished = [], []
    for name, swept in runs.items():
        row = run_row(os.path.join(out, name), name, swept, experiment)
        if row is None:
            unfinished.append(name)
        else:
            rows.append(row)
    metric = next(
        (k for k in ("map", "action_top1", "top1") if any(k in row for row in rows)), "top1"
    )
    table: dict[str, Any] = {
        "experiment": experiment.name,
        "figure": experiment.figure,
        "description": experiment.description,
        "data": info.get("data"),
        "commands": list(info.get("commands") or []),
        "metric": metric,
        "rows": rows,
        "unfinished": unfinished,
    }
    if experiment.summary is not None:
        table.update(experiment.summary(out, rows))
    os.makedirs(out, exist_ok=True)
    records.write_json(os.path.join(out, TABLE_JSON), table)
    with open(os.path.join(out, TABLE_MD), "w", encoding="utf-8") as f:
        f.write(markdown(table))
    experiment.plot(table, os.path.join(out, PLOT_PNG))
    _LOG.info(
        "%s: %d of %d runs finished; wrote %s",
        experiment.name,
        len(rows),
        len(runs),
        ", ".join(os.path.join(out, n) for n in (TABLE_JSON, TABLE_MD, PLOT_PNG)),
    )
    return table
