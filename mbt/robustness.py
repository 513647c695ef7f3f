"""Robustness of a trained model to white noise and to a missing modality.

    python -m mbt.main --config=<file.py> --workdir=DIR --mode=robustness

Restores the latest checkpoint of `DIR` (as `--mode=evaluate` does) and runs the single-view
evaluation of the eval split once per condition:

- clean inputs (SNR = infinity);
- white Gaussian noise at SNR 20, 10, 5, 0, -5 dB added to the audio, the video or both;
- one modality removed, in two ways where the model allows it:
  `zeros` -- its input replaced by zeros (every model);
  `tokens` -- the model run without that modality's tokens (`mbt.branches.branch_model`; MBT:
  the same model on the other modality sharing the trained parameters; SFT: the same model
  on the remaining modality, whose CLS alone forms the fused CLS). The C-LSTM has no such
  mode (its fused layers take a fixed number of input channels and its late-fusion head a
  fixed feature width), so only `zeros` runs for it.

The noise is added to the *model inputs*, not to waveforms or pixels: to the normalised
log-mel spectrogram (`spectrogram`) and to the rgb frames scaled to [-1, 1] (`rgb`, and any
other video-like modality). Per example and modality, the noise power is
`P_signal / 10^(SNR/10)` with `P_signal = mean(x²)` over all of that example's values; the
drawn Gaussian noise is rescaled so its own mean square equals that power exactly (so the
measured SNR is the requested one, not a random draw around it). A zero input (a padding row)
gets no noise. Zeros for a removed modality are the pipeline's mean value for both inputs (the
spectrogram is normalised, rgb 0 is mid-grey).

Writes `<workdir>/robustness.json` (every condition's metrics), `robustness.md` (tables of
the headline metric) and `robustness.png` (headline metric vs SNR, one line per noised target,
one horizontal line per removal condition).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from mbt import branches
from mbt import evaluate as evaluate_lib
from mbt import metrics as metrics_lib
from mbt import models
from mbt import sharding
from mbt import train
from mbt import train_step as step_lib

_LOG = logging.getLogger(__name__)

SNRS_DB = (20.0, 10.0, 5.0, 0.0, -5.0)  # the noisy conditions; clean (infinity) runs once
VIDEO_LIKE = ("rgb", "flow")
AUDIO_LIKE = ("spectrogram",)
# Noise target name -> the input modalities it covers.
TARGETS = {"audio": AUDIO_LIKE, "video": VIDEO_LIKE, "both": AUDIO_LIKE + VIDEO_LIKE}
# How a removed modality is removed: its input set to zeros, or its tokens left out.
REMOVALS = ("zeros", "tokens")

Batch = Mapping[str, np.ndarray]


def add_white_noise(x_BxDims: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """`x` plus white Gaussian noise at `snr_db` per example (axis 0 is the batch).

    Noise power per example = mean(x²) / 10^(snr_db / 10); the noise is rescaled to exactly
    that mean square. Examples that are all zeros are returned unchanged. float32 out.
    """
    x = np.asarray(x_BxDims, np.float32)
    if not math.isfinite(snr_db):
        return x.copy()
    axes = tuple(range(1, x.ndim))
    signal_power = np.mean(np.square(x, dtype=np.float64), axis=axes, keepdims=True)
    noise = rng.standard_normal(x.shape)
    noise_power = np.mean(np.square(noise), axis=axes, keepdims=True)
    scale = np.sqrt(signal_power / 10.0 ** (snr_db / 10.0) / np.maximum(noise_power, 1e-30))
    return (x + noise * scale).astype(np.float32)


def measured_snr_db(clean_BxDims: np.ndarray, noisy_BxDims: np.ndarray) -> np.ndarray:
    """Per-example 10·log10(mean(clean²) / mean((noisy − clean)²)), `[batch]` in dB."""
    clean = np.asarray(clean_BxDims, np.float64)
    noise = np.asarray(noisy_BxDims, np.float64) - clean
    axes = tuple(range(1, clean.ndim))
    return 10.0 * np.log10(np.mean(clean**2, axis=axes) / np.mean(noise**2, axis=axes))


class Condition:
    """One evaluation: noise on `noised` modalities at `snr_db`, or `dropped` modalities removed.

    `removal` says how `dropped` are removed: 'zeros' (inputs set to zeros) or 'tokens' (the
    batch loses them and a model without them runs, see `mbt.branches`); None when nothing is.
    """

    def __init__(
        self,
        name: str,
        target: str,
        snr_db: float = math.inf,
        noised: Sequence[str] = (),
        dropped: Sequence[str] = (),
        removal: str | None = None,
    ):
        self.name, self.target, self.snr_db = name, target, float(snr_db)
        self.noised, self.dropped = tuple(noised), tuple(dropped)
        if self.dropped and removal is None:
            removal = "zeros"
        if removal is not None and removal not in REMOVALS:
            raise ValueError(f"removal={removal!r}; allowed: {REMOVALS}")
        self.removal = removal if self.dropped else None

    def apply(self, batch: Batch, rng: np.random.Generator) -> dict[str, np.ndarray]:
        out = dict(batch)
        for m in self.noised:
            out[m] = add_white_noise(batch[m], self.snr_db, rng)
        for m in self.dropped:
            if self.removal == "tokens":
                out.pop(m, None)
            else:
                out[m] = np.zeros_like(batch[m])
        return out


def supports_token_drop(model_name: str | None) -> bool:
    """Whether `config.model.name` can run without a modality's tokens (`mbt.branches`)."""
    return model_name is not None and models.get_family(model_name).supports_branches


