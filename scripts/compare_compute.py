"""Compute of SFT vs MBT fusion variants vs late fusion at MBT-B/16 scale: GFLOPs and memory.

    python scripts/compare_compute.py [--out=results/compare_compute.md] [--num_classes=527]

Every model is ViT-B/16 wide (768, 12 heads, MLP 3072) on one example of 8 RGB frames at 224²
(3-D tubelets 2×16×16 → 4·14·14 = 784 tokens) and 8 s of audio (800×128 log-mel, 16×16
patches → 400 tokens), 527 classes:

- SFT-B/16: 1 unimodal block, the sparse-pool block (max pooling 16/16 → 49 + 25 tokens),
  11 joint blocks (`mbt.models.sft.default_config()`);
- MBT bottleneck (B = 4), cross-attention and vanilla concat fusion from Lf = 8 and Lf = 0
  (cross-attention as `mbt.models.MBT` computes it; Scenic's costlier way, the block on all
  tokens, is given as an analytic reference below the table);
- late fusion: MBT with Lf = 12 (two separate ViT-B/16 streams; their logits from one
  shared head are averaged).

Columns (per example, batch 1, inference forward pass, nothing is run):
- analytic GMACs: `mbt.tools.flops` (matrix products only; MBT and SFT);
- XLA GMACs: `cost_analysis()['flops'] / 2` of the compiled forward pass (1 multiply-add =
  2 FLOPs; includes elementwise ops). The ratios use this column, the same method for all;
- peak activation memory: `compiled.memory_analysis().temp_size_in_bytes` on this host's
  backend (XLA's temporary buffers; parameters and inputs excluded), einsum attention (the
  XLA check always uses it, so the L×L attention matrices are materialised), of the
  inference forward pass and of a gradient pass (forward + backward of the summed logits
  w.r.t. all parameters, no optimiser), where the activations of every layer are kept.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import flags  # noqa: E402

from mbt import cli  # noqa: E402
from mbt import models  # noqa: E402
from mbt.models import sft  # noqa: E402
from mbt.tools import flops  # noqa: E402

INPUT_SHAPES = {"rgb": (8, 224, 224, 3), "spectrogram": (800, 128, 1)}


def mbt_config(fusion: str, fusion_layer: int):
    config = models.default_mbt_config()
    config.fusion, config.fusion_layer, config.n_bottlenecks = fusion, fusion_layer, 4
    config.stochastic_droplayer_rate = 0.0
    return config


def model_configs():
    """(label, model config) of every compared model; late fusion first, SFT second."""
    rows = [
        ("late fusion (MBT, Lf = 12)", mbt_config("bottleneck", 12)),
        ("SFT-B/16, max pool 16/16", sft.default_config()),
    ]
    for fusion, label in (
        ("bottleneck", "MBT bottleneck (B = 4)"),
        ("cross", "MBT cross-attention"),
        ("concat", "MBT vanilla concat"),
    ):
        for lf in (8, 0):
            rows.append((f"{label}, Lf = {lf}", mbt_config(fusion, lf)))
    return rows


def scenic_cross_gmacs(fusion_layer: int, num_classes: int) -> float:
    """Analytic GMACs of cross fusion as Scenic computes it (block on all tokens), a reference."""
    config = mbt_config("cross", fusion_layer)
    return flops.mbt_macs(config, INPUT_SHAPES, num_classes, scenic_cross=True).total / 1e9


def gradient_temp_bytes(model_config, num_classes: int) -> int:
    """XLA temporary bytes of the compiled gradient of the summed logits (batch 1, einsum)."""
    model = models.build_model(flops.xla_model_config(model_config), num_classes)
    inputs = flops.input_structs(INPUT_SHAPES, 1)
    params = flops.abstract_params(model, inputs)

    def loss(p, x):
        logits = model.apply({"params": p}, x, train=False)
        return jnp.sum(logits)

    compiled = jax.jit(jax.grad(loss)).lower(params, inputs).compile()
    return int(compiled.memory_analysis().temp_size_in_bytes)


def measure(num_classes: int):
    """[(label, FlopsReport, gradient temp bytes)] with the compiled XLA analyses of each model."""
    out = []
    for label, config in model_configs():
        start = time.perf_counter()
        report = flops.analyse(config, INPUT_SHAPES, num_classes, xla="compiled")
        grad_bytes = gradient_temp_bytes(config, num_classes)
        print(f"  {label}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
        out.append((label, report, grad_bytes))
    return out


def markdown(results, num_classes: int) -> str:
    (_, late, late_grad), (_, sft_report, sft_grad) = results[0], results[1]
    late_macs, sft_macs = late.xla_gflops / 2, sft_report.xla_gflops / 2
    late_mem, sft_mem = late.xla.temp_bytes, sft_report.xla.temp_bytes
    lines = [
        f"Inference compute per example at MBT-B/16 scale: rgb 8×224²×3 (784 tubelet tokens) + "
        f"spectrogram 800×128 (400 tokens), {num_classes} classes, batch 1, "
        f"backend {jax.default_backend()} (`python scripts/compare_compute.py`).",
        "",
        "| model | params (M) | analytic GMACs | XLA GMACs | × late fusion | × SFT "
        "| inference activations (MiB) | × late | × SFT "
        "| gradient-pass activations (MiB) | × late | × SFT |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r, grad in results:
        macs = r.xla_gflops / 2
        mem = r.xla.temp_bytes
        analytic = f"{r.analytic_gflops:.1f}" if r.analytic_gflops is not None else "–"
        lines.append(
            f"| {label} | {r.num_params / 1e6:.1f} | {analytic} | {macs:.1f} | "
            f"{macs / late_macs:.2f} | {macs / sft_macs:.2f} | {mem / 2**20:.0f} | "
            f"{mem / late_mem:.2f} | {mem / sft_mem:.2f} | {grad / 2**20:.0f} | "
            f"{grad / late_grad:.2f} | {grad / sft_grad:.2f} |"
        )
    scenic_gmacs = {lf: scenic_cross_gmacs(lf, num_classes) for lf in (8, 0)}
    scenic = [
        f"{g:.1f} at Lf = {lf} ({g / late.analytic_gflops:.2f}× late fusion)"
        for lf, g in scenic_gmacs.items()
    ]
    lines += [
        "",
        "MBT cross-attention computes queries, the output projection and the MLP for each "
        "modality's own tokens (keys and values over all tokens). Reference: Scenic's cross "
        "fusion, which runs each modality's block on all tokens and keeps its own outputs, "
        f"counts {' and '.join(scenic)} analytic GMACs.",
        "",
        "GMACs = 10⁹ multiply-adds (XLA FLOPs / 2). Activations = XLA's temporary "
        "buffers of the compiled pass with einsum attention (parameters, inputs and "
        "outputs not included); the gradient pass keeps every layer's activations for "
        "the backward pass, as training does.",
    ]
    return "\n".join(lines)


def _flags() -> flags.FlagValues:
    fv = flags.FlagValues()
    flags.DEFINE_string(
        "out",
        "",
        "markdown table to write, e.g. results/compare_compute.md (default '': print only)",
        flag_values=fv,
    )
    flags.DEFINE_integer("num_classes", 527, "classes of the classifier head", flag_values=fv)
    return fv


def main(argv=None):
    args = _flags()
    cli.parse(
        args, argv, prog="python scripts/compare_compute.py", description=__doc__.split("\n")[0]
    )
    results = measure(args.num_classes)
    table = markdown(results, args.num_classes)
    print(table)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(table + "\n")
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
