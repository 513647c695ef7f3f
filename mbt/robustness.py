"""Robustness of a trained model to white noise and to a missing modality.

    python -m mbt.main --config=<file.py> --workdir=DIR --mode=robustness

Restores the latest checkpoint of `DIR` (as `--mode=evaluate` does) and runs the single-view
evaluation of the eval split once per condition:

- clean inputs (SNR = infinity);
- white Gaussian noise at SNR 20, 10, 5, 0, -5 dB added to the audio, the video or both;
- one modality removed (its input replaced by zeros).

The noise is added to the *model inputs*, not to waveforms or pixels: to the normalised
log-mel spectrogram (`spectrogram`) and to the rgb frames scaled to [-1, 1] (`rgb`, and any
other video-like modality). Per example and modality, the noise power is
`P_signal / 10^(SNR/10)` with `P_signal = mean(x²)` over all of that example's values; the
drawn Gaussian noise is rescaled so its own mean square equals that power exactly (so the
measured SNR is the requested one, not a random draw around it). A zero input (a padding row)
gets no noise. Zeros for a removed modality are the pipeline's mean value for both inputs (the
spectrogram is normalised, rgb 0 is mid-grey).

Writes `<workdir>/robustness.json` (every condition's metrics), `robustness.md` (tables of
the headline metric) and `robustness.png` (headline metric vs SNR, one line per noised target).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import ml_collections
import numpy as np

from mbt import evaluate as evaluate_lib
from mbt import metrics as metrics_lib
from mbt import train

_LOG = logging.getLogger(__name__)

SNRS_DB = (20.0, 10.0, 5.0, 0.0, -5.0)   # the noisy conditions; clean (infinity) runs once
VIDEO_LIKE = ('rgb', 'flow')
AUDIO_LIKE = ('spectrogram',)
# Noise target name -> the input modalities it covers.
TARGETS = {'audio': AUDIO_LIKE, 'video': VIDEO_LIKE, 'both': AUDIO_LIKE + VIDEO_LIKE}

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
    return 10.0 * np.log10(np.mean(clean ** 2, axis=axes) / np.mean(noise ** 2, axis=axes))


class Condition:
    """One evaluation: noise on `noised` modalities at `snr_db`, or zeros for `dropped`."""

    def __init__(self, name: str, target: str, snr_db: float = math.inf,
                 noised: Sequence[str] = (), dropped: Sequence[str] = ()):
        self.name, self.target, self.snr_db = name, target, float(snr_db)
        self.noised, self.dropped = tuple(noised), tuple(dropped)

    def apply(self, batch: Batch, rng: np.random.Generator) -> dict[str, np.ndarray]:
        out = dict(batch)
        for m in self.noised:
            out[m] = add_white_noise(batch[m], self.snr_db, rng)
        for m in self.dropped:
            out[m] = np.zeros_like(batch[m])
        return out


def make_conditions(modalities: Sequence[str],
                    snrs_db: Sequence[float] = SNRS_DB) -> list[Condition]:
    """Clean, then noise per target and SNR, then each modality removed (multimodal only).

    Targets whose modalities the model does not read are left out; with one modality only
    the target covering it remains (and 'both' is dropped as identical).
    """
    conditions = [Condition('clean', 'none')]
    seen = set()
    for target, covers in TARGETS.items():
        noised = tuple(m for m in modalities if m in covers)
        if not noised or noised in seen:
            continue
        seen.add(noised)
        conditions += [Condition(f'{target} noise {snr:g} dB', target, snr, noised=noised)
                       for snr in snrs_db]
    if len(modalities) > 1:
        for target in ('audio', 'video'):
            dropped = tuple(m for m in modalities if m in TARGETS[target])
            if dropped and len(dropped) < len(modalities):
                conditions.append(Condition(f'no {target}', f'no {target}', dropped=dropped))
    return conditions


class _TransformedData:
    """A `train.DataSource` whose batches pass through `transform(batch, batch_index)`."""

    def __init__(self, data: Any, transform: Callable[[Batch, int], dict[str, np.ndarray]]):
        self.meta = data.meta
        self._data, self._transform = data, transform

    def batches(self, split, mode, batch_size, *, seed, start_batch=0) -> Iterator[dict]:
        for index, batch in enumerate(self._data.batches(split, mode, batch_size, seed=seed,
                                                         start_batch=start_batch)):
            yield self._transform(batch, index)


def run_robustness(config: ml_collections.ConfigDict, workdir: str, data: Any = None, *,
                   snrs_db: Sequence[float] = SNRS_DB, plot: bool = True) -> dict[str, Any]:
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
      'metrics'}`; robustness.json holds this plus `metrics` (the clean condition's).
    """
    data = data if data is not None else train.PipelineData(config, workdir)
    setup = train.get_setup(config, data)
    params, step = train.restore_params(setup, workdir)
    split = setup.splits['eval']
    meta = setup.meta
    metric = metrics_lib.primary_metric_name(bool(meta.multi_label), meta.class_splits)
    seed = int(config.seed)
    rows = []
    for index, condition in enumerate(make_conditions(setup.modalities, snrs_db)):
        def transform(batch, batch_index, condition=condition, index=index):
            rng = np.random.default_rng([seed, index, batch_index])
            return condition.apply(batch, rng)
        results = train.run_evaluation(setup, _TransformedData(data, transform), params,
                                       split, 'eval')
        _LOG.info('robustness %s: %s %.4f', condition.name, metric, results[metric])
        rows.append({'name': condition.name, 'target': condition.target,
                     'snr_db': condition.snr_db if math.isfinite(condition.snr_db) else None,
                     'noised': list(condition.noised), 'dropped': list(condition.dropped),
                     'metrics': results})
    report = {'metric': metric, 'split': split, 'step': step,
              'model': config.model.get('name'), 'modalities': list(setup.modalities),
              'snrs_db': [float(s) for s in snrs_db], 'conditions': rows}
    if jax.process_index() == 0:
        # 'metrics' holds the clean condition's, as in results_<split>.json.
        evaluate_lib.write_results_json(os.path.join(workdir, 'robustness.json'),
                                        rows[0]['metrics'], extra=report)
        with open(os.path.join(workdir, 'robustness.md'), 'w', encoding='utf-8') as f:
            f.write(markdown_table(report) + '\n')
        if plot:
            plot_report(report, os.path.join(workdir, 'robustness.png'))
    return report


