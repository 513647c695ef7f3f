"""Cross fusion on own tokens (`mbt.models.MBT`) vs Scenic's block on all tokens: FLOPs and time.

    python scripts/cross_fusion_benchmark.py [--fusion_layer=0] [--batch_size=2] [--steps=5]
        [--out=results]

1. At the MBT paper's Fig. 3 setting (ViT-B/16; 8 frames 224², `temporal_sampling` 2-D 16×16
   patches → 1568 tokens + CLS; 8 s spectrogram 800×128 → 400 + CLS; AudioSet head), the
   analytic GFLOPs (`mbt.tools.flops.mbt_macs`, with and without `scenic_cross`) and XLA's cost
   analysis of the lowered forward pass (einsum attention; no compile, no run) of both.
2. On a small workload (ViT-Ti/16 widths, `--num_layers` layers; 8 frames 112² → 392 tokens,
   4 s of audio 400×128 → 200 tokens; `--batch_size`), the median time of the jitted forward
   (evaluation) and forward+backward (gradient of the summed squared logits w.r.t. all
   parameters, train=True) of both, timed alternately in this process, and their ratio. The
   logits of the two are compared too.

Writes `cross_fusion_benchmark.md` under `--out`.

Scenic's computation is a subclass of `FusionEncoder` here (each modality's block on
[others ; own], own outputs kept), swapped in while the forward is traced.
"""

from __future__ import annotations

import contextlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from mbt import cli  # noqa: E402
from mbt import models  # noqa: E402
from mbt.models import mbt as mbt_lib  # noqa: E402
from mbt.tools import bench  # noqa: E402
from mbt.tools import flops  # noqa: E402

FIG3_SHAPES = {"rgb": (8, 224, 224, 3), "spectrogram": (800, 128, 1)}
SMALL_SHAPES = {"rgb": (8, 112, 112, 3), "spectrogram": (400, 128, 1)}
NUM_CLASSES = 527


class ScenicCrossEncoder(mbt_lib.FusionEncoder):
    """Cross fusion as Scenic computes it: each modality's block on [others ; own], own kept."""

    def _cross_layer(self, blocks, tokens, deterministic):
        out = {}
        for m in self.modalities:
            context = [tokens[o] for o in self.modalities if o != m]
            joint_BxLxD = blocks[m](jnp.concatenate(context + [tokens[m]], axis=1), deterministic)
            out[m] = joint_BxLxD[:, -tokens[m].shape[1] :]
        return out


@contextlib.contextmanager
def scenic_cross():
    """Within: `mbt.models.MBT` builds its encoder as `ScenicCrossEncoder` (at trace time)."""
    original = mbt_lib.FusionEncoder
    mbt_lib.FusionEncoder = ScenicCrossEncoder
    try:
        yield
    finally:
        mbt_lib.FusionEncoder = original


def model_config(fusion_layer: int, small: bool, num_layers: int, attention: str = "fused"):
    config = models.default_mbt_config()
    config.tokenizers.rgb = {
        "kind": "temporal_sampling",
        "patches": (16, 16),
        "n_sampled_frames": 8,
    }
    config.fusion, config.fusion_layer = "cross", fusion_layer
    config.attention = attention
    if small:
        config.variant, config.num_layers = "Ti/16", num_layers
    return config


def fig3_flops(fusion_layer: int) -> list[str]:
    """Markdown rows: analytic and XLA GFLOPs at the Fig. 3 setting, own tokens vs Scenic."""
    config = model_config(fusion_layer, small=False, num_layers=12)
    model = models.build_model(flops.xla_model_config(config), NUM_CLASSES)
    params = flops.abstract_params(model, flops.input_structs(FIG3_SHAPES))
    rows = [
        "| cross fusion | analytic GFLOPs | XLA GFLOPs (MAC = 2) | XLA / (2 × analytic) |",
        "|---|---:|---:|---:|",
    ]
    for label, scenic in (("own tokens (mbt.models.MBT)", False), ("Scenic (all tokens)", True)):
        analytic = flops.mbt_macs(config, FIG3_SHAPES, NUM_CLASSES, scenic_cross=scenic).total
        with scenic_cross() if scenic else contextlib.nullcontext():
            xla = flops.xla_report(model, params, FIG3_SHAPES, compile=False).flops
        rows.append(
            f"| {label} | {analytic / 1e9:.1f} | {xla / 1e9:.1f} | {xla / (2 * analytic):.4f} |"
        )
    return rows


def compiled_steps(model, params, inputs, scenic: bool):
    """(forward, forward+backward), jitted and compiled for these inputs."""

    def forward(p, x):
        return model.apply({"params": p}, x, train=False)

    def loss(p, x):
        logits = model.apply({"params": p}, x, train=True, rngs={"dropout": jax.random.key(0)})
        return sum(jnp.sum(v**2) for v in logits.values())

    with scenic_cross() if scenic else contextlib.nullcontext():
        fwd = jax.jit(forward).lower(params, inputs).compile()
        grad = jax.jit(jax.grad(loss)).lower(params, inputs).compile()
    return fwd, grad


