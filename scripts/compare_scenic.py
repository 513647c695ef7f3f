"""Compile time and step time of our MBT against Scenic's own MBT module, same workload, one run.

    python scripts/compare_scenic.py --scenic_dir=~/src/scenic                  # 'small'
    python scripts/compare_scenic.py --scenic_dir=~/src/scenic --preset=mbt_b16_8f --variant=S/16

Needs a checkout of https://github.com/google-research/scenic (its `scenic/projects/mbt`,
`scenic/projects/baselines`, `scenic/model_lib` and `scenic/common_lib`, with `clu` and
`immutabledict` installed); mbt itself never imports it.

Both models are built from the same config (`--preset` of `mbt.tools.bench`, optionally resized
by `--variant`, fusion `bottleneck` or `concat`, the only two Scenic's MBT module has), with
the same number of parameters (checked), and run the same step: the gradient of a sigmoid
cross-entropy w.r.t. all parameters, train mode (stochastic depth on), no optimiser. For each
model it prints the size of the lowered program and, over `--repeats` rounds (each compiles
both models, which one first alternating, JAX's caches cleared before each), the seconds to
trace and lower the step and to compile it; then the median step time of both, timed
interleaved (`bench.time_interleaved`). Ratios are ours / Scenic's.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from mbt import models  # noqa: E402
from mbt.tools import bench  # noqa: E402
from mbt.tools import flops  # noqa: E402

_SCENIC_DIR = flags.DEFINE_string(
    "scenic_dir", None, "Directory holding Scenic's `scenic` package.", required=True
)
_PRESET = flags.DEFINE_enum("preset", "small", list(bench.PRESETS), "Workload.")
_VARIANT = flags.DEFINE_string("variant", None, "Resize the preset's model, e.g. S/16 or B/16.")
_FUSION = flags.DEFINE_enum("fusion", "bottleneck", ["bottleneck", "concat"], "Fusion mode.")
_ATTENTION = flags.DEFINE_enum(
    "attention", "auto", list(models.ATTENTIONS), "config.model.attention of our model."
)
_BATCH = flags.DEFINE_integer("batch_size", 2, "Examples per step.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Compile rounds (each compiles both models).")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per model (after one warm-up).")


def scenic_model(model_config, num_classes: int):
    """Scenic's `MBT` module with the sizes and settings of our model config."""
    from ml_collections import ConfigDict
    from scenic.projects.mbt import model as scenic_mbt

    sizes = models.resolve_sizes(model_config)
    rgb, spectrogram = model_config.tokenizers.rgb, model_config.tokenizers.spectrogram
    if rgb.kind == "3d_conv":
        t, h, w = rgb.patches
        patches = [h, w, t]
        encoding = {"method": "3d_conv", "kernel_init_method": rgb.get("kernel_init")}
    elif rgb.kind == "temporal_sampling":
        h, w = rgb.patches
        patches = [h, w]
        encoding = {"method": "temporal_sampling", "n_sampled_frames": rgb.n_sampled_frames}
    else:
        raise ValueError(f"tokenizers.rgb.kind={rgb.kind!r}: Scenic's MBT has no such encoding")
    if tuple(spectrogram.patches) != (h, w):
        raise ValueError(
            "Scenic's MBT takes one patch size for both modalities: tokenizers.rgb.patches = "
            f"{tuple(rgb.patches)}, tokenizers.spectrogram.patches = {tuple(spectrogram.patches)}"
        )
    return scenic_mbt.MBT(
        mlp_dim=sizes.mlp_dim,
        num_layers=sizes.num_layers,
        num_heads=sizes.num_heads,
        num_classes=num_classes,
        patches=ConfigDict({"size": patches}),
        hidden_size=sizes.hidden_size,
        temporal_encoding_config=ConfigDict(encoding),
        attention_config=ConfigDict({"type": "spacetime"}),
        classifier=model_config.classifier,
        modality_fusion=tuple(model_config.modalities),
        fusion_layer=model_config.fusion_layer,
        use_bottleneck=model_config.fusion == "bottleneck",
        n_bottlenecks=model_config.n_bottlenecks,
        dropout_rate=model_config.dropout_rate,
        attention_dropout_rate=model_config.attention_dropout_rate,
        stochastic_droplayer_rate=model_config.stochastic_droplayer_rate,
    )


