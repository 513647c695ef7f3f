"""The attention of SFT's sparse block, its attention weights, and the fixed sparse mask.

The SFT authors' sparse block (`yding37/sft`, `SparseFusionTransformer.apply_mha` with
fairseq's `SparseMultiheadAttention`) is attention only: x + MHA(LN(x)), where LN has no
learned scale or bias (`F.layer_norm`, ε = 1e-5) and there is no MLP. fairseq's
`SparseMultiheadAttention` is Child et al.'s fixed factorized pattern (stride l = 32,
expressivity c = 8, bidirectional) applied in `apply_sparse_mask`; but `mha(x, x, x)` as the
authors call it takes fairseq's `F.multi_head_attention_forward` fast path (no incremental
state, not ONNX, not TPU), which never calls `apply_sparse_mask`. So in their runs the sparse
block attends densely. `SparseAttentionBlock(mask='dense')` is that; `mask='fixed'` applies
the pattern the module is named for (`fixed_sparse_mask`).

The block also returns the softmax weights averaged over heads, `[B, L, L]` (query, key), as
fairseq does by default; the attention-based pools read them (`mbt.models.sft_pooling`).
`encoder_block_attention_weights` recomputes the same weights for a full ViT `EncoderBlock`
(this project's earlier sparse block).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mbt.models import vit

MASKS = ("dense", "fixed")
LAYER_NORM_EPSILON = 1e-5  # torch.nn.functional.layer_norm's default


def fixed_sparse_mask(length: int, stride: int, expressivity: int) -> np.ndarray:
    """`[L, L]` bool, True where query i may attend to key j: fairseq's bidirectional fixed
    pattern over a sequence of `length` tokens (index 0 is the CLS).

    Own window of i: tokens ⌊i/l⌋·l … ⌊i/l⌋·l + l, or (i − l) … i when i is a nonzero
    multiple of l (both ends included, so neighbouring windows share a token). Summaries, the
    same for every query: tokens m·l − c … m·l for m = 1, 2, … while m·l − c < L. Needs
    0 <= c < l (fairseq asserts l >= c; c = l never ends its loop).
    """
    if stride < 1 or not 0 <= expressivity < stride:
        raise ValueError(
            f"sparse attention stride={stride}, expressivity={expressivity}: need stride >= 1 "
            "and 0 <= expressivity < stride"
        )
    index = np.arange(length)
    start = (index // stride) * stride
    on_boundary = (index % stride == 0) & (index > 0)
    start = np.where(on_boundary, index - stride, start)
    end = np.where(on_boundary, index, start + stride)  # inclusive
    keys = index[None, :]
    window = (keys >= start[:, None]) & (keys <= end[:, None])
    to_next_multiple = (-index) % stride  # m·l − j for the smallest multiple m·l >= j
    summary = (index >= stride - expressivity) & (to_next_multiple <= expressivity)
    return window | summary[None, :]


class WeightedSelfAttention(nn.Module):
    """Multi-head self-attention that also returns its weights averaged over heads.

    Parameters as Flax's `MultiHeadDotProductAttention` (`query`/`key`/`value` kernels
    `[D, heads, D/heads]`, `out` `[heads, D/heads, D]`), so `vit.ENCODER_BLOCK_RULES` shard
    them. Returns (`[B, L, D]`, `[B, L, L]` float32 weights before attention dropout).
    """

    num_heads: int
    mask: str = "dense"
    stride: int = 32
    expressivity: int = 8
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array, *, deterministic: bool):
        width = x_BxLxD.shape[-1]
        if width % self.num_heads:
            raise ValueError(f"hidden_size={width} is not divisible by num_heads={self.num_heads}")
        head_dim = width // self.num_heads

        def dense(name):
            return nn.DenseGeneral(
                features=(self.num_heads, head_dim),
                kernel_init=nn.initializers.xavier_uniform(),
                dtype=self.dtype,
                name=name,
            )

        query, key, value = (dense(n)(x_BxLxD) for n in ("query", "key", "value"))
        mask = None
        if self.mask == "fixed":
            mask = fixed_sparse_mask(x_BxLxD.shape[1], self.stride, self.expressivity)
        elif self.mask != "dense":
            raise ValueError(f"config.model.sparse_attention_mask={self.mask!r}; use {MASKS}")
        weights_BxNxLxL = vit.attention_weights(query, key, mask)
        mixing = weights_BxNxLxL
        if self.dropout_rate > 0.0 and not deterministic:
            keep = jax.random.bernoulli(
                self.make_rng("dropout"), 1.0 - self.dropout_rate, mixing.shape
            )
            mixing = jnp.where(keep, mixing / (1.0 - self.dropout_rate), 0.0)
        out_BxLxNxH = jnp.einsum("bnqk,bknh->bqnh", mixing.astype(value.dtype), value)
        out_BxLxD = nn.DenseGeneral(
            features=width,
            axis=(-2, -1),
            kernel_init=nn.initializers.xavier_uniform(),
            dtype=self.dtype,
            name="out",
        )(out_BxLxNxH)
        return out_BxLxD, jnp.mean(weights_BxNxLxL, axis=1)


class SparseAttentionBlock(nn.Module):
    """The authors' sparse block: x + dropout(MHA(LN(x))), LN without scale or bias, no MLP.

    Returns (`[B, L, D]`, head-averaged weights `[B, L, L]`). Parameters:
    `MultiHeadDotProductAttention_0/{query,key,value,out}/{kernel,bias}` only.
    """

    num_heads: int
    mask: str = "dense"
    stride: int = 32
    expressivity: int = 8
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array, deterministic: bool):
        normed = nn.LayerNorm(
            epsilon=LAYER_NORM_EPSILON, use_bias=False, use_scale=False, dtype=self.dtype
        )(x_BxLxD)
        y_BxLxD, weights_BxLxL = WeightedSelfAttention(
            num_heads=self.num_heads,
            mask=self.mask,
            stride=self.stride,
            expressivity=self.expressivity,
            dropout_rate=self.attention_dropout_rate,
            dtype=self.dtype,
            name="MultiHeadDotProductAttention_0",
        )(normed, deterministic=deterministic)
        y_BxLxD = nn.Dropout(self.dropout_rate)(y_BxLxD, deterministic=deterministic)
        return x_BxLxD + y_BxLxD, weights_BxLxL


def encoder_block_attention_weights(
    block_params: Any, x_BxLxD: jax.Array, num_heads: int, *, cls_only: bool = False
) -> jax.Array:
    """Head-averaged attention weights of a `vit.EncoderBlock` on its input `x_BxLxD`.

    Recomputes the block's `LayerNorm_0` and query / key projections. Returns `[B, L, L]`, or
    with `cls_only` the CLS query's row `[B, 1, L]` (cheaper: one query).
    """
    width = x_BxLxD.shape[-1]
    head_dim = width // num_heads
    normed: jax.Array = nn.LayerNorm().apply(  # type: ignore[assignment]  # no mutable
        {"params": block_params["LayerNorm_0"]}, x_BxLxD
    )
    attention = block_params["MultiHeadDotProductAttention_0"]
    project = nn.DenseGeneral(features=(num_heads, head_dim))
    queries = normed[:, :1] if cls_only else normed
    query = project.apply({"params": attention["query"]}, queries)
    key = project.apply({"params": attention["key"]}, normed)
    return jnp.mean(vit.attention_weights(query, key), axis=1)
