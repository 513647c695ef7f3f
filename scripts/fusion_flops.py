"""Compute vs fusion layer Lf for bottleneck, cross-attention and concat fusion (MBT paper, Fig. 3).

    python scripts/fusion_flops.py [--out=results/] [--xla_points=3]

Model: MBT ViT-B/16 (width 768, 12 layers, MLP 3072), B = 4 bottleneck tokens (the model adds
one more with the token classifier, as Scenic does: 5 per fused layer). Inputs per example:
8 RGB frames at 224² tokenised with `temporal_sampling` (8 frames, 2-D 16×16 patches →
8·14·14 = 1568 tokens + CLS) and an 8 s log-mel spectrogram 800×128 (16×16 patches → 50·8 =
400 tokens + CLS). Lf = 0 is early fusion, 12 late fusion.

GFLOPs are the analytic count of `mbt.tools.flops` (1 multiply-add = 1 FLOP, inference, one
example); Scenic's costlier cross fusion (block on all tokens, own outputs kept) is a reference
column. A few points are cross-checked against XLA's cost analysis of the lowered forward
pass (no compile, no run). Writes `fusion_flops.md` and `fusion_flops.png` under `--out`.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from mbt import cli  # noqa: E402
from mbt import models  # noqa: E402
from mbt.tools import flops  # noqa: E402

FUSIONS = ("bottleneck", "cross", "concat")
LABELS = {"bottleneck": "bottleneck (B=4)", "cross": "cross-attention", "concat": "vanilla concat"}
INPUT_SHAPES = {"rgb": (8, 224, 224, 3), "spectrogram": (800, 128, 1)}
NUM_CLASSES = 527  # AudioSet
# (fusion, Lf) points checked against XLA: early, mid and late fusion.
XLA_POINTS = (("cross", 0), ("bottleneck", 8), ("concat", 4))


def model_config(fusion: str, fusion_layer: int):
    config = models.default_mbt_config()
    config.tokenizers.rgb = {
        "kind": "temporal_sampling",
        "patches": (16, 16),
        "n_sampled_frames": 8,
    }
    config.fusion, config.fusion_layer, config.n_bottlenecks = fusion, fusion_layer, 4
    return config


def sweep(num_layers: int = 12) -> dict[str, list[float]]:
    """{fusion: [GFLOPs at Lf = 0 .. num_layers]}."""
    return {
        f: [
            flops.mbt_macs(model_config(f, lf), INPUT_SHAPES, NUM_CLASSES).total / 1e9
            for lf in range(num_layers + 1)
        ]
        for f in FUSIONS
    }


def scenic_cross_gflops(num_layers: int = 12) -> list[float]:
    """Cross fusion as Scenic computes it, a reference: [GFLOPs at Lf = 0 .. num_layers].

    Scenic runs each modality's fused block on every modality's tokens and discards the others'
    outputs; `mbt.models.MBT` computes queries, output projection and MLP for the own tokens only.
    """
    return [
        flops.mbt_macs(
            model_config("cross", lf), INPUT_SHAPES, NUM_CLASSES, scenic_cross=True
        ).total
        / 1e9
        for lf in range(num_layers + 1)
    ]


def markdown_table(gflops: dict[str, list[float]], scenic_cross: list[float]) -> str:
    header = (
        "| Lf | "
        + " | ".join(f"{LABELS[f]} GFLOPs" for f in FUSIONS)
        + " | cross / bottleneck | cross as in Scenic* GFLOPs | Scenic cross / bottleneck |"
    )
    rule = "|---:|" + "---:|" * (len(FUSIONS) + 3)
    rows = [header, rule]
    for lf in range(len(gflops["bottleneck"])):
        values = " | ".join(f"{gflops[f][lf]:.1f}" for f in FUSIONS)
        bottleneck = gflops["bottleneck"][lf]
        rows.append(
            f"| {lf} | {values} | {gflops['cross'][lf] / bottleneck:.2f} "
            f"| {scenic_cross[lf]:.1f} | {scenic_cross[lf] / bottleneck:.2f} |"
        )
    rows += [
        "",
        "Cross-attention (`mbt.models.MBT`): each modality's queries attend to all tokens; its "
        "Q/out projections and MLP run on its own tokens only.",
        "",
        "\\* Reference: Scenic's cross fusion runs each modality's block on all tokens and "
        "keeps its own outputs (same outputs, more compute).",
    ]
    return "\n".join(rows)


def xla_check(points) -> list[str]:
    """Table rows comparing the analytic count with XLA's lowered cost analysis."""
    rows = [
        "| fusion | Lf | analytic GFLOPs | XLA GFLOPs (MAC = 2) | XLA / (2 × analytic) |",
        "|---|---:|---:|---:|---:|",
    ]
    for fusion, lf in points:
        report = flops.analyse(model_config(fusion, lf), INPUT_SHAPES, NUM_CLASSES, xla="lowered")
        rows.append(
            f"| {fusion} | {lf} | {report.analytic_gflops:.1f} | {report.xla_gflops:.1f} "
            f"| {report.ratio:.4f} |"
        )
    return rows