def main(argv):
    del argv
    scenic_dir = os.path.abspath(os.path.expanduser(_SCENIC_DIR.value))
    if not os.path.isfile(os.path.join(scenic_dir, "scenic", "projects", "mbt", "model.py")):
        raise SystemExit(
            f"--scenic_dir={_SCENIC_DIR.value}: no scenic/projects/mbt/model.py there; pass the "
            "root of a checkout of https://github.com/google-research/scenic"
        )
    sys.path.insert(0, scenic_dir)
    config = bench.preset_config(_PRESET.value)
    model_config = config.model
    if _VARIANT.value:
        model_config.variant = _VARIANT.value
        for key in ("hidden_size", "num_layers", "num_heads", "mlp_dim"):
            model_config[key] = None
    model_config.fusion = _FUSION.value
    model_config.attention = _ATTENTION.value
    input_shapes = flops.input_shapes_from_config(config)
    num_classes = flops.num_classes_from_config(config)
    inputs, labels = bench.make_batch(input_shapes, _BATCH.value, num_classes)
    key = jax.random.PRNGKey(0)

    built = {
        "ours": models.build_model(model_config, num_classes),
        "scenic": scenic_model(model_config, num_classes),
    }
    params, steps = {}, {}
    for name, model in built.items():
        params[name] = bench.random_params(flops.abstract_params(model, dict(inputs)))
        steps[name] = bench.loss_and_grads(model)
    counts = {n: flops.count_params(p) for n, p in params.items()}
    sizes = models.resolve_sizes(model_config)
    print(
        f"preset {_PRESET.value}{f' as {_VARIANT.value}' if _VARIANT.value else ''}: width "
        f"{sizes.hidden_size}, {sizes.num_layers} layers, {_FUSION.value} fusion from Lf = "
        f"{model_config.fusion_layer}; our attention {_ATTENTION.value}; inputs {input_shapes}; "
        f"batch {_BATCH.value}; parameters {counts}; {jax.devices()[0].device_kind}"
    )
    if len(set(counts.values())) != 1:
        raise SystemExit("the two models have different parameter counts: not the same workload")

    lower_s: dict[str, list[float]] = {name: [] for name in built}
    compile_s: dict[str, list[float]] = {name: [] for name in built}
    compiled = {}
    for round_index in range(_REPEATS.value):
        order = list(built) if round_index % 2 == 0 else list(reversed(built))
        for name in order:  # alternating which goes first
            jax.clear_caches()
            start = time.perf_counter()
            lowered = jax.jit(steps[name]).lower(params[name], inputs, labels, key)
            lowered_at = time.perf_counter()
            compiled[name] = lowered.compile()
            lower_s[name].append(lowered_at - start)
            compile_s[name].append(time.perf_counter() - lowered_at)
            if round_index == 0:
                ops = lowered.as_text().count(" = ")
                print(f"{name}: lowered program {ops} StableHLO ops")
    for name in built:
        print(
            f"{name}: trace + lower s {[round(s, 2) for s in lower_s[name]]}, compile s "
            f"{[round(s, 2) for s in compile_s[name]]}"
        )

    def ratio(values):
        return statistics.median(values["ours"]) / statistics.median(values["scenic"])

    total = {n: [a + b for a, b in zip(lower_s[n], compile_s[n])] for n in built}
    print(
        f"ours / Scenic, medians: trace + lower {ratio(lower_s):.3f}, compile "
        f"{ratio(compile_s):.3f}, both {ratio(total):.3f}"
    )
    medians = bench.time_interleaved(
        {n: (compiled[n], (params[n], inputs, labels, key)) for n in built}, _STEPS.value
    )
    print(
        f"step ms: ours {1e3 * medians['ours']:.1f}, Scenic {1e3 * medians['scenic']:.1f}; "
        f"ours / Scenic {medians['ours'] / medians['scenic']:.3f}"
    )


if __name__ == "__main__":
    app.run(main)
