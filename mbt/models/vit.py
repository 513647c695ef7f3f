"""ViT building blocks shared by every model: presets, attention, MLP and the encoder block.

Parameter names follow Flax's `MultiHeadDotProductAttention` and Scenic's ViT so that ViT and
Scenic MBT checkpoints map one-to-one: an encoder block holds `LayerNorm_0`,
`MultiHeadDotProductAttention_0/{query,key,value,out}`, `LayerNorm_1`,
`MlpBlock_0/{Dense_0,Dense_1}`.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from mbt.models.family import MODEL_AXIS
from mbt.models.family import REPLICATE


@dataclasses.dataclass(frozen=True)
class ViTSize:
    """Width, depth, heads and MLP size of a ViT preset; `patch` is the 2-D patch side in pixels."""

    hidden_size: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    patch: int


_WIDTHS = {
    "Ti": (192, 12, 3, 768),
    "S": (384, 12, 6, 1536),
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
}


def preset(variant: str) -> ViTSize:
    """Returns the sizes of a ViT variant such as 'B/16' ('Ti', 'S', 'B', 'L'; any patch size)."""
    name, _, patch = variant.partition("/")
    if name not in _WIDTHS or not patch.isdigit():
        allowed = ", ".join(f"'{w}/16'" for w in _WIDTHS)
        raise ValueError(
            f"config.model.variant={variant!r} is not a ViT preset; use one of {allowed} "
            "(any patch size after '/'), or None with explicit sizes"
        )
    return ViTSize(*_WIDTHS[name], patch=int(patch))


def _dtype(dtype: Any) -> jnp.dtype:
    return jnp.dtype(dtype) if dtype is not None else jnp.float32


# The variable collection `MultiHeadDotProductAttention` sows its attention weights into, only
# when a caller makes it mutable (`model.apply(..., mutable=[ATTENTION_COLLECTION])`, as
# `mbt.tools.attention` does). Not 'intermediates': training makes that collection mutable for
# latent mixup (SFT), and every layer's attention weights would then be computed and kept.
ATTENTION_COLLECTION = "attention"


def attention_weights(query_BxQxNxH, key_BxKxNxH, mask_QxK=None):
    """softmax(q·kᵀ/√H) over the keys: `[batch, heads, q_tokens, k_tokens]`, float32; keys
    where the boolean `mask_QxK` is False get weight 0.

    The queries are scaled before the product (as Flax and Scenic do), not the logits: one
    pass over `[B, Q, N, H]` instead of over the K/H times larger `[B, N, Q, K]`.
    """
    head_dim = query_BxQxNxH.shape[-1]
    query_BxQxNxH = query_BxQxNxH / jnp.sqrt(head_dim).astype(query_BxQxNxH.dtype)
    logits_BxNxQxK = jnp.einsum("bqnh,bknh->bnqk", query_BxQxNxH, key_BxKxNxH)
    logits_BxNxQxK = logits_BxNxQxK.astype(jnp.float32)
    if mask_QxK is not None:
        logits_BxNxQxK = jnp.where(jnp.asarray(mask_QxK), logits_BxNxQxK, -jnp.inf)
    return jax.nn.softmax(logits_BxNxQxK, axis=-1)


def einsum_attention(
    query_BxQxNxH,
    key_BxKxNxH,
    value_BxKxNxH,
    *,
    dropout_rate: float = 0.0,
    dropout_rng=None,
    deterministic: bool = True,
):
    """Plain softmax(q·kᵀ/√H)·v attention; the reference path, and the one that supports dropout.

    Returns `[batch, q_tokens, heads, head_dim]`. Softmax runs in float32 whatever the inputs.
    """
    weights_BxNxQxK = attention_weights(query_BxQxNxH, key_BxKxNxH)
    if dropout_rate > 0.0 and not deterministic:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights_BxNxQxK.shape)
        weights_BxNxQxK = jnp.where(keep, weights_BxNxQxK / (1.0 - dropout_rate), 0.0)
    weights_BxNxQxK = weights_BxNxQxK.astype(value_BxKxNxH.dtype)
    return jnp.einsum("bnqk,bknh->bqnh", weights_BxNxQxK, value_BxKxNxH)


# Computation dtypes of cuDNN's flash attention (`jax.nn.dot_product_attention(...,
# implementation='cudnn')`); float32 is not among them.
CUDNN_DTYPES = ("bfloat16", "float16")
# Head dims cuDNN's flash attention takes (multiples of 8): up to 128 on every GPU it runs on,
# up to 256 from Hopper (compute capability 9.0) on (jax's `check_is_flash_attention`).
CUDNN_MAX_HEAD_DIM = 128
CUDNN_MAX_HEAD_DIM_HOPPER = 256
CUDNN_HOPPER = (9, 0)
# cuDNN's flash attention runs on Ampere (compute capability 8.0) and newer.
CUDNN_MIN_COMPUTE_CAPABILITY = (8, 0)


def _nvidia_gpu(backend: str | None) -> tuple[bool, str, tuple[int, ...] | None]:
    """(whether `backend` is an NVIDIA GPU, its name, the first GPU's compute capability or None
    where no GPU is here to ask); ROCm GPUs also report 'gpu'."""
    backend = backend or jax.default_backend()
    if backend not in ("gpu", "cuda"):
        return False, backend, None
    try:
        device = jax.devices("gpu")[0]
    except RuntimeError:  # no GPU client here (a test naming 'gpu' on a CPU)
        return True, backend, None
    if "rocm" in getattr(device.client, "platform_version", "").lower():
        return False, "rocm", None
    capability = getattr(device, "compute_capability", None)
    return True, backend, tuple(int(x) for x in capability.split(".")) if capability else None


def cudnn_attention_problem(
    dtype: Any, head_dim: int | None = None, backend: str | None = None
) -> str | None:
    """Why cuDNN's flash attention cannot run here, or None when, as far as is known before
    compiling, it can. `dtype` is the computation dtype of queries, keys and values; `head_dim`
    (hidden_size / num_heads) is checked when given, against this GPU's limit (256 from
    Hopper on, else 128; 128 where no GPU is here to ask); `backend` defaults to
    `jax.default_backend()`; the compute capability is read from the first GPU where there is
    one. JAX checks the cuDNN version when the attention is traced."""
    on_nvidia, backend, capability = _nvidia_gpu(backend)
    if not on_nvidia:
        return f"the backend is {backend!r}, not an NVIDIA GPU"
    if capability is not None and capability < CUDNN_MIN_COMPUTE_CAPABILITY:
        return (
            f"this GPU's compute capability is {'.'.join(map(str, capability))}; cuDNN's flash "
            "attention needs 8.0 (Ampere) or newer"
        )
    if jnp.dtype(dtype).name not in CUDNN_DTYPES:
        return (
            f"the computation dtype is {jnp.dtype(dtype).name}; cuDNN's flash attention takes "
            f"{' or '.join(CUDNN_DTYPES)} (config.model.dtype)"
        )
    hopper = capability is not None and capability >= CUDNN_HOPPER
    max_head_dim = CUDNN_MAX_HEAD_DIM_HOPPER if hopper else CUDNN_MAX_HEAD_DIM
    if head_dim is not None and (head_dim % 8 or head_dim > max_head_dim):
        gpu = "this GPU" if capability is not None else "every GPU"
        return (
            f"the head dim (hidden_size / num_heads) is {head_dim}; cuDNN's flash attention "
            f"takes multiples of 8 up to {max_head_dim} on {gpu}"
        )
    return None


def resolve_attention(
    attention: str,
    dtype: Any = jnp.float32,
    head_dim: int | None = None,
    backend: str | None = None,
) -> str:
    """'auto' → 'cudnn' where cuDNN's flash attention can run (`cudnn_attention_problem`: an
    NVIDIA GPU, bfloat16 or float16, a head dim it takes), 'einsum' elsewhere (CPU, TPU, float32
    on GPU); other values unchanged. docs/compute.md has the measurements behind the choice."""
    if attention != "auto":
        return attention
    return "cudnn" if cudnn_attention_problem(dtype, head_dim, backend) is None else "einsum"


def attention_paths(dtype: Any, head_dim: int) -> list[str]:
    """The attention implementations that can run here at this dtype and head dim: einsum (the
    reference), fused, and cudnn where `cudnn_attention_problem` finds nothing against it."""
    cudnn = [] if cudnn_attention_problem(dtype, head_dim) else ["cudnn"]
    return ["einsum", "fused"] + cudnn


def cudnn_attention(
    query_BxQxNxH: jax.Array, key_BxKxNxH: jax.Array, value_BxKxNxH: jax.Array
) -> jax.Array:
    """softmax(q·kᵀ/√H)·v `[B, Q, N, H]` by cuDNN's flash attention, which never stores the
    `[B, N, Q, K]` weights; a ValueError naming the config key where it cannot run here."""
    problem = cudnn_attention_problem(query_BxQxNxH.dtype, query_BxQxNxH.shape[-1])
    if problem is not None:
        raise ValueError(
            f"config.model.attention='cudnn' cannot run: {problem}. Use 'auto' (cuDNN where it "
            "runs, einsum elsewhere), 'einsum' or 'fused'"
        )
    return even_length_attention(query_BxQxNxH, key_BxKxNxH, value_BxKxNxH, "cudnn")


def even_length_attention(
    query_BxQxNxH: jax.Array,
    key_BxKxNxH: jax.Array,
    value_BxKxNxH: jax.Array,
    implementation: Literal["xla", "cudnn"],
) -> jax.Array:
    """`jax.nn.dot_product_attention` on sequences padded to even lengths, padding masked out.

    JAX's cuDNN training rule (jax 0.10–0.11) treats every call as biased, and biased cuDNN
    attention refuses odd sequence lengths in training ("Unsupported sequence length Q 3137,
    KV 3137"), while ViT sequences with a CLS token are odd. An odd axis gets one zero token;
    `key_value_seq_lengths` masks the padded key and the padded query's output is dropped, so
    the result equals attention over the unpadded sequences.
    """
    q_len, kv_len = query_BxQxNxH.shape[1], key_BxKxNxH.shape[1]
    if q_len % 2 == 0 and kv_len % 2 == 0:
        return jax.nn.dot_product_attention(
            query_BxQxNxH, key_BxKxNxH, value_BxKxNxH, implementation=implementation
        )

    def to_even(x_BxTxNxH):
        return jnp.pad(x_BxTxNxH, ((0, 0), (0, x_BxTxNxH.shape[1] % 2), (0, 0), (0, 0)))

    batch = query_BxQxNxH.shape[0]
    out_BxQxNxH = jax.nn.dot_product_attention(
        to_even(query_BxQxNxH),
        to_even(key_BxKxNxH),
        to_even(value_BxKxNxH),
        query_seq_lengths=jnp.full((batch,), q_len, jnp.int32),
        key_value_seq_lengths=jnp.full((batch,), kv_len, jnp.int32),
        implementation=implementation,
    )
    return out_BxQxNxH[:, :q_len]


class MultiHeadDotProductAttention(nn.Module):
    """Dot-product attention with Flax's MHA parameter layout, by `jax.nn.dot_product_attention`.

    Queries come from `x_q_BxQxD`, keys and values from `x_kv_BxKxD` (default: `x_q_BxQxD`, i.e.
    self-attention); returns `[B, Q, D]`. `implementation`: 'einsum' (`einsum_attention`),
    'fused' (`jax.nn.dot_product_attention` with JAX's choice of kernel: XLA's softmax attention
    in jax 0.10), 'cudnn' (`cudnn_attention`) or 'auto' (`resolve_attention`). The fused and cuDNN
    kernels have no attention dropout, so when `dropout_rate > 0` in training the einsum path runs
    instead.
    When the collection `ATTENTION_COLLECTION` is mutable, the block also sows
    `weights_mean_over_heads`, the softmax attention weights averaged over the heads `[B, Q, K]`
    (float32, before attention dropout), computed explicitly whatever `implementation` (the
    fused kernel does not return them); the output is computed exactly as without it. `init`
    never sows them. The head average keeps the capture of large models small (MBT-B/16 on
    32 frames: 3142 rgb tokens, 12 heads; 474 MB per layer per example with the heads).
    Parameters: `query`/`key`/`value` kernels `[D, heads, D/heads]`, biases `[heads, D/heads]`,
    `out` kernel `[heads, D/heads, D]`, bias `[D]`.
    """

    num_heads: int
    dropout_rate: float = 0.0
    implementation: str = "auto"  # 'auto', 'fused', 'cudnn' or 'einsum'
    dtype: Any = jnp.float32
    kernel_init: Any = nn.initializers.xavier_uniform()

    @nn.compact
    def __call__(
        self, x_q_BxQxD: jax.Array, x_kv_BxKxD: jax.Array | None = None, *, deterministic: bool
    ) -> jax.Array:
        if x_kv_BxKxD is None:
            x_kv_BxKxD = x_q_BxQxD
        width = x_q_BxQxD.shape[-1]
        if width % self.num_heads:
            raise ValueError(f"hidden_size={width} is not divisible by num_heads={self.num_heads}")
        head_dim = width // self.num_heads
        dense = lambda name: nn.DenseGeneral(  # noqa: E731
            features=(self.num_heads, head_dim),
            kernel_init=self.kernel_init,
            dtype=self.dtype,
            name=name,
        )
        query_BxQxNxH = dense("query")(x_q_BxQxD)
        key_BxKxNxH = dense("key")(x_kv_BxKxD)
        value_BxKxNxH = dense("value")(x_kv_BxKxD)

        if self.is_mutable_collection(ATTENTION_COLLECTION) and not self.is_initializing():
            weights_BxNxQxK = attention_weights(query_BxQxNxH, key_BxKxNxH)
            self.sow(ATTENTION_COLLECTION, "weights_mean_over_heads", weights_BxNxQxK.mean(axis=1))
        implementation = resolve_attention(self.implementation, query_BxQxNxH.dtype, head_dim)
        if implementation not in ("einsum", "fused", "cudnn"):
            raise ValueError(
                f"config.model.attention={self.implementation!r}; use 'auto', 'fused', 'cudnn' or "
                "'einsum'"
            )
        needs_dropout = self.dropout_rate > 0.0 and not deterministic
        if needs_dropout:  # only the einsum path has attention dropout
            implementation = "einsum"
        if implementation == "cudnn":
            try:
                out_BxQxNxH = cudnn_attention(query_BxQxNxH, key_BxKxNxH, value_BxKxNxH)
            except NotImplementedError:  # JAX: this GPU or cuDNN version has no flash attention
                if self.implementation != "auto":
                    raise
                implementation = "einsum"
        if implementation == "einsum":
            rng = self.make_rng("dropout") if needs_dropout else None
            out_BxQxNxH = einsum_attention(
                query_BxQxNxH,
                key_BxKxNxH,
                value_BxKxNxH,
                dropout_rate=self.dropout_rate,
                dropout_rng=rng,
                deterministic=deterministic,
            )
        elif implementation == "fused":
            out_BxQxNxH = jax.nn.dot_product_attention(query_BxQxNxH, key_BxKxNxH, value_BxKxNxH)
        return nn.DenseGeneral(
            features=width,
            axis=(-2, -1),
            kernel_init=self.kernel_init,
            dtype=self.dtype,
            name="out",
        )(out_BxQxNxH)


class MlpBlock(nn.Module):
    """Dense(mlp_dim) → GELU → dropout → Dense(D) → dropout, on `[batch, tokens, D]`."""

    mlp_dim: int
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array, *, deterministic: bool) -> jax.Array:
        width = x_BxLxD.shape[-1]
        dense = lambda features: nn.Dense(  # noqa: E731
            features,
            dtype=self.dtype,
            kernel_init=nn.initializers.xavier_uniform(),
            bias_init=nn.initializers.normal(stddev=1e-6),
        )
        h_BxLxF = nn.gelu(dense(self.mlp_dim)(x_BxLxD))
        h_BxLxF = nn.Dropout(self.dropout_rate)(h_BxLxF, deterministic=deterministic)
        y_BxLxD = dense(width)(h_BxLxF)
        return nn.Dropout(self.dropout_rate)(y_BxLxD, deterministic=deterministic)


class EncoderBlock(nn.Module):
    """Pre-LN transformer block on `[batch, tokens, D]`.

    LayerNorm → attention → dropout → residual; LayerNorm → MLP → residual. Stochastic depth
    drops each residual branch per example with probability `droplayer_p`, independently for the
    two branches, without rescaling (as Scenic MBT does, so its checkpoints behave the same).

    With `context_BxCxD` (cross fusion) the tokens `x_BxLxD` attend to [context ; x], both
    normalised by `LayerNorm_0`: keys and values cover all C + L tokens, while queries, the
    output projection, residuals and the MLP run on x only; the output is `[B, L, D]`. That is
    the last L outputs of the block run on [context ; x] (what Scenic computes) without the work
    for the context tokens' outputs. Stochastic depth draws (`[B, 1, 1]`) are the same as
    there; dropout masks have the shape of the computed tokens, so in training with dropout the
    two draw different masks.
    """

    mlp_dim: int
    num_heads: int
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    droplayer_p: float = 0.0
    attention: str = "auto"
    dtype: Any = jnp.float32

    def _keep_mask(self, x: jax.Array, deterministic: bool):
        if deterministic or not self.droplayer_p:
            return 1.0
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        dropped = jax.random.bernoulli(self.make_rng("dropout"), self.droplayer_p, shape)
        return (1.0 - dropped).astype(x.dtype)

    # `context_BxCxD` is positional so that `nn.remat(..., static_argnums=(2,))` keeps working.
    @nn.compact
    def __call__(
        self, x_BxLxD: jax.Array, deterministic: bool, context_BxCxD: jax.Array | None = None
    ) -> jax.Array:
        norm = nn.LayerNorm(dtype=self.dtype)
        if context_BxCxD is None:
            q_BxLxD = kv_BxKxD = norm(x_BxLxD)
        else:
            kv_BxKxD = norm(jnp.concatenate([context_BxCxD, x_BxLxD], axis=1))
            q_BxLxD = kv_BxKxD[:, -x_BxLxD.shape[1] :]
        y = MultiHeadDotProductAttention(
            num_heads=self.num_heads,
            dropout_rate=self.attention_dropout_rate,
            implementation=self.attention,
            dtype=self.dtype,
        )(q_BxLxD, kv_BxKxD, deterministic=deterministic)
        y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
        x_BxLxD = x_BxLxD + y * self._keep_mask(y, deterministic)

        y = nn.LayerNorm(dtype=self.dtype)(x_BxLxD)
        y = MlpBlock(mlp_dim=self.mlp_dim, dropout_rate=self.dropout_rate, dtype=self.dtype)(
            y, deterministic=deterministic
        )
        return x_BxLxD + y * self._keep_mask(y, deterministic)


def encoder_block_class(remat: bool) -> type[nn.Module]:
    """`EncoderBlock`, or its rematerialised version that recomputes activations in backprop."""
    return nn.remat(EncoderBlock, static_argnums=(2,)) if remat else EncoderBlock


def droplayer_rate(layer: int, num_layers: int, max_rate: float) -> float:
    """Stochastic depth of `layer`: grows linearly from 0 (first layer) to `max_rate` (last)."""
    return layer / max(num_layers - 1, 1) * max_rate


_ATTN = r"MultiHeadDotProductAttention_\d+/"
_MLP = r"MlpBlock_\d+/"
# Tensor-parallel rules of an `EncoderBlock` (`mbt.models.family`): q/k/v kernel
# [D, heads, D/heads] and bias [heads, D/heads] and out kernel [heads, D/heads, D] split by
# head, MLP [D, mlp] and [mlp, D] by hidden unit; norms and the output biases replicated.
ENCODER_BLOCK_RULES = (
    (_ATTN + r"(query|key|value)/kernel$", (None, MODEL_AXIS, None)),
    (_ATTN + r"(query|key|value)/bias$", (MODEL_AXIS, None)),
    (_ATTN + r"out/kernel$", (MODEL_AXIS, None, None)),
    (_ATTN + r"out/bias$", REPLICATE),
    (_MLP + r"Dense_0/kernel$", (None, MODEL_AXIS)),
    (_MLP + r"Dense_0/bias$", (MODEL_AXIS,)),
    (_MLP + r"Dense_1/kernel$", (MODEL_AXIS, None)),
    (_MLP + r"Dense_1/bias$", REPLICATE),
    (r"LayerNorm_\d+/(scale|bias)$", REPLICATE),
)