def make_conditions(
    modalities: Sequence[str], snrs_db: Sequence[float] = SNRS_DB, model_name: str | None = None
) -> list[Condition]:
    """Clean, then noise per target and SNR, then each modality removed (multimodal only).

    Targets whose modalities the model does not read are left out; with one modality only
    the target covering it remains (and 'both' is dropped as identical). Each removal runs
    with zeros ('no audio (zeros)'), and, for a `model_name` whose family has branches, also with
    the tokens dropped ('no audio (dropped tokens)'). `model_name` None: zeros only.
    """
    conditions = [Condition("clean", "none")]
    seen = set()
    for target, covers in TARGETS.items():
        noised = tuple(m for m in modalities if m in covers)
        if not noised or noised in seen:
            continue
        seen.add(noised)
        conditions += [
            Condition(f"{target} noise {snr:g} dB", target, snr, noised=noised) for snr in snrs_db
        ]
    if len(modalities) > 1:
        for target in ("audio", "video"):
            dropped = tuple(m for m in modalities if m in TARGETS[target])
            if not dropped or len(dropped) == len(modalities):
                continue
            conditions.append(
                Condition(f"no {target} (zeros)", f"no {target}", dropped=dropped, removal="zeros")
            )
            if model_name is not None and supports_token_drop(model_name):
                conditions.append(
                    Condition(
                        f"no {target} (dropped tokens)",
                        f"no {target}",
                        dropped=dropped,
                        removal="tokens",
                    )
                )
    return conditions


def _branch_setup(setup: train.Setup, params: Any, modalities: tuple[str, ...]):
    """(setup, params) for `train.run_evaluation` of the model on `modalities` only.

    A shallow copy of `setup` whose `modalities`, `model` and jitted `eval_step` are the
    branch's; the branch params are the restored (sharded) arrays, not copies.
    """
    model, sub_params = branches.branch_model(
        setup.config.model, setup.meta.num_classes, setup.meta.input_shapes, params, modalities
    )
    branch = copy.copy(setup)
    branch.model, branch.modalities = model, modalities
    branch.step_cfg = dataclasses.replace(setup.step_cfg, modalities=modalities)
    branch.eval_step = jax.jit(
        step_lib.make_eval_step(model, branch.step_cfg),
        out_shardings=sharding.replicated(setup.mesh),
    )
    return branch, sub_params


class _TransformedData:
    """A `train.DataSource` whose batches pass through `transform(batch, batch_index)`."""

    def __init__(self, data: Any, transform: Callable[[Batch, int], dict[str, np.ndarray]]):
        self.meta = data.meta
        self._data, self._transform = data, transform

    def batches(self, split, mode, batch_size, *, seed, start_batch=0) -> Iterator[dict]:
        for index, batch in enumerate(
            self._data.batches(split, mode, batch_size, seed=seed, start_batch=start_batch)
        ):
            yield self._transform(batch, index)


