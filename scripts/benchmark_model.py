"""Step time, throughput, achieved FLOP/s and MFU of a model, per attention path.

    python scripts/benchmark_model.py                       # tiny MBT, < 1 min on a CPU
    python scripts/benchmark_model.py --preset=mbt_b16 --dtype=bfloat16 --batch_size=8   # GPU
    python scripts/benchmark_model.py --config=configs/<file>.py --batch_size=4 --steps=10
    python scripts/benchmark_model.py --preset=mbt_b16 --stop_after=flops   # no compile

For each attention path in `--attentions` (`config.model.attention`: 'einsum', plain
softmax(q·kᵀ)·v; 'fused', jax.nn.dot_product_attention with JAX's choice of kernel; 'cudnn',
cuDNN's flash attention, by default where it can run: NVIDIA GPUs in bfloat16 or float16;
`mbt.models.vit.resolve_attention`) it prints: compile time, forward (inference) and
forward+backward (gradient of a sigmoid cross-entropy w.r.t. all parameters, train=True, no
optimiser update) median time per step over `--steps` after one warm-up (the two paths timed
alternately), examples/s, achieved FLOP/s and the fraction of the device's peak where known;
then the model FLOPs per training step, the MFU of the forward+backward step against the
device's dense peak (`mbt.tools.device_peaks`; "peak unknown" on CPUs), each path's time over
einsum's, XLA's temp buffers, the cuDNN attention calls in each compiled program and the
device's peak memory in use (`memory_stats()`; n/a on CPU).
`--stop_after=flops` stops before compiling, `--stop_after=compile` before timing.

Model FLOPs use the hardware convention (1 multiply-add = 2 FLOPs):
forward = 2 · analytic multiply-adds (mbt.tools.flops) · batch; forward+backward = 3× that
(the backward pass does two matrix products per forward one). Matrix products only: no
elementwise ops, no rematerialisation. Peaks are dense tensor-core / MXU numbers; 'float32'
means JAX's default precision for float32 matmuls, which is TF32 on NVIDIA Ampere and newer
and one bfloat16 pass on TPU.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import ml_collections  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from mbt import models  # noqa: E402
from mbt.models import vit  # noqa: E402
from mbt.tools import bench  # noqa: E402
from mbt.tools import device_peaks  # noqa: E402
from mbt.tools import flops  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file with get_config().", lock_config=False
)
_PRESET = flags.DEFINE_enum(
    "preset",
    "tiny",
    list(bench.PRESETS),
    "Used when --config is not given; the workloads of mbt.tools.bench.preset_config.",
)
_BATCH = flags.DEFINE_integer("batch_size", None, "Examples per step (default: 4 tiny, 2 presets).")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per measurement (after one warm-up).")
_DTYPE = flags.DEFINE_enum(
    "dtype",
    None,
    ["float32", "bfloat16"],
    "Overrides config.model.dtype (computation dtype; params stay float32).",
)
_STOP_AFTER = flags.DEFINE_enum(
    "stop_after",
    "time",
    ["flops", "compile", "time"],
    "flops: print the FLOPs and the device's peak only (no compile); compile: also compile both "
    "attention paths (compile time, XLA memory) but do not run them; time: the full benchmark.",
)
_ATTENTIONS = flags.DEFINE_list(
    "attentions",
    None,
    "Attention paths to compare (config.model.attention values; einsum is always included as "
    "the reference). Default: einsum, fused, and cudnn where cuDNN's flash attention can run.",
)
_OUT = flags.DEFINE_string(
    "out", "", "Directory for the markdown table, e.g. results (default '': print only)."
)


def attention_paths(model_config, dtype: str, requested: list[str] | None) -> list[str]:
    """The attention paths to compare: einsum first (the reference of the ratios), then
    `requested`, or by default fused and, where cuDNN's flash attention can run, cudnn."""
    if requested:
        unknown = sorted(set(requested) - set(models.ATTENTIONS))
        if unknown:
            raise ValueError(f"--attentions: {unknown} unknown; allowed: {models.ATTENTIONS}")
        return ["einsum"] + [a for a in dict.fromkeys(requested) if a != "einsum"]
    try:
        sizes = models.resolve_sizes(model_config)
    except ValueError:  # not a ViT-style model: no attention to compare
        return ["einsum", "fused"]
    return vit.attention_paths(dtype, sizes.hidden_size // sizes.num_heads)


def compile_paths(model_config, attentions, input_shapes, num_classes: int, batch_size: int):
    """{attention: bench.compile_steps(...)} for each attention path, on the same parameters."""
    inputs, labels = bench.make_batch(input_shapes, batch_size, num_classes)
    model = models.build_model(model_config, num_classes)
    params = bench.random_params(flops.abstract_params(model, inputs))  # same tree for all paths
    results = {}
    for attention in attentions:
        variant = ml_collections.ConfigDict(model_config.to_dict())
        variant.attention = attention
        r = bench.compile_steps(variant, num_classes, params, inputs, labels)
        print(
            f"compiled {attention}: forward {r['forward_compile_s']:.1f} s, forward+backward "
            f"{r['train_compile_s']:.1f} s; cuDNN attention calls "
            f"{r['forward_cudnn_attention_calls']} / {r['train_cudnn_attention_calls']}",
            flush=True,
        )
        results[attention] = r
    return results


def time_paths(results, steps: int) -> None:
    """Adds 'forward_s' and 'train_s' (median seconds per step) to each path's results."""
    for step in ("forward", "train"):
        medians = bench.time_interleaved({a: r[step] for a, r in results.items()}, steps)
        for attention, seconds in medians.items():
            results[attention][f"{step}_s"] = seconds


def report_rows(results, macs_per_example: int, batch_size: int, peak: float | None):
    """The markdown table: one row per attention path."""
    header = (
        "| attention | compile s fwd / fwd+bwd | fwd ms/step | fwd ex/s | fwd TFLOP/s | "
        "fwd+bwd ms/step | fwd+bwd ex/s | fwd+bwd TFLOP/s | fwd / fwd+bwd % of peak |"
    )
    rows = [header, "|---|" + "---:|" * 8]
    fwd_flops = bench.step_flops(macs_per_example, batch_size, train=False)
    train_flops = bench.step_flops(macs_per_example, batch_size, train=True)
    for attention, r in results.items():
        fwd_tf, train_tf = fwd_flops / r["forward_s"] / 1e12, train_flops / r["train_s"] / 1e12
        of_peak = f"{100 * fwd_tf / peak:.1f} / {100 * train_tf / peak:.1f}" if peak else "unknown"
        rows.append(
            f"| {attention} | {r['forward_compile_s']:.1f} / {r['train_compile_s']:.1f} "
            f"| {1e3 * r['forward_s']:.2f} "
            f"| {batch_size / r['forward_s']:.4g} | {fwd_tf:.4g} | {1e3 * r['train_s']:.2f} "
            f"| {batch_size / r['train_s']:.4g} | {train_tf:.4g} | {of_peak} |"
        )
    return rows


def flops_lines(macs_per_example: int, batch_size: int, device_kind: str, dtype: str):
    """The model FLOPs per step and the device's dense peak for `dtype` (or 'peak unknown')."""
    train_flops = bench.step_flops(macs_per_example, batch_size, train=True)
    peak = device_peaks.peak_tflops(device_kind, dtype)
    row = device_peaks.lookup(device_kind)
    return [
        f"model FLOPs per training step: {train_flops / 1e12:.4g} TFLOP (forward+backward = 3 × "
        f"forward; forward = 2 FLOPs per analytic multiply-add × {macs_per_example / 1e9:.4g} G "
        f"× batch {batch_size})",
        f"device peak, {dtype} dense: "
        + (
            f"{peak:g} TFLOP/s ({row.name})"
            if peak and row
            else f"peak unknown for {device_kind!r}"
        ),
    ]


def mfu_line(results, macs_per_example: int, batch_size: int, device_kind: str, dtype: str):
    """MFU of the forward+backward step of each attention path against the device's dense peak
    for `dtype`, or 'peak unknown for <kind>' and the achieved TFLOP/s."""
    train_flops = bench.step_flops(macs_per_example, batch_size, train=True)
    peak = device_peaks.peak_tflops(device_kind, dtype)
    if peak is None:
        achieved = ", ".join(
            f"{a} {train_flops / r['train_s'] / 1e12:.4g}" for a, r in results.items()
        )
        return f"MFU: peak unknown for {device_kind!r} (achieved TFLOP/s, fwd+bwd: {achieved})"
    parts = []
    for attention, r in results.items():
        fraction = device_peaks.utilisation(train_flops, r["train_s"], peak)
        parts.append(f"{attention} {100 * fraction:.1f} %")
    return f"MFU (fwd+bwd model FLOPs / step time / {peak:g} TFLOP/s {dtype} peak): " + ", ".join(
        parts
    )


def ratio_line(results) -> str:
    """Each path's median step time over einsum's."""
    einsum = results["einsum"]
    return "time / einsum time, forward, forward+backward: " + ", ".join(
        f"{a} {r['forward_s'] / einsum['forward_s']:.3f}, {r['train_s'] / einsum['train_s']:.3f}"
        for a, r in results.items()
        if a != "einsum"
    )


def memory_lines(results) -> list[str]:
    """XLA's temp buffers and cuDNN attention calls of each compiled step, and the device's
    peak bytes in use."""
    peak = bench.peak_bytes_in_use(jax.devices()[0])
    if peak is None:
        device_line = "peak device memory: n/a (this backend reports no peak_bytes_in_use)"
    else:
        used, limit = peak
        of_limit = f" of {limit / 2**30:.1f} GiB" if limit else ""
        device_line = (
            f"peak device memory: {used / 2**30:.2f} GiB{of_limit} (memory_stats "
            "peak_bytes_in_use since start: parameters, inputs and every attention path)"
        )
    return [
        "XLA temp buffers (activation memory estimate), forward / forward+backward: "
        + ", ".join(
            f"{a} {bench.mib(r['forward_temp_bytes'])} / {bench.mib(r['train_temp_bytes'])}"
            for a, r in results.items()
        ),
        "cuDNN attention calls in the compiled program, forward / forward+backward: "
        + ", ".join(
            f"{a} {r['forward_cudnn_attention_calls']} / {r['train_cudnn_attention_calls']}"
            for a, r in results.items()
        ),
        device_line,
    ]


def main(argv):
    del argv
    config = _CONFIG.value if _CONFIG.value is not None else bench.preset_config(_PRESET.value)
    source = flags.FLAGS["config"].value and "--config" or f"--preset={_PRESET.value}"
    if config.get("model") is None:
        raise ValueError("--config must name a config file whose get_config() has config.model")
    model_config = ml_collections.ConfigDict(config.model.to_dict())
    if _DTYPE.value:
        model_config.dtype = _DTYPE.value
    dtype = str(models.get_family(model_config.name).resolve(model_config).dtype)
    input_shapes = flops.input_shapes_from_config(config)
    num_classes = flops.num_classes_from_config(config)
    batch_size = _BATCH.value or (4 if source == "--preset=tiny" else 2)
    family = models.get_family(model_config.name)
    analytic = family.analytic_macs(model_config, input_shapes, num_classes)
    if analytic is not None:
        macs = analytic.total
    else:  # XLA's count of the einsum path, converted to multiply-adds
        xla = flops.analyse(model_config, input_shapes, num_classes, xla="lowered")
        macs = int(xla.xla_gflops * 1e9 / 2)

    device_kind = jax.devices()[0].device_kind
    print(
        f"device: {device_kind} ({jax.devices()[0].platform}, {jax.device_count()} devices, "
        f"using 1)   config: {source}   model: {model_config.name}   dtype: {dtype}"
    )
    print(
        f"inputs per example: {input_shapes}   batch: {batch_size}   timed steps: {_STEPS.value} "
        "(median, after one warm-up)"
    )
    print(f"analytic GFLOPs/example (1 multiply-add = 1 FLOP): {macs / 1e9:.4g}")
    lines = flops_lines(macs, batch_size, device_kind, dtype)
    if _STOP_AFTER.value == "flops":
        print("\n".join(lines))
        return
    attentions = attention_paths(model_config, dtype, _ATTENTIONS.value)
    print(f"attention paths: {', '.join(attentions)}", flush=True)
    results = compile_paths(model_config, attentions, input_shapes, num_classes, batch_size)
    if _STOP_AFTER.value == "compile":
        lines.append(
            "compile s (lower + compile), forward / forward+backward: "
            + ", ".join(
                f"{a} {r['forward_compile_s']:.1f} / {r['train_compile_s']:.1f}"
                for a, r in results.items()
            )
        )
        print("\n".join(lines + memory_lines(results)))
        return
    time_paths(results, _STEPS.value)
    lines = (
        report_rows(results, macs, batch_size, device_peaks.peak_tflops(device_kind, dtype))
        + [""]
        + lines
        + [
            mfu_line(results, macs, batch_size, device_kind, dtype),
            ratio_line(results),
        ]
        + memory_lines(results)
    )
    print("\n".join(lines))
    if _OUT.value:
        os.makedirs(_OUT.value, exist_ok=True)
        tag = _PRESET.value if not flags.FLAGS["config"].value else "config"
        device_tag = "".join(c if c.isalnum() else "_" for c in device_kind).strip("_").lower()
        path = os.path.join(_OUT.value, f"benchmark_{tag}_{device_tag}.md")
        header = [
            f"# Benchmark: {source}, {model_config.name}, {dtype}, batch {batch_size}, "
            f"on {device_kind}",
            "",
            f"`python scripts/benchmark_model.py {' '.join(sys.argv[1:])}`; inputs per "
            f"example {input_shapes}; analytic {macs / 1e9:.4g} GFLOPs/example "
            "(1 multiply-add = 1 FLOP); TFLOP/s below count 2 FLOPs per multiply-add.",
            "",
        ]
        with open(path, "w") as f:
            f.write("\n".join(header + lines) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
