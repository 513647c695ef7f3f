"""Shared pieces of the benchmark scripts (`scripts/benchmark_*.py`): inputs, parameters,
compiled steps and interleaved timing. TF-free, like the scripts.

Timing discipline: every measured program is compiled first, then the calls alternate step by
step (`time_interleaved`), so a change in the load of a shared machine hits all of them alike
and their ratios stay meaningful; report ratios, not absolute times.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mbt import models


def step_flops(macs_per_example: int, batch_size: int, train: bool) -> int:
    """Model FLOPs of one step, hardware convention (1 multiply-add = 2 FLOPs).

    Forward: 2 · analytic multiply-adds (`mbt.tools.flops`) · batch. Forward+backward (`train`):
    3× that, since the backward pass does two matrix products (input and weight gradients) per
    forward one. Matrix products only, as the analytic count; no rematerialisation.
    """
    return (3 if train else 1) * 2 * macs_per_example * batch_size


def make_batch(input_shapes: Mapping[str, tuple], batch_size: int, num_classes: int, seed=0):
    """Uniform(-1, 1) inputs `{modality: [B, *shape]}` and 5 %-dense multi-hot labels `[B, C]`."""
    rng = np.random.default_rng(seed)
    inputs = {
        m: jnp.asarray(rng.uniform(-1, 1, (batch_size,) + tuple(s)), jnp.float32)
        for m, s in input_shapes.items()
    }
    labels = jnp.asarray(rng.uniform(size=(batch_size, num_classes)) < 0.05, jnp.float32)
    return inputs, labels


def sigmoid_cross_entropy(logits, labels_BxC):
    """Mean over batch of the summed per-class sigmoid cross-entropy; dict logits are summed."""
    heads = logits.values() if isinstance(logits, dict) else [logits]
    total = 0.0
    for head in heads:
        per_class = jnp.maximum(head, 0) - head * labels_BxC + jnp.log1p(jnp.exp(-jnp.abs(head)))
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


def loss_and_grads(model):
    """`(params, inputs, labels_BxC, dropout_key) → (loss, grads)`: the gradient of
    `sigmoid_cross_entropy` w.r.t. all parameters, train mode, no optimiser update. The inputs
    dict is copied, since some modules (Scenic's MBT) write their tokens into the one given."""

    def step(params, inputs, labels_BxC, dropout_key):
        def loss(p):
            logits = model.apply(
                {"params": p}, dict(inputs), train=True, rngs={"dropout": dropout_key}
            )
            return sigmoid_cross_entropy(logits, labels_BxC)

        return jax.value_and_grad(loss)(params)

    return step


# Custom-call targets of cuDNN's fused attention in a compiled program start with this.
CUDNN_ATTENTION_TARGET = "__cudnn$fmha"


def compile_steps(model_config, num_classes: int, params, inputs, labels) -> dict[str, Any]:
    """Compiles the forward and forward+backward steps of one model config.

    Forward: `model.apply(train=False)`; forward+backward: the gradient of a sigmoid
    cross-entropy w.r.t. all parameters (train=True, no optimiser update). Returns
    `{'forward': (compiled, args), 'train': (compiled, args), 'forward_compile_s',
    'train_compile_s', 'forward_temp_bytes', 'train_temp_bytes', 'forward_cudnn_attention_calls',
    'train_cudnn_attention_calls'}` (compile = lower + compile, seconds; temp bytes = XLA's
    temporary buffers, an activation-memory estimate; calls = cuDNN flash-attention custom calls
    in the compiled program, which shows whether a path really runs cuDNN's kernel).
    """
    model = models.build_model(model_config, num_classes)
    dropout_key = jax.random.PRNGKey(1)

    def forward(p, x):
        return model.apply({"params": p}, x, train=False)

    result: dict[str, Any] = {}
    for name, fn, args in (
        ("forward", forward, (params, inputs)),
        ("train", loss_and_grads(model), (params, inputs, labels, dropout_key)),
    ):
        start = time.perf_counter()
        compiled = jax.jit(fn).lower(*args).compile()
        result[f"{name}_compile_s"] = time.perf_counter() - start
        memory = compiled.memory_analysis()
        result[f"{name}_temp_bytes"] = getattr(memory, "temp_size_in_bytes", None)
        result[f"{name}_cudnn_attention_calls"] = (compiled.as_text() or "").count(
            CUDNN_ATTENTION_TARGET
        )
        result[name] = (compiled, args)
    return result


def time_interleaved(calls: Mapping[str, tuple], steps: int) -> dict[str, float]:
    """Median seconds per call of each already compiled `fn` in `{name: (fn, args)}`.

    After one warm-up call each, the calls alternate step by step, so a change in the load of a
    shared machine hits all of them alike and their ratio stays meaningful.
    """
    for fn, args in calls.values():
        jax.block_until_ready(fn(*args))
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(steps):
        for name, (fn, args) in calls.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def peak_bytes_in_use(device: jax.Device) -> tuple[int, int | None] | None:
    """(peak bytes allocated since the process started, the device's limit or None) from
    `device.memory_stats()`; None where the backend keeps no such count (CPU)."""
    stats = device.memory_stats() or {}
    if "peak_bytes_in_use" not in stats:
        return None
    return int(stats["peak_bytes_in_use"]), stats.get("bytes_limit")


def mib(num_bytes: int | None) -> str:
    return "n/a" if num_bytes is None else f"{num_bytes / 2**20:.1f} MiB"


# Workloads of the benchmark scripts: `{name: (what it is)}`; `preset_config(name)` builds it.
PRESETS = {
    "tiny": "width 64, 2 layers, 4×32² frames (8 tokens), 64×32 audio (32 tokens)",
    "small": "width 192 (ViT-Ti), 4 layers, 8×96² frames as 2×16×16 tubelets (144 tokens), "
    "2 s audio 200×64 as 16×16 patches (48 tokens)",
    "mbt_b16": "MBT-B/16 at the released code's shapes: 32 frames 224² as 2×16×16 tubelets "
    "(3136 tokens), 8 s audio 800×128 (400 tokens)",
    "mbt_b16_8f": "MBT-B/16, 8 frames 224² with 2-D 16×16 patches (1568 tokens), 8 s audio "
    "(400 tokens): the MBT paper's Fig. 3 setting",
}


def _workload(model, num_frames: int, frame_size: int, audio_seconds: float, mel_bins: int):
    dataset = ml_collections.ConfigDict(
        dict(
            name="audioset",
            num_frames=num_frames,
            frame_size=frame_size,
            audio_seconds=audio_seconds,
            num_mel_bins=mel_bins,
            spec_channels=1,
        )
    )
    return ml_collections.ConfigDict(dict(model=model, dataset=dataset))


def preset_config(name: str) -> ml_collections.ConfigDict:
    """`ConfigDict(model=..., dataset=...)` of a workload in `PRESETS` (AudioSet's 527 classes);
    bottleneck fusion with 4 bottleneck tokens from Lf = L / 2 (tiny, small) or from the MBT
    paper's Lf = 8 (B/16)."""
    if name not in PRESETS:
        raise ValueError(f"preset {name!r}; allowed: {sorted(PRESETS)}")
    model = models.default_mbt_config()  # B/16, bottleneck fusion at Lf = 8, B = 4
    if name in ("tiny", "small"):
        width, layers, heads = (64, 2, 2) if name == "tiny" else (192, 4, 3)
        model.variant = None
        model.hidden_size, model.num_layers, model.num_heads = width, layers, heads
        model.mlp_dim, model.fusion_layer = 4 * width if name == "small" else 128, layers // 2
        if name == "tiny":
            model.tokenizers.rgb.patches = (2, 8, 8)
            model.tokenizers.spectrogram.patches = (8, 8)
            return _workload(model, 4, 32, 0.64, 32)
        model.tokenizers.rgb.patches = (2, 16, 16)
        model.tokenizers.spectrogram.patches = (16, 16)
        return _workload(model, 8, 96, 2.0, 64)
    if name == "mbt_b16_8f":
        model.tokenizers.rgb = {
            "kind": "temporal_sampling",
            "patches": (16, 16),
            "n_sampled_frames": 8,
        }
        return _workload(model, 8, 224, 8.0, 128)
    return _workload(model, 32, 224, 8.0, 128)
