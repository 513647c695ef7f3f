"""Agreement of every attention path that runs here with a float32 reference, at MBT's shapes.

    python scripts/check_attention.py                        # MBT-B/16 shapes, bfloat16
    python scripts/check_attention.py --dtype=float32 --tokens=64 --context_tokens=16

One encoder block (`mbt.models.vit.EncoderBlock`, train=False) with the same float32
parameters and inputs is run once per attention path (`einsum`, `fused`, and `cudnn` where
cuDNN's flash attention can run) in `--dtype`, in two cases: self-attention over `--tokens`
tokens (MBT-B/16 on 32 frames: 3136 rgb tokens, CLS and 4 bottleneck tokens) and the cross
fusion form (queries over those tokens, keys and values over `--context_tokens` more in front).
For each it prints ‖got − ref‖ / ‖ref‖ of the block's output and of the gradients of
⟨output, random cotangent⟩ with respect to the parameters and the input, where ref is the
einsum path in float32 at 'highest' matmul precision. Exits 1 when an error is over
`--tolerance` (default: 2e-2 for bfloat16 and float16, 2e-3 for float32, which GPUs multiply
as TF32).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from mbt.models import vit  # noqa: E402

_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["float32", "bfloat16", "float16"], "Computation.")
_TOKENS = flags.DEFINE_integer("tokens", 3141, "Query tokens (3136 rgb + CLS + 4 bottleneck).")
_CONTEXT = flags.DEFINE_integer("context_tokens", 401, "Extra key/value tokens of the cross case.")
_BATCH = flags.DEFINE_integer("batch_size", 2, "Examples.")
_WIDTH = flags.DEFINE_integer("hidden_size", 768, "Width D (B/16: 768).")
_HEADS = flags.DEFINE_integer("num_heads", 12, "Heads (B/16: 12; head dim = D / heads).")
_TOLERANCE = flags.DEFINE_float("tolerance", None, "Largest relative error that passes.")


def relative_error(got, want) -> float:
    """‖got − want‖ / ‖want‖ over every leaf, in float64."""
    got_leaves, want_leaves = jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)
    diff = sum(
        float(np.sum((np.asarray(g, np.float64) - np.asarray(w, np.float64)) ** 2))
        for g, w in zip(got_leaves, want_leaves)
    )
    norm = sum(float(np.sum(np.asarray(w, np.float64) ** 2)) for w in want_leaves)
    return (diff / norm) ** 0.5


def block_results(attention: str, dtype, params, x_BxLxD, context_BxCxD, cotangent_BxLxD):
    """(output, gradient w.r.t. the parameters, gradient w.r.t. the input) of one block, float32."""
    width = x_BxLxD.shape[-1]
    block = vit.EncoderBlock(
        mlp_dim=4 * width, num_heads=_HEADS.value, attention=attention, dtype=dtype
    )

    # Every array is an argument: arrays closed over would become constants that XLA folds.
    # One program gives the output and both gradients (one compile per path and case).
    def results(p, x, context, cotangent):
        def output(p, x):
            return block.apply({"params": p}, x, True, context).astype(jnp.float32)

        out, vjp = jax.vjp(output, p, x)
        grad_params, grad_x = vjp(cotangent)
        return out, grad_params, grad_x

    return jax.jit(results)(params, x_BxLxD, context_BxCxD, cotangent_BxLxD)


def main(argv):
    del argv
    dtype = jnp.dtype(_DTYPE.value)
    width, head_dim = _WIDTH.value, _WIDTH.value // _HEADS.value
    tolerance = _TOLERANCE.value or (2e-3 if dtype == jnp.float32 else 2e-2)
    paths = vit.attention_paths(dtype, head_dim)
    problem = vit.cudnn_attention_problem(dtype, head_dim)
    print(
        f"device: {jax.devices()[0].device_kind} ({jax.default_backend()})   dtype: {dtype}   "
        f"batch {_BATCH.value}, {_TOKENS.value} tokens (+{_CONTEXT.value} context), width "
        f"{width}, {_HEADS.value} heads   paths: {', '.join(paths)}"
        + (f"   (no cudnn: {problem})" if problem else ""),
        flush=True,
    )
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(_BATCH.value, _TOKENS.value, width)), jnp.float32)
    context = jnp.asarray(rng.normal(size=(_BATCH.value, _CONTEXT.value, width)), jnp.float32)
    cotangent = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    block = vit.EncoderBlock(mlp_dim=4 * width, num_heads=_HEADS.value)
    params = block.init(jax.random.PRNGKey(0), x, True)["params"]
    rows = ["| case | attention | output | grad params | grad input |", "|---|---|---:|---:|---:|"]
    worst = 0.0
    for case, context_or_none in (("self", None), ("cross", context)):
        with jax.default_matmul_precision("highest"):
            want = block_results("einsum", jnp.float32, params, x, context_or_none, cotangent)
        for attention in paths:
            got = block_results(attention, dtype, params, x, context_or_none, cotangent)
            errors = [relative_error(g, w) for g, w in zip(got, want)]
            worst = max(worst, *errors)
            rows.append(
                f"| {case} | {attention} | " + " | ".join(f"{e:.2e}" for e in errors) + " |"
            )
            print(rows[-1], flush=True)
    print(
        "\n".join(["", "relative error against einsum in float32 at 'highest' precision:"] + rows)
    )
    verdict = "PASS" if worst <= tolerance else "FAIL"
    print(f"{verdict}: largest relative error {worst:.2e} (tolerance {tolerance:g})")
    if verdict == "FAIL":
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
