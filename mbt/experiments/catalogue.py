"""The papers' experiments: each expands into named runs of one `--data` config file.

Demo sizes (`--data=demo`) are derived from the demo config (its layer count, bottleneck
count, clip length, ...), so the sweeps follow that config; real datasets
(`--data=audioset|vggsound|epic_kitchens`) get the papers' values. `EXPERIMENTS` maps each
name to its `Experiment`; `docs/experiments.md` describes them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from collections.abc import Mapping
from typing import Any

import ml_collections

from mbt import models
from mbt.data import registry
from mbt.experiments import per_class
from mbt.experiments import plots
from mbt.experiments.runs import Bases
from mbt.experiments.runs import Run

# The MBT paper's code: modality mixup with alpha 0.5 (used where the base config has none).
PAPER_MIXUP_ALPHA = 0.5
# MBT paper: bottleneck counts of its ablation; input spans t (s) of Fig. 4.
PAPER_BOTTLENECKS = (4, 36, 64, 256, 1024)
PAPER_SPANS_S = (2.0, 4.0, 6.0, 8.0)
# Fractions of the training set for MBT Fig. 5 (real data) and the demo.
PAPER_FRACTIONS = (0.1, 0.25, 0.5, 0.75, 1.0)
DEMO_FRACTIONS = (0.25, 0.5, 0.75, 1.0)


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One experiment of the catalogue.

    Attributes:
      name: the `run NAME` / `collect NAME` name.
      figure: which paper table or figure it reproduces.
      description: one line for `list` and the table's heading.
      expand: `Bases -> [Run]`, the runs for that `--data`.
      plot: `(table, path) -> None`, writes plot.png from the table.json dict.
      train_memory: also measure the compiled training step's activation memory per run.
      summary: `(out, rows) -> dict`, extra table.json entries computed from the run folders.
    """

    name: str
    figure: str
    description: str
    expand: Callable[[Bases], list[Run]]
    plot: Callable[[Mapping[str, Any], str], None]
    train_memory: bool = False
    summary: Callable[[str, list[dict[str, Any]]], dict[str, Any]] | None = None


# --- what the sweeps are derived from ---------------------------------------------------------


def arg(bases: Bases, model: str = "mbt", modalities: str = "av", **extra: str) -> str:
    """The config file's argument string; `extra` keys the file does not take are left out
    (e.g. `split=` exists for AudioSet only)."""
    keys = {"model": model, "modalities": modalities}
    if bases.data == "audioset":
        keys.update(extra)
    return ",".join(f"{k}={v}" for k, v in keys.items())


def mbt_layers(model: ml_collections.ConfigDict) -> int:
    """MBT's depth L (from `num_layers` or the `variant` preset)."""
    return models.resolve_sizes(models.get_family("mbt").resolve(model)).num_layers


def fusion_layers(num_layers: int) -> list[int]:
    """Lf from 0 (early) to L (late): every layer up to L = 6, else every second one (MBT
    Fig. 3 plots Lf = 0, 2, ..., 12 for ViT-B)."""
    step = 1 if num_layers <= 6 else 2
    values = list(range(0, num_layers + 1, step))
    return values if values[-1] == num_layers else values + [num_layers]