def _value(row: Mapping[str, Any], metric: str) -> float:
    return float(row['metrics'][metric])


def markdown_table(report: Mapping[str, Any]) -> str:
    """Noise table (rows: noised target, columns: SNR) and the missing-modality table."""
    metric, rows = report['metric'], report['conditions']
    clean = next(r for r in rows if r['target'] == 'none')
    snrs = report['snrs_db']
    header = "| noise on | clean (∞ dB) | " + ' | '.join(f'{s:g} dB' for s in snrs) + ' |'
    lines = [f"{report.get('model')} {'+'.join(report['modalities'])}, checkpoint step "
             f"{report['step']}, split `{report['split']}`, metric `{metric}` "
             '(white Gaussian noise on the model inputs):', '',
             header, '|' + '---|' * (len(snrs) + 2)]
    for target in TARGETS:
        by_snr = {r['snr_db']: r for r in rows if r['target'] == target}
        if not by_snr:
            continue
        cells = [f'{_value(by_snr[s], metric):.4f}' for s in snrs]
        lines.append(f"| {target} | {_value(clean, metric):.4f} | " + ' | '.join(cells) + ' |')
    missing = [r for r in rows if r['dropped']]
    if missing:
        lines += ['', '| input | ' + metric + ' |', '|---|---|',
                  f'| both modalities | {_value(clean, metric):.4f} |']
        lines += [f"| {r['name']} ({'+'.join(r['dropped'])} zeros) | {_value(r, metric):.4f} |"
                  for r in missing]
    return '\n'.join(lines)


def plot_report(report: Mapping[str, Any], path: str) -> None:
    """Headline metric vs SNR per noised target; clean at the left, removed modalities dashed."""
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use('Agg')
    from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

    metric, rows, snrs = report['metric'], report['conditions'], report['snrs_db']
    clean = _value(next(r for r in rows if r['target'] == 'none'), metric)
    clean_x = max(snrs) + 10.0   # where "∞" is drawn
    fig, ax = plt.subplots(figsize=(6, 4))
    for target in TARGETS:
        by_snr = {r['snr_db']: r for r in rows if r['target'] == target}
        if by_snr:
            ax.plot([clean_x] + list(snrs), [clean] + [_value(by_snr[s], metric) for s in snrs],
                    marker='o', label=f'noise on {target}')
    for r in rows:
        if r['dropped']:
            ax.axhline(_value(r, metric), linestyle='--', linewidth=1, color='grey')
            ax.annotate(r['name'], (min(snrs), _value(r, metric)), fontsize=8, ha='right',
                        textcoords='offset points', xytext=(0, 3))
    ax.set_xticks([clean_x] + list(snrs), ['∞'] + [f'{s:g}' for s in snrs])
    ax.invert_xaxis()
    ax.set_xlabel('SNR (dB)')
    ax.set_ylabel(metric)
    ax.set_title(f"{report.get('model')}: robustness to white noise")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