def run_robustness(
    config: ml_collections.ConfigDict,
    workdir: str,
    data: Any = None,
    *,
    snrs_db: Sequence[float] = SNRS_DB,
    plot: bool = True,
) -> dict[str, Any]:
    """Evaluates the latest checkpoint of `workdir` under every condition; writes the reports.

    Args:
      config: the config the workdir was trained with.
      workdir: holds `checkpoints/`; receives robustness.json / .md / .png.
      data: a `train.DataSource`; default the config's input pipeline.
      snrs_db: the noisy SNRs in dB (clean always runs first).
      plot: write robustness.png (matplotlib, Agg backend).
    Returns:
      `{'metric', 'split', 'step', 'model', 'modalities', 'snrs_db', 'conditions': [...]}`,
      each condition `{'name', 'target', 'snr_db' (None when clean), 'noised', 'dropped',
      'removal' ('zeros' | 'tokens' | None), 'metrics'}`, and `removals` (the removal kinds
      this model ran); robustness.json holds this plus `metrics` (the clean condition's).
    """
    data = data if data is not None else train.data_source(config, workdir)
    setup = train.get_setup(config, data)
    params, step = train.restore_params(setup, workdir, config)
    split = setup.splits["eval"]
    meta = setup.meta
    metric = metrics_lib.primary_metric_name(bool(meta.multi_label), meta.class_splits)
    seed = int(config.seed)
    model_name = config.model.get("name")
    conditions = make_conditions(setup.modalities, snrs_db, model_name)
    rows: list[dict[str, Any]] = []
    for index, condition in enumerate(conditions):

        def transform(batch, batch_index, condition=condition, index=index):
            rng = np.random.default_rng([seed, index, batch_index])
            return condition.apply(batch, rng)

        run_setup, run_params = setup, params
        if condition.removal == "tokens":
            kept = tuple(m for m in setup.modalities if m not in condition.dropped)
            run_setup, run_params = _branch_setup(setup, params, kept)
        results = train.run_evaluation(
            run_setup, _TransformedData(data, transform), run_params, split, "eval"
        )
        _LOG.info("robustness %s: %s %.4f", condition.name, metric, results[metric])
        rows.append(
            {
                "name": condition.name,
                "target": condition.target,
                "snr_db": condition.snr_db if math.isfinite(condition.snr_db) else None,
                "noised": list(condition.noised),
                "dropped": list(condition.dropped),
                "removal": condition.removal,
                "metrics": results,
            }
        )
    removals = [r for r in REMOVALS if any(c.removal == r for c in conditions)]
    report = {
        "metric": metric,
        "split": split,
        "step": step,
        "model": model_name,
        "modalities": list(setup.modalities),
        "snrs_db": [float(s) for s in snrs_db],
        "removals": removals,
        "conditions": rows,
    }
    if jax.process_index() == 0:
        # 'metrics' holds the clean condition's, as in results_<split>.json.
        evaluate_lib.write_results_json(
            os.path.join(workdir, "robustness.json"), rows[0]["metrics"], extra=report
        )
        with open(os.path.join(workdir, "robustness.md"), "w", encoding="utf-8") as f:
            f.write(markdown_table(report) + "\n")
        written = ["robustness.json", "robustness.md"] + (["robustness.png"] if plot else [])
        if plot:
            plot_report(report, os.path.join(workdir, "robustness.png"))
        _LOG.info("robustness results written to %s", [os.path.join(workdir, w) for w in written])
    return report


def _value(row: Mapping[str, Any], metric: str) -> float:
    return float(row["metrics"][metric])