def bottleneck_counts(bases: Bases) -> list[int]:
    """The paper's counts, or around the demo's own B: 1, B/2, B, 4B, 16B."""
    if not bases.is_demo:
        return list(PAPER_BOTTLENECKS)
    b = int(bases.get(arg(bases)).model.n_bottlenecks)
    return sorted({1, max(1, b // 2), b, 4 * b, 16 * b})


def stored_fps(dataset: ml_collections.ConfigDict, demo: bool) -> float:
    """Frame rate of the stored frames: `video_fps`, else the synthetic copy's (demo), else the
    dataset's default (25 fps for the real datasets)."""
    if dataset.get("video_fps"):
        return float(dataset.video_fps)
    if demo:
        return float(dataset.synthetic.fps)
    return float(registry.get(dataset.name, dataset.get("imports") or ()).default_fps)


def clip_spans(bases: Bases) -> list[float]:
    """Input spans t (s): the paper's 2-8 s, or a quarter to all of the demo's clip length."""
    if not bases.is_demo:
        return list(PAPER_SPANS_S)
    seconds = float(bases.get(arg(bases)).dataset.synthetic.clip_seconds)
    return [round(seconds * k / 4, 3) for k in (1, 2, 3, 4)]


def _number_name(value: float) -> str:
    return f"{value:g}"


# --- the experiments --------------------------------------------------------------------------


def expand_fusion_lf(bases: Bases) -> list[Run]:
    """{bottleneck, cross, concat} x Lf = 0..L (MBT Fig. 3)."""
    layers = mbt_layers(bases.get(arg(bases)).model)
    return [
        Run(
            f"{fusion}_lf{lf}",
            arg(bases),
            {"model.fusion": fusion, "model.fusion_layer": lf},
            {"model.fusion": fusion, "model.fusion_layer": lf},
        )
        for fusion in ("bottleneck", "cross", "concat")
        for lf in fusion_layers(layers)
    ]


def expand_bottlenecks(bases: Bases) -> list[Run]:
    """Bottleneck fusion at the config's Lf with B bottleneck tokens."""
    return [
        Run(
            f"b{count}",
            arg(bases),
            {"model.fusion": "bottleneck", "model.n_bottlenecks": count},
            {"model.n_bottlenecks": count},
        )
        for count in bottleneck_counts(bases)
    ]


def expand_clip_span(bases: Bases) -> list[Run]:
    """Input span t: audio of t seconds, the config's rgb frames spread over t seconds
    (stride round(t x fps / frames)), both windows starting together (MBT Fig. 4)."""
    dataset = bases.get(arg(bases)).dataset
    frames, fps = int(dataset.num_frames), stored_fps(dataset, bases.is_demo)
    runs = []
    for span in clip_spans(bases):
        stride = max(1, round(span * fps / frames))
        values = {"dataset.stride": stride, "dataset.audio_seconds": span}
        runs.append(
            Run(
                f"span{_number_name(span)}s",
                arg(bases),
                values,
                {"span_s": span, "dataset.num_frames": frames, **values},
            )
        )
    return runs


def expand_mixup(bases: Bases) -> list[Run]:
    """No mixup, mixup (one lambda) and modality mixup (one lambda per modality)."""
    alpha = float(bases.get(arg(bases)).mixup.alpha or 0.0) or PAPER_MIXUP_ALPHA
    settings = {
        "none": {"mixup.alpha": 0.0, "mixup.mixmod": False},
        "mixup": {"mixup.alpha": alpha, "mixup.mixmod": False},
        "modality_mixup": {"mixup.alpha": alpha, "mixup.mixmod": True},
    }
    return [Run(name, arg(bases), values, values) for name, values in settings.items()]


def _late_and_mbt(bases: Bases, **extra: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """{'late': late fusion (Lf = L), 'mbt': the config's fusion} as (arg, overrides)."""
    config_arg = arg(bases, **extra)
    model = bases.get(config_arg).model
    return {
        "late": (config_arg, {"model.fusion_layer": mbt_layers(model)}),
        "mbt": (config_arg, {"model.fusion_layer": int(model.fusion_layer)}),
    }


def expand_data_fraction(bases: Bases) -> list[Run]:
    """Late fusion and MBT trained on a fraction of the train split (MBT Fig. 5; AudioSet:
    the AS-500K split)."""
    fractions = DEMO_FRACTIONS if bases.is_demo else PAPER_FRACTIONS
    runs = []
    for kind, (config_arg, overrides) in _late_and_mbt(bases, split="500k").items():
        for fraction in fractions:
            values = {**overrides, "dataset.train_fraction": fraction}
            runs.append(
                Run(
                    f"{kind}_frac{_number_name(fraction)}",
                    config_arg,
                    values,
                    {"fusion": kind, **values},
                )
            )
    return runs


def expand_modalities(bases: Bases) -> list[Run]:
    """Audio only, rgb only, late fusion and the config's (the paper's) fusion setting."""
    runs = [
        Run(
            f"{name}_only",
            arg(bases, modalities=name),
            {},
            {"modalities": "+".join(bases.get(arg(bases, modalities=name)).model.modalities)},
        )
        for name in ("audio", "rgb")
    ]
    for kind, (config_arg, overrides) in _late_and_mbt(bases).items():
        runs.append(
            Run(
                "late_fusion" if kind == "late" else "fusion",
                config_arg,
                overrides,
                {"modalities": "+".join(bases.get(config_arg).model.modalities), **overrides},
            )
        )
    return runs


def expand_sft_vs_mbt(bases: Bases) -> list[Run]:
    """MBT (the config's fusion), late fusion, SFT (the config's pool sizes) and SFT without
    pooling (pool size 1)."""
    runs = [
        Run(
            "mbt" if kind == "mbt" else "mbt_late",
            config_arg,
            overrides,
            {"model.name": "mbt", **overrides},
        )
        for kind, (config_arg, overrides) in _late_and_mbt(bases).items()
    ]
    sft_arg = arg(bases, model="sft")
    pools = dict(bases.get(sft_arg).model.pool_sizes)
    for name, sizes in (("sft", pools), ("sft_pool1", {m: 1 for m in pools})):
        overrides = {f"model.pool_sizes.{m}": size for m, size in sizes.items()}
        runs.append(Run(name, sft_arg, overrides, {"model.name": "sft", **overrides}))
    return runs


def expand_clstm_noise(bases: Bases) -> list[Run]:
    """The C-LSTM fused at each layer k = 0 (inputs) .. L (late), each then evaluated with
    white noise on audio, video and both (`mbt.robustness`)."""
    config_arg = arg(bases, model="clstm")
    layers = int(bases.get(config_arg).model.num_layers)
    return [
        Run(
            f"clstm_fuse{k}",
            config_arg,
            {"model.fusion_layer": k},
            {"model.fusion_layer": k},
            robustness=True,
        )
        for k in range(layers + 1)
    ]


_LIST = (
    Experiment(
        "mbt_fusion_lf",
        "MBT Fig. 3",
        "bottleneck, cross-attention and concatenation fusion from layer Lf = 0 (early) to L "
        "(late): accuracy and GFLOPs vs Lf",
        expand_fusion_lf,
        plots.lines_plot("model.fusion_layer", "model.fusion", "fusion layer Lf"),
    ),
    Experiment(
        "mbt_bottlenecks",
        "MBT ablation: number of bottleneck tokens",
        "bottleneck fusion with B bottleneck tokens",
        expand_bottlenecks,
        plots.lines_plot("model.n_bottlenecks", None, "bottleneck tokens B", log_x=True),
    ),
    Experiment(
        "mbt_clip_span",
        "MBT Fig. 4",
        "input span t: t seconds of audio and the rgb frames spread over t seconds",
        expand_clip_span,
        plots.lines_plot("span_s", None, "input span t (s)"),
    ),
    Experiment(
        "mbt_mixup",
        "MBT ablation: mixup",
        "no mixup vs mixup vs modality mixup (one lambda per modality)",
        expand_mixup,
        plots.bars_plot(),
    ),
    Experiment(
        "mbt_data_fraction",
        "MBT Fig. 5",
        "late fusion and MBT trained on a fraction of the train split",
        expand_data_fraction,
        plots.lines_plot("dataset.train_fraction", "fusion", "fraction of the train split"),
    ),
    Experiment(
        "mbt_modalities",
        "MBT: single modalities vs fusion",
        "audio only, rgb only, late fusion (Lf = L) and the paper's fusion setting; on how many "
        "classes fusion beats audio only",
        expand_modalities,
        plots.bars_plot(),
        summary=per_class.fusion_vs_audio,
    ),
    Experiment(
        "sft_vs_mbt",
        "SFT: accuracy vs compute and memory",
        "SFT (pooled, unpooled) vs MBT and late fusion: accuracy vs GFLOPs and training "
        "activation memory",
        expand_sft_vs_mbt,
        plots.scatter_plot(("gflops", "train_memory_mib")),
        train_memory=True,
    ),
    Experiment(
        "clstm_noise",
        "Early-fusion C-LSTM: robustness to white noise",
        "C-LSTM fused at layer k, evaluated with white noise on audio, video and both",
        expand_clstm_noise,
        plots.noise_plot(),
    ),
)
EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in _LIST}


def get(name: str) -> Experiment:
    """The experiment `name`; ValueError listing the known ones."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]