def plot(gflops: dict[str, list[float]], scenic_cross: list[float], path: str) -> None:
    import matplotlib  # pylint: disable=g-import-not-at-top

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

    fig, ax = plt.subplots(figsize=(6, 4))
    layers = range(len(gflops["bottleneck"]))
    for fusion, marker in zip(FUSIONS, "os^"):
        ax.plot(layers, gflops[fusion], marker=marker, label=LABELS[fusion])
    ax.plot(layers, scenic_cross, "--", color="gray", label="cross-attention as in Scenic")
    ax.set_xlabel("fusion layer Lf (0 = early, 12 = late)")
    ax.set_ylabel("GFLOPs per example (1 MAC = 1 FLOP)")
    ax.set_title("MBT-B/16, 8×224² frames + 8 s audio: compute vs Lf")
    ax.set_xticks(list(layers))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _flags() -> flags.FlagValues:
    fv = flags.FlagValues()
    flags.DEFINE_string(
        "out",
        "",
        "output directory (table .md, plot .png), e.g. results; '' = print only",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "xla_points",
        len(XLA_POINTS),
        f"how many of {XLA_POINTS} to cross-check with XLA (0 = none)",
        flag_values=fv,
    )
    return fv


def main(argv=None) -> None:
    args = _flags()
    cli.parse(
        args, argv, prog="python scripts/fusion_flops.py", description=__doc__.splitlines()[0]
    )
    gflops = sweep()
    scenic_cross = scenic_cross_gflops()
    table = markdown_table(gflops, scenic_cross)
    lines = [
        "# Compute vs fusion layer (MBT Fig. 3)",
        "",
        "ViT-B/16; rgb: 8 frames 224², temporal_sampling with 2-D 16×16 patches "
        "(1568 tokens + CLS); spectrogram: 800×128 (400 tokens + CLS); B = 4 bottlenecks "
        "(+1 for the token classifier). Analytic inference GFLOPs per example, "
        "1 multiply-add = 1 FLOP (`python scripts/fusion_flops.py`).",
        "",
        table,
    ]
    if args.xla_points:
        start = time.perf_counter()
        lines += ["", "Cross-check against XLA's cost analysis of the lowered forward pass:", ""]
        lines += xla_check(XLA_POINTS[: args.xla_points])
        lines += [
            "",
            f"(XLA check took {time.perf_counter() - start:.0f} s on "
            f"{flops.jax.devices()[0].device_kind})",
        ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        table_path = os.path.join(args.out, "fusion_flops.md")
        plot_path = os.path.join(args.out, "fusion_flops.png")
        with open(table_path, "w") as f:
            f.write(text)
        plot(gflops, scenic_cross, plot_path)
        print(f"wrote {table_path} and {plot_path}")


if __name__ == "__main__":
    main()
