"""Step time, throughput and achieved FLOP/s of a model, fused vs einsum attention, in one run.

    python scripts/benchmark_model.py                       # tiny MBT, < 1 min on a CPU
    python scripts/benchmark_model.py --preset=mbt_b16 --dtype=bfloat16 --batch_size=8   # GPU
    python scripts/benchmark_model.py --config=configs/<file>.py --batch_size=4 --steps=10

For each attention path (`config.model.attention` = 'fused', i.e. jax.nn.dot_product_attention,
and 'einsum', plain softmax(q·kᵀ)·v) it prints: compile time, forward (inference) and
forward+backward (gradient of a sigmoid cross-entropy w.r.t. all parameters, train=True, no
optimiser update) median time per step (the two paths timed alternately), examples/s,
achieved FLOP/s and the fraction of the device's peak where known, then the einsum/fused
time ratios.

Achieved FLOP/s uses the hardware convention (1 multiply-add = 2 FLOPs):
forward = 2 · analytic multiply-adds (mbt.tools.flops) · batch; forward+backward = 3× that
(the backward pass does two matrix products per forward one). Elementwise ops are not counted.
Peaks are dense tensor-core numbers; 'float32' means JAX's default precision for float32
matmuls, which is TF32 on NVIDIA Ampere and newer and one bfloat16 pass on TPU.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from mbt import models  # noqa: E402
from mbt.tools import flops  # noqa: E402

# Dense peak TFLOP/s (1 multiply-add = 2 FLOPs) by a substring of jax.devices()[0].device_kind;
# the first match wins, so specific names come before general ones. Vendors' data sheets.
PEAK_TFLOPS = (
    ("H100 PCIe", {"bfloat16": 756.0, "float32": 378.0}),
    ("H100 NVL", {"bfloat16": 835.5, "float32": 417.5}),
    ("H100", {"bfloat16": 989.4, "float32": 494.7}),  # SXM
    ("H200 NVL", {"bfloat16": 835.5, "float32": 417.5}),
    ("H200", {"bfloat16": 989.4, "float32": 494.7}),  # SXM
    ("A100", {"bfloat16": 312.0, "float32": 156.0}),
    ("TPU v4", {"bfloat16": 275.0, "float32": 275.0}),
    ("TPU v5 lite", {"bfloat16": 197.0, "float32": 197.0}),  # v5e
    ("TPU v5e", {"bfloat16": 197.0, "float32": 197.0}),
    ("TPU v5p", {"bfloat16": 459.0, "float32": 459.0}),
)
ATTENTIONS = ("fused", "einsum")

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file with get_config().", lock_config=False
)
_PRESET = flags.DEFINE_enum(
    "preset",
    "tiny",
    ["tiny", "mbt_b16", "mbt_b16_8f"],
    "Used when --config is not given. tiny: width 64, 2 layers, 4×32² frames, 64×32 audio. "
    "mbt_b16: MBT-B/16 at the released code's shapes (32 frames 224², tubelets 2×16×16 → 3136 "
    "tokens; 8 s audio 800×128 → 400 tokens). mbt_b16_8f: 8 frames, 2-D patches (1568 tokens).",
)
_BATCH = flags.DEFINE_integer("batch_size", None, "Examples per step (default: 4 tiny, 2 presets).")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per measurement (after one warm-up).")
_DTYPE = flags.DEFINE_enum(
    "dtype",
    None,
    ["float32", "bfloat16"],
    "Overrides config.model.dtype (computation dtype; params stay float32).",
)
_OUT = flags.DEFINE_string("out", "results", "Directory for the markdown table ('' = don't write).")


def peak_tflops(device_kind: str, dtype: str) -> float | None:
    """Dense peak TFLOP/s of `device_kind` for `dtype`, or None when unknown (e.g. CPUs)."""
    for key, peaks in PEAK_TFLOPS:
        if key.lower() in device_kind.lower():
            return peaks.get(dtype)
    return None


def tiny_config() -> ml_collections.ConfigDict:
    model = models.default_mbt_config()
    model.variant = None
    model.hidden_size, model.num_heads, model.mlp_dim, model.num_layers = 64, 2, 128, 2
    model.tokenizers.rgb.patches = (2, 8, 8)
    model.tokenizers.spectrogram.patches = (8, 8)
    model.fusion_layer = 1
    dataset = ml_collections.ConfigDict(
        dict(
            name="audioset",
            num_frames=4,
            frame_size=32,
            audio_seconds=0.64,
            num_mel_bins=32,
            spec_channels=1,
        )
    )
    return ml_collections.ConfigDict(dict(model=model, dataset=dataset))


def preset_config(name: str) -> ml_collections.ConfigDict:
    if name == "tiny":
        return tiny_config()
    model = models.default_mbt_config()  # B/16, bottleneck fusion at Lf = 8, B = 4
    num_frames = 32
    if name == "mbt_b16_8f":
        num_frames = 8
        model.tokenizers.rgb = {
            "kind": "temporal_sampling",
            "patches": (16, 16),
            "n_sampled_frames": 8,
        }
    dataset = ml_collections.ConfigDict(
        dict(
            name="audioset",
            num_frames=num_frames,
            frame_size=224,
            audio_seconds=8.0,
            num_mel_bins=128,
            spec_channels=1,
        )
    )
    return ml_collections.ConfigDict(dict(model=model, dataset=dataset))


def make_batch(input_shapes, batch_size: int, num_classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    inputs = {
        m: jnp.asarray(rng.uniform(-1, 1, (batch_size,) + tuple(s)), jnp.float32)
        for m, s in input_shapes.items()
    }
    labels = jnp.asarray(rng.uniform(size=(batch_size, num_classes)) < 0.05, jnp.float32)
    return inputs, labels


def sigmoid_cross_entropy(logits, labels):
    """Mean over batch of the summed per-class sigmoid cross-entropy; dict logits are summed."""
    heads = logits.values() if isinstance(logits, dict) else [logits]
    total = 0.0
    for head in heads:
        per_class = jnp.maximum(head, 0) - head * labels + jnp.log1p(jnp.exp(-jnp.abs(head)))
        total = total + jnp.mean(jnp.sum(per_class, axis=-1))
    return total


def random_params(abstract, seed: int = 0):
    """N(0, 0.02) parameters of the given shapes, drawn with numpy.

    Step time does not depend on parameter values, and this skips compiling the model's
    initialisers (slower than compiling its forward pass on a CPU).
    """
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda leaf: jnp.asarray(rng.normal(0.0, 0.02, leaf.shape), leaf.dtype), abstract
    )


def time_interleaved(calls: dict[str, tuple], steps: int) -> dict[str, float]:
    """Median seconds per call of each already compiled `fn` in `{name: (fn, args)}`.

    After one warm-up call each, the calls alternate step by step, so a change in the load of a
    shared machine hits all of them alike and their ratio stays meaningful.
    """
    for fn, args in calls.values():
        jax.block_until_ready(fn(*args))
    times = {name: [] for name in calls}
    for _ in range(steps):
        for name, (fn, args) in calls.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def compile_steps(model_config, num_classes: int, params, inputs, labels) -> dict:
    """Compiles the forward and forward+backward steps of one model config.

    Returns {'forward': (compiled, args), 'train': (compiled, args), 'forward_compile_s',
    'train_compile_s', 'forward_temp_bytes', 'train_temp_bytes'}.
    """
    model = models.build_model(model_config, num_classes)
    dropout_key = jax.random.PRNGKey(1)

    def forward(p, x):
        return model.apply({"params": p}, x, train=False)

    def loss_and_grads(p, x, y, key):
        def loss(q):
            return sigmoid_cross_entropy(
                model.apply({"params": q}, x, train=True, rngs={"dropout": key}), y
            )

        return jax.value_and_grad(loss)(p)

    result = {}
    for name, fn, args in (
        ("forward", forward, (params, inputs)),
        ("train", loss_and_grads, (params, inputs, labels, dropout_key)),
    ):
        start = time.perf_counter()
        compiled = jax.jit(fn).lower(*args).compile()
        result[f"{name}_compile_s"] = time.perf_counter() - start
        memory = compiled.memory_analysis()
        result[f"{name}_temp_bytes"] = getattr(memory, "temp_size_in_bytes", None)
        result[name] = (compiled, args)
    return result


def benchmark(model_config, input_shapes, num_classes: int, batch_size: int, steps: int):
    """{attention: {'forward_s', 'train_s' (median s/step), compile times, temp bytes}}."""
    inputs, labels = make_batch(input_shapes, batch_size, num_classes)
    model = models.build_model(model_config, num_classes)
    params = random_params(flops.abstract_params(model, inputs))  # same tree for both paths
    results = {}
    for attention in ATTENTIONS:
        variant = ml_collections.ConfigDict(model_config.to_dict())
        variant.attention = attention
        results[attention] = compile_steps(variant, num_classes, params, inputs, labels)
    for step in ("forward", "train"):
        medians = time_interleaved({a: r[step] for a, r in results.items()}, steps)
        for attention, seconds in medians.items():
            results[attention][f"{step}_s"] = seconds
    return results


def report_rows(results, macs_per_example: int, batch_size: int, device_kind: str, dtype: str):
    peak = peak_tflops(device_kind, dtype)
    header = (
        "| attention | compile s fwd / fwd+bwd | fwd ms/step | fwd ex/s | fwd TFLOP/s | "
        "fwd+bwd ms/step | fwd+bwd ex/s | fwd+bwd TFLOP/s | fwd / fwd+bwd % of peak |"
    )
    rows = [header, "|---|" + "---:|" * 8]
    for attention, r in results.items():
        fwd_flops = 2 * macs_per_example * batch_size
        fwd_tf, train_tf = fwd_flops / r["forward_s"] / 1e12, 3 * fwd_flops / r["train_s"] / 1e12
        of_peak = f"{100 * fwd_tf / peak:.1f} / {100 * train_tf / peak:.1f}" if peak else "unknown"
        rows.append(
            f"| {attention} | {r['forward_compile_s']:.1f} / {r['train_compile_s']:.1f} "
            f"| {1e3 * r['forward_s']:.2f} "
            f"| {batch_size / r['forward_s']:.4g} | {fwd_tf:.4g} | {1e3 * r['train_s']:.2f} "
            f"| {batch_size / r['train_s']:.4g} | {train_tf:.4g} | {of_peak} |"
        )
    return rows, peak


def main(argv):
    del argv
    config = _CONFIG.value if _CONFIG.value is not None else preset_config(_PRESET.value)
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
    print(f"inputs per example: {input_shapes}   batch: {batch_size}   timed steps: {_STEPS.value}")
    print(f"analytic GFLOPs/example (1 multiply-add = 1 FLOP): {macs / 1e9:.4g}")
    results = benchmark(model_config, input_shapes, num_classes, batch_size, _STEPS.value)
    rows, peak = report_rows(results, macs, batch_size, device_kind, dtype)
    fused, einsum = results["fused"], results["einsum"]
    lines = rows + [
        "",
        f"peak {dtype}: " + (f"{peak:g} TFLOP/s" if peak else f"unknown for {device_kind!r}"),
        f"einsum / fused time: forward {einsum['forward_s'] / fused['forward_s']:.3f}, "
        f"forward+backward {einsum['train_s'] / fused['train_s']:.3f}",
        "XLA temp buffers (activation memory estimate), fused / einsum: forward "
        f"{_mib(fused['forward_temp_bytes'])} / {_mib(einsum['forward_temp_bytes'])}, "
        f"forward+backward {_mib(fused['train_temp_bytes'])} / {_mib(einsum['train_temp_bytes'])}",
    ]
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


def _mib(num_bytes) -> str:
    return "n/a" if num_bytes is None else f"{num_bytes / 2**20:.1f} MiB"


if __name__ == "__main__":
    app.run(main)
