"""Step time, compile time and GFLOPs of every MBT fusion mode at one workload, in one run.

    python scripts/benchmark_fusion.py              # 'small' workload, a few minutes on 2 CPU cores
    python scripts/benchmark_fusion.py --preset=mbt_b16_8f --batch_size=8 --dtype=bfloat16  # GPU
    python scripts/benchmark_fusion.py --fusion_layers=0,4,8 --steps=10

Rows: late fusion (Lf = L: no exchange; every fusion mode is the same model there) and each of
`bottleneck`, `concat` and `cross` at every Lf in `--fusion_layers`, all with the same sizes,
inputs and parameters where the trees agree. For each it prints the analytic GFLOPs per example
(`mbt.tools.flops`, 1 multiply-add = 1 FLOP), the compile time of the forward+backward step
(lower + compile) and the median forward and forward+backward step times, each also as a ratio
to late fusion. The steps of all rows are compiled first and then timed interleaved
(`mbt.tools.bench.time_interleaved`), so the ratios hold on a shared machine; compile times
are single measurements and noisier.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import ml_collections  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from mbt import models  # noqa: E402
from mbt.models import mbt as mbt_lib  # noqa: E402
from mbt.tools import bench  # noqa: E402
from mbt.tools import flops  # noqa: E402

_PRESET = flags.DEFINE_enum(
    "preset", "small", list(bench.PRESETS), "Workload (mbt.tools.bench.preset_config)."
)
_FUSION_LAYERS = flags.DEFINE_list(
    "fusion_layers", None, "Lf values of the fused rows (default: 0 and L / 2)."
)
_BATCH = flags.DEFINE_integer("batch_size", 4, "Examples per step.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per row (after one warm-up).")
_DTYPE = flags.DEFINE_enum(
    "dtype", None, ["float32", "bfloat16"], "config.model.dtype (params stay float32)."
)
_OUT = flags.DEFINE_string("out", "", "Write the markdown table to this file ('' = print only).")


def row_configs(model_config, fusion_layers) -> dict[str, ml_collections.ConfigDict]:
    """`{row name: config.model}`: 'late', then '<fusion> Lf=<n>' for every fusion and Lf."""
    num_layers = models.resolve_sizes(model_config).num_layers
    rows = {}
    for fusion, layer in [("bottleneck", num_layers)] + [
        (f, lf) for f in mbt_lib.FUSIONS for lf in fusion_layers
    ]:
        config = ml_collections.ConfigDict(model_config.to_dict())
        config.fusion, config.fusion_layer = fusion, layer
        models.validate_model_config(config)
        rows["late" if layer == num_layers else f"{fusion} Lf={layer}"] = config
    return rows


def run(config, fusion_layers, batch_size: int, steps: int) -> dict[str, dict]:
    """{row: {'gflops', 'train_compile_s', 'forward_s', 'train_s', ...}} for `row_configs`."""
    input_shapes = flops.input_shapes_from_config(config)
    num_classes = flops.num_classes_from_config(config)
    inputs, labels = bench.make_batch(input_shapes, batch_size, num_classes)
    jax.block_until_ready(jax.jit(lambda x: x + 1)(0.0))  # backend start-up, not the first row's
    results = {}
    for name, model_config in row_configs(config.model, fusion_layers).items():
        model = models.build_model(model_config, num_classes)
        params = bench.random_params(flops.abstract_params(model, inputs))
        result = bench.compile_steps(model_config, num_classes, params, inputs, labels)
        macs = models.get_family("mbt").analytic_macs(model_config, input_shapes, num_classes)
        result["gflops"] = macs.total / 1e9
        results[name] = result
        print(f"compiled {name}: {result['train_compile_s']:.1f} s", flush=True)
    for step in ("forward", "train"):
        medians = bench.time_interleaved({n: r[step] for n, r in results.items()}, steps)
        for name, seconds in medians.items():
            results[name][f"{step}_s"] = seconds
    return results


def table(results: dict[str, dict]) -> list[str]:
    late = results["late"]

    def cell(r, key, scale, digits):
        return f"{scale * r[key]:.{digits}f} | {r[key] / late[key]:.2f}"

    rows = [
        "| fusion | GFLOPs/example | × late | compile s (fwd+bwd) | × late "
        "| fwd+bwd ms/step | × late | fwd ms/step | × late |",
        "|---|" + "---:|" * 8,
    ]
    for name, r in results.items():
        rows.append(
            f"| {name} | {cell(r, 'gflops', 1, 3)} | {cell(r, 'train_compile_s', 1, 1)} "
            f"| {cell(r, 'train_s', 1e3, 1)} | {cell(r, 'forward_s', 1e3, 1)} |"
        )
    return rows


def main(argv):
    del argv
    config = bench.preset_config(_PRESET.value)
    if _DTYPE.value:
        config.model.dtype = _DTYPE.value
    num_layers = models.resolve_sizes(config.model).num_layers
    fusion_layers = (
        [int(v) for v in _FUSION_LAYERS.value] if _FUSION_LAYERS.value else [0, num_layers // 2]
    )
    device = jax.devices()[0]
    header = [
        f"# Fusion modes: --preset={_PRESET.value}, batch {_BATCH.value}, "
        f"{config.model.get('dtype') or 'float32'}, on {device.device_kind}",
        "",
        f"`python scripts/benchmark_fusion.py {' '.join(sys.argv[1:])}`; inputs per example "
        f"{flops.input_shapes_from_config(config)}; {num_layers} layers; median of "
        f"{_STEPS.value} interleaved steps; ratios against late fusion (Lf = {num_layers}).",
        "",
    ]
    print("\n".join(header), flush=True)
    results = run(config, fusion_layers, _BATCH.value, _STEPS.value)
    lines = table(results)
    print("\n".join(lines))
    if _OUT.value:
        os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
        with open(_OUT.value, "w") as f:
            f.write("\n".join(header + lines) + "\n")
        print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