def markdown_table(report: Mapping[str, Any]) -> str:
    """Noise table (rows: noised target, columns: SNR) and the missing-modality table.

    The second table has one row per removed target and one column per removal kind
    ('input zeros', 'dropped tokens'); a model without token dropping gets '–' there.
    """
    metric, rows = report["metric"], report["conditions"]
    clean = next(r for r in rows if r["target"] == "none")
    snrs = report["snrs_db"]
    header = "| noise on | clean (∞ dB) | " + " | ".join(f"{s:g} dB" for s in snrs) + " |"
    lines = [
        f"{report.get('model')} {'+'.join(report['modalities'])}, checkpoint step "
        f"{report['step']}, split `{report['split']}`, metric `{metric}` "
        "(white Gaussian noise on the model inputs):",
        "",
        header,
        "|" + "---|" * (len(snrs) + 2),
    ]
    for target in TARGETS:
        by_snr = {r["snr_db"]: r for r in rows if r["target"] == target}
        if not by_snr:
            continue
        cells = [f"{_value(by_snr[s], metric):.4f}" for s in snrs]
        lines.append(f"| {target} | {_value(clean, metric):.4f} | " + " | ".join(cells) + " |")
    missing = [r for r in rows if r["dropped"]]
    if missing:
        by_target: dict[str, dict[str, Any]] = {}
        for r in missing:
            by_target.setdefault(r["target"], {})[r.get("removal") or "zeros"] = r
        has_tokens = any("tokens" in kinds for kinds in by_target.values())
        clean_cell = f"{_value(clean, metric):.4f}"
        lines += [
            "",
            f"| removed | {metric}, input zeros | {metric}, dropped tokens |",
            "|---|---|---|",
            f"| nothing (clean) | {clean_cell} | {clean_cell if has_tokens else '–'} |",
        ]
        for target, kinds in by_target.items():
            dropped = "+".join(next(iter(kinds.values()))["dropped"])
            cells = [f"{_value(kinds[k], metric):.4f}" if k in kinds else "–" for k in REMOVALS]
            lines.append(f"| {target[3:]} ({dropped}) | " + " | ".join(cells) + " |")
        if not has_tokens:
            lines += [
                "",
                f"(model {report.get('model')!r} cannot run without a modality's "
                "tokens: removal by zeros only)",
            ]
    return "\n".join(lines)


# One style per noised target, drawn in TARGETS order with shrinking hollow markers and
# different dashes, so lines with equal values (e.g. a model that ignores audio noise) stay
# visible on top of each other.
NOISE_LINE_STYLES: dict[str, dict[str, Any]] = {
    target: dict(
        marker=marker, markersize=size, markerfacecolor="none", linestyle=style, linewidth=w
    )
    for target, marker, size, style, w in zip(
        TARGETS, ("o", "s", "^"), (10, 7, 4), ("-", "--", ":"), (3.0, 2.0, 1.2)
    )
}


def plot_report(report: Mapping[str, Any], path: str) -> None:
    """Headline metric vs SNR per noised target; clean at the left; removed modalities as
    horizontal lines, dashed for zeros, dotted for dropped tokens."""
    import matplotlib  # pylint: disable=g-import-not-at-top

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

    metric, rows, snrs = report["metric"], report["conditions"], report["snrs_db"]
    clean = _value(next(r for r in rows if r["target"] == "none"), metric)
    clean_x = max(snrs) + 10.0  # where "∞" is drawn
    fig, ax = plt.subplots(figsize=(6, 4))
    for target in TARGETS:
        by_snr = {r["snr_db"]: r for r in rows if r["target"] == target}
        if by_snr:
            ax.plot(
                [clean_x] + list(snrs),
                [clean] + [_value(by_snr[s], metric) for s in snrs],
                label=f"noise on {target}",
                **NOISE_LINE_STYLES[target],
            )
    for r in rows:
        if r["dropped"]:
            style = ":" if r.get("removal") == "tokens" else "--"
            ax.axhline(_value(r, metric), linestyle=style, linewidth=1, color="grey")
            ax.annotate(
                r["name"],
                (min(snrs), _value(r, metric)),
                fontsize=8,
                ha="right",
                textcoords="offset points",
                xytext=(0, 3),
            )
    ax.set_xticks([clean_x] + list(snrs), ["∞"] + [f"{s:g}" for s in snrs])
    ax.invert_xaxis()
    ax.set_xlabel("SNR (dB)")
    ax.set_ylabel(metric)
    ax.set_title(f"{report.get('model')}: robustness to white noise")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