def small_timings(
    fusion_layer: int, num_layers: int, batch_size: int, steps: int, attention: str
) -> list[str]:
    config = model_config(fusion_layer, small=True, num_layers=num_layers, attention=attention)
    model = models.build_model(config, NUM_CLASSES)
    rng = np.random.default_rng(0)
    inputs = {
        m: jnp.asarray(rng.normal(size=(batch_size,) + s), jnp.float32)
        for m, s in SMALL_SHAPES.items()
    }
    params = model.init(jax.random.key(1), inputs, train=False)["params"]
    params["output_projection"]["kernel"] = jax.random.normal(
        jax.random.key(2), params["output_projection"]["kernel"].shape
    )
    steps_by = {s: compiled_steps(model, params, inputs, s) for s in (False, True)}
    logits = {s: steps_by[s][0](params, inputs) for s in (False, True)}
    diff = float(jnp.abs(logits[False] - logits[True]).max())
    scale = float(jnp.abs(logits[True]).max())
    # Both versions' forward and forward+backward, alternating step by step.
    calls = {(s, k): (steps_by[s][k], (params, inputs)) for k in (0, 1) for s in (False, True)}
    median = {key: t * 1e3 for key, t in bench.time_interleaved(calls, steps).items()}
    analytic = {
        s: flops.mbt_macs(config, SMALL_SHAPES, NUM_CLASSES, scenic_cross=s).total / 1e9
        for s in (False, True)
    }
    tokens = flops.mbt_macs(config, SMALL_SHAPES, NUM_CLASSES).tokens
    rows = [
        f"ViT-Ti/16 widths, {num_layers} layers, Lf = {fusion_layer}, tokens "
        f"rgb {tokens['rgb']} + spectrogram {tokens['spectrogram']}, batch {batch_size}, "
        f"{attention} attention, {jax.devices()[0].device_kind}, median of {steps} alternating "
        f"steps; max |logits difference| {diff:.2e} (max |logits| {scale:.1f}).",
        "",
        "| cross fusion | analytic GFLOPs / example | forward (ms) | forward+backward (ms) |",
        "|---|---:|---:|---:|",
    ]
    for label, s in (("own tokens (mbt.models.MBT)", False), ("Scenic (all tokens)", True)):
        rows.append(
            f"| {label} | {analytic[s]:.2f} | {median[(s, 0)]:.1f} | {median[(s, 1)]:.1f} |"
        )
    rows.append(
        f"| Scenic / own | {analytic[True] / analytic[False]:.2f} "
        f"| {median[(True, 0)] / median[(False, 0)]:.2f} "
        f"| {median[(True, 1)] / median[(False, 1)]:.2f} |"
    )
    return rows


def _flags() -> flags.FlagValues:
    fv = flags.FlagValues()
    flags.DEFINE_integer("fusion_layer", 0, "Lf of both measurements", flag_values=fv)
    flags.DEFINE_integer("num_layers", 12, "layers of the small timed model", flag_values=fv)
    flags.DEFINE_integer("batch_size", 2, "batch of the small timed model", flag_values=fv)
    flags.DEFINE_integer("steps", 5, "timed steps per variant (after one warm-up)", flag_values=fv)
    flags.DEFINE_boolean("fig3", True, "lower the Fig. 3 model for XLA's count", flag_values=fv)
    flags.DEFINE_boolean("timing", True, "time the small model", flag_values=fv)
    flags.DEFINE_enum(
        "attention",
        "fused",
        list(models.ATTENTIONS),
        "attention of the timed model",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "out",
        "",
        "directory for the markdown, e.g. results (default '': print only)",
        flag_values=fv,
    )
    return fv


def main(argv=None) -> None:
    args = _flags()
    cli.parse(
        args,
        argv,
        prog="python scripts/cross_fusion_benchmark.py",
        description=__doc__.splitlines()[0],
    )
    lines = ["# Cross fusion: own tokens vs Scenic's block on all tokens", ""]
    command = " ".join(
        ["python scripts/cross_fusion_benchmark.py"] + list(sys.argv[1:] if argv is None else argv)
    )
    lines += [f"`{command}`", ""]
    if args.fig3:
        lines += [f"Fig. 3 setting (MBT-B/16, Lf = {args.fusion_layer}):", ""]
        lines += fig3_flops(args.fusion_layer) + [""]
        print("\n".join(lines), flush=True)
    if args.timing:
        rows = small_timings(
            args.fusion_layer, args.num_layers, args.batch_size, args.steps, args.attention
        )
        lines += rows
        print("\n".join(rows))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, "cross_fusion_benchmark.md")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines).rstrip() + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
