"""plot.png of an experiment from its table (the table.json dict), with matplotlib's Agg backend.

Each factory returns `plot(table, path)`; the table holds `metric` and `rows` (one dict per
finished run: `run`, the swept keys, the metric, `gflops`, `params`, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

Table = Mapping[str, Any]
PlotFn = Callable[[Table, str], None]

_LABELS = {"gflops": "GFLOPs per example (inference)", "train_memory_mib": "train activation MiB"}


def _pyplot():
    import matplotlib  # pylint: disable=g-import-not-at-top

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

    return plt


def _finish(fig, path: str, title: str) -> None:
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)


def _few_ticks(axis, integer: bool = False) -> None:
    """At most 6 tick labels, so long ones (0.0017..., tiny GFLOP counts) do not overlap."""
    from matplotlib import ticker  # pylint: disable=g-import-not-at-top

    axis.set_major_locator(ticker.MaxNLocator(nbins=5, integer=integer))


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def lines_plot(x_key: str, series_key: str | None, x_label: str, *, log_x: bool = False) -> PlotFn:
    """Two panels, the metric and GFLOPs vs `x_key`, one line per value of `series_key`."""

    def plot(table: Table, path: str) -> None:
        plt = _pyplot()
        metric = table["metric"]
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        series: dict[str, list[Mapping[str, Any]]] = {}
        for row in table["rows"]:
            if _number(row.get(x_key)) is not None:
                series.setdefault(str(row.get(series_key, "")) if series_key else "", []).append(
                    row
                )
        for ax, key in zip(axes, (metric, "gflops")):
            for name, rows in series.items():
                rows = sorted(rows, key=lambda r: float(r[x_key]))
                points = [(float(r[x_key]), _number(r.get(key))) for r in rows]
                points = [(x, y) for x, y in points if y is not None]
                if points:
                    ax.plot(*zip(*points), marker="o", label=name or None)
            ax.set_xlabel(x_label)
            ax.set_ylabel(_LABELS.get(key, key))
            if log_x:
                ax.set_xscale("log", base=2)
            else:
                xs = [r[x_key] for rows in series.values() for r in rows]
                _few_ticks(ax.xaxis, integer=all(isinstance(x, int) for x in xs))
            _few_ticks(ax.yaxis)
            ax.grid(alpha=0.3)
            if series_key and series:
                ax.legend(fontsize=8)
        _finish(fig, path, f"{table['experiment']} ({table.get('figure', '')})")

    return plot


def bars_plot() -> PlotFn:
    """Two panels of bars, one per run: the metric and GFLOPs."""

    def plot(table: Table, path: str) -> None:
        plt = _pyplot()
        metric, rows = table["metric"], table["rows"]
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        names = [r["run"] for r in rows]
        for ax, key in zip(axes, (metric, "gflops")):
            ax.bar(range(len(rows)), [_number(r.get(key)) or 0.0 for r in rows])
            ax.set_xticks(range(len(rows)), names, rotation=30, ha="right", fontsize=8)
            ax.set_ylabel(_LABELS.get(key, key))
            ax.grid(alpha=0.3, axis="y")
        _finish(fig, path, f"{table['experiment']} ({table.get('figure', '')})")

    return plot


def scatter_plot(x_keys: Sequence[str]) -> PlotFn:
    """One panel per key of `x_keys`: the metric vs that cost, each run a labelled point."""

    def plot(table: Table, path: str) -> None:
        plt = _pyplot()
        metric, rows = table["metric"], table["rows"]
        fig, axes = plt.subplots(1, len(x_keys), figsize=(5 * len(x_keys), 4), squeeze=False)
        for ax, key in zip(axes[0], x_keys):
            for row in rows:
                x, y = _number(row.get(key)), _number(row.get(metric))
                if x is None or y is None:
                    continue
                ax.scatter([x], [y])
                ax.annotate(
                    row["run"], (x, y), fontsize=8, textcoords="offset points", xytext=(4, 4)
                )
            ax.set_xlabel(_LABELS.get(key, key))
            ax.set_ylabel(metric)
            _few_ticks(ax.xaxis)
            ax.grid(alpha=0.3)
        _finish(fig, path, f"{table['experiment']} ({table.get('figure', '')})")

    return plot


def noise_plot() -> PlotFn:
    """One panel per noised target (audio, video, both): the metric vs SNR, clean at the left,
    one line per run (`row['noise'][target][snr]`)."""

    def plot(table: Table, path: str) -> None:
        plt = _pyplot()
        rows = [r for r in table["rows"] if r.get("noise")]
        targets = [t for t in ("audio", "video", "both") if any(t in r["noise"] for r in rows)]
        fig, axes = plt.subplots(
            1, max(1, len(targets)), figsize=(4.5 * max(1, len(targets)), 4), squeeze=False
        )
        for ax, target in zip(axes[0], targets):
            snrs: list[float] = []
            for row in rows:
                by_snr = row["noise"].get(target) or {}
                snrs = sorted({float(s) for s in by_snr}, reverse=True)
                if not snrs:
                    continue
                clean_x = snrs[0] + 10.0
                ax.plot(
                    [clean_x] + snrs,
                    [row["noise"]["clean"]] + [by_snr[f"{s:g}"] for s in snrs],
                    marker="o",
                    label=row["run"],
                )
            if snrs:
                ax.set_xticks([snrs[0] + 10.0] + snrs, ["∞"] + [f"{s:g}" for s in snrs])
            ax.invert_xaxis()
            ax.set_title(f"noise on {target}")
            ax.set_xlabel("SNR (dB)")
            ax.set_ylabel(table.get("noise_metric", table["metric"]))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        _finish(fig, path, f"{table['experiment']} ({table.get('figure', '')})")

    return plot
