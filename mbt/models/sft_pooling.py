"""SFT's pooling of one modality's tokens after its sparse block (`mbt.models.sft`).

Every function takes the non-CLS tokens `x_BxNxD` and returns the pooled tokens `[B, K, D]`.
The pool types and their semantics are those of the SFT authors' code (`yding37/sft`,
`models/sparse_fusion_transformer.py`), plus `cls_topk`, this project's earlier top-k:

window pools (kernel = stride = `kernel`, `padding` tokens added at both ends, as PyTorch's
`MaxPool1d` / `AvgPool1d(kernel, stride=kernel, padding)`; K = (N + 2·padding) // kernel):
- `max`: window maximum of each feature; the padding is -inf (never selected).
- `avg`: window mean of each feature; the padding is zeros and counts in the mean
  (PyTorch's `count_include_pad=True`), so an edge window is divided by `kernel` too.
- `attn`: attention-weighted window mean, Σ w·x / (Σ w + kernel·1e-5) with w the saliency
  (below) and zero padding in both sums (their `AttnWeightedAvgPool`: the ratio of two average
  pools plus 1e-5).
- `strided_random`: the padded sequence (zeros) of length L = N + 2·padding must divide by
  `kernel`; with W = L / kernel, output token j is input token j + i·W for one i drawn
  uniformly from {0, …, kernel − 1} per example and j (the same for every feature). So the
  candidates of a token are W apart, not a contiguous window: their code reshapes the
  sequence to `[kernel, W]` and picks along the first axis. K = W.

k pools (K = `pool_k`, the same for every modality, as their `--pool_k`):
- `topk`: per feature, the k largest values over the sequence, in decreasing order (their
  `TopKPool`, `torch.topk` along the sequence of each channel): output token j holds every
  feature's j-th largest value, so it mixes features of different input tokens.
- `attn_topk`: the k tokens of highest saliency, in decreasing saliency order.
- `random`: k distinct tokens drawn uniformly, in random order (their `randperm(N)[:k]`).
- `attn_random`: k distinct tokens drawn without replacement with probability ∝ saliency
  (their `torch.multinomial(w, k, replacement=False)`; here by the Gumbel top-k trick, which
  has the same distribution), in draw order.
- `attn_wkmedoids`: saliency-weighted k-medoids with the L1 distance over features: the
  centres start at the k tokens of highest saliency; 5 times, every token joins its nearest
  centre (the first on ties) and each cluster's new centre is its member i minimising
  Σ_{j in cluster} |x_i − x_j|₁ · w_j; output the centre tokens in cluster order. A cluster
  left empty keeps its centre (their loop would fail on it). With k >= N the tokens pass
  through unchanged (their behaviour), so K = N.

- `cls_topk` (this project's earlier `topk`): the k = N // kernel tokens the CLS attends to
  most in the sparse block (`cls_scores`), kept in sequence order.

Saliency `w` (`[B, N]`): the sparse block's softmax attention weights, averaged over heads,
the CLS row and column dropped, then averaged over the query tokens: how much attention
token j receives from the other tokens (their `w[:, 1:, 1:]` then `mean(dim=1)`).

Randomness (`random`, `attn_random`, `strided_random`) comes from the key the caller passes
(`mbt.models.sft` draws it from the 'dropout' stream in training and uses a fixed key at
evaluation, so a test is repeatable; the authors' code draws fresh indices at test time too).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

WINDOW_POOLS = ("max", "avg", "attn", "strided_random")
K_POOLS = ("topk", "attn_topk", "random", "attn_random", "attn_wkmedoids")
POOL_TYPES = WINDOW_POOLS + K_POOLS + ("cls_topk",)
SALIENCY_POOLS = ("attn", "attn_topk", "attn_random", "attn_wkmedoids")
RANDOM_POOLS = ("random", "attn_random", "strided_random")
KMEDOIDS_ITERATIONS = 5  # their AttnWeightedKMedoidsPool(iters=5)
ATTN_POOL_EPSILON = 1e-5  # added to the window-mean weight in their AttnWeightedAvgPool


@dataclasses.dataclass(frozen=True)
class Window:
    """A pooling window along the sequence: kernel = stride, `padding` tokens at each end."""

    kernel: int
    padding: int


def uses_windows(pool_type: str) -> bool:
    """Whether `pool_type` reads `pool_sizes` (window pools and `cls_topk`)."""
    return pool_type in WINDOW_POOLS or pool_type == "cls_topk"


def derived_window(num_tokens: int, pool_k: int) -> Window:
    """The window the authors derive when no per-modality size is given (no `--custom_ks`).

    kernel = ceil(N / k), padding = min((kernel·k − N) // 2, kernel // 2), so a window pool
    gives about k tokens: N = 1200, k = 5 → kernel 240, padding 0, 5 tokens; N = 38, k = 5
    → kernel 8, padding 1, 5 tokens; k = 1 → one token for the whole sequence.
    """
    kernel = (num_tokens - 1) // pool_k + 1
    padding = min((kernel * pool_k - num_tokens) // 2, kernel // 2)
    return Window(kernel, padding)


def resolve_window(num_tokens: int, pool_size: int, padding: int, pool_k: int) -> Window:
    """`pool_sizes.<m>` > 0: that kernel with `pool_paddings.<m>`; 0: `derived_window`."""
    if pool_size == 0:
        return derived_window(num_tokens, pool_k)
    return Window(pool_size, padding)


def pooled_length(num_tokens: int, pool_type: str, window: Window, pool_k: int) -> int:
    """Tokens a modality keeps: K of the module docstring. Raises ValueError when the pool
    cannot run on `num_tokens` tokens (the caller adds the config key)."""
    n = num_tokens
    if pool_type in K_POOLS:
        if pool_type == "attn_wkmedoids":
            return min(pool_k, n)
        if pool_k > n:
            raise ValueError(f"pool_k={pool_k} exceeds the {n} tokens to pool")
        return pool_k
    if pool_type == "cls_topk":
        if window.kernel > n:
            raise ValueError(f"pool size {window.kernel} exceeds the {n} tokens to pool")
        return n // window.kernel
    padded = n + 2 * window.padding
    if window.kernel > padded:
        raise ValueError(
            f"pool size {window.kernel} exceeds the {n} tokens (+ 2 x {window.padding} padding)"
        )
    if pool_type == "strided_random" and padded % window.kernel:
        raise ValueError(
            f"strided_random needs N + 2 x padding = {padded} to divide by the pool size "
            f"{window.kernel} (the authors' reshape to [kernel, W] does)"
        )
    return padded // window.kernel


def saliency(weights_BxLxL: jax.Array) -> jax.Array:
    """`[B, N]`: attention each non-CLS token receives from the non-CLS queries (mean).

    `weights_BxLxL` are head-averaged softmax weights over [CLS ; N tokens] (query, key).
    """
    return jnp.mean(weights_BxLxL[:, 1:, 1:], axis=1)


def _pad(x_BxNxD: jax.Array, padding: int, value: float) -> jax.Array:
    if not padding:
        return x_BxNxD
    return jnp.pad(x_BxNxD, ((0, 0), (padding, padding), (0, 0)), constant_values=value)


def _windows(x_BxNxD: jax.Array, window: Window, value: float) -> jax.Array:
    """`[B, K, kernel, D]`: the padded sequence cut into K consecutive windows (rest dropped)."""
    padded = _pad(x_BxNxD, window.padding, value)
    count = padded.shape[1] // window.kernel
    batch, _, width = padded.shape
    return padded[:, : count * window.kernel].reshape(batch, count, window.kernel, width)


def max_pool(x_BxNxD: jax.Array, window: Window) -> jax.Array:
    return jnp.max(_windows(x_BxNxD, window, -jnp.inf), axis=2)


def avg_pool(x_BxNxD: jax.Array, window: Window) -> jax.Array:
    return jnp.sum(_windows(x_BxNxD, window, 0.0), axis=2) / window.kernel


def attention_avg_pool(x_BxNxD: jax.Array, saliency_BxN: jax.Array, window: Window) -> jax.Array:
    """Σ_window w·x / (Σ_window w + kernel·ε): their ratio of two average pools, ε = 1e-5."""
    w_BxNx1 = saliency_BxN[..., None].astype(x_BxNxD.dtype)
    weighted_sum = jnp.sum(_windows(x_BxNxD * w_BxNx1, window, 0.0), axis=2)
    weight_sum = jnp.sum(_windows(w_BxNx1, window, 0.0), axis=2)
    return weighted_sum / (weight_sum + window.kernel * ATTN_POOL_EPSILON)


def _gather(x_BxNxD: jax.Array, index_BxK: jax.Array) -> jax.Array:
    return jnp.take_along_axis(x_BxNxD, index_BxK[..., None], axis=1)


def channel_topk(x_BxNxD: jax.Array, k: int) -> jax.Array:
    """Per feature, its k largest values over the sequence, largest first: `[B, k, D]`."""
    values_BxDxK, _ = jax.lax.top_k(jnp.swapaxes(x_BxNxD, 1, 2), k)
    return jnp.swapaxes(values_BxDxK, 1, 2)


def attention_topk(x_BxNxD: jax.Array, saliency_BxN: jax.Array, k: int) -> jax.Array:
    _, index_BxK = jax.lax.top_k(saliency_BxN, k)
    return _gather(x_BxNxD, index_BxK)


def random_k(x_BxNxD: jax.Array, k: int, key: jax.Array) -> jax.Array:
    """k distinct tokens per example, uniformly, in random order."""
    noise_BxN = jax.random.uniform(key, x_BxNxD.shape[:2])
    _, index_BxK = jax.lax.top_k(noise_BxN, k)
    return _gather(x_BxNxD, index_BxK)


def attention_random_k(
    x_BxNxD: jax.Array, saliency_BxN: jax.Array, k: int, key: jax.Array
) -> jax.Array:
    """k distinct tokens drawn without replacement with probability ∝ saliency (Gumbel top-k)."""
    gumbel_BxN = jax.random.gumbel(key, saliency_BxN.shape)
    logits_BxN = jnp.log(jax.lax.stop_gradient(saliency_BxN).astype(jnp.float32))
    _, index_BxK = jax.lax.top_k(logits_BxN + gumbel_BxN, k)
    return _gather(x_BxNxD, index_BxK)


def strided_random(x_BxNxD: jax.Array, window: Window, key: jax.Array) -> jax.Array:
    """Token j of the output: padded token j + i·W, i uniform in {0..kernel-1}; `[B, W, D]`."""
    padded = _pad(x_BxNxD, window.padding, 0.0)
    batch, length, width = padded.shape
    if length % window.kernel:
        raise ValueError(
            f"strided_random needs the padded length {length} to divide by {window.kernel}"
        )
    stride = length // window.kernel
    grid_BxKxWxD = padded.reshape(batch, window.kernel, stride, width)
    choice_Bx1xW = jax.random.randint(key, (batch, 1, stride), 0, window.kernel)
    picked_Bx1xWxD = jnp.take_along_axis(grid_BxKxWxD, choice_Bx1xW[..., None], axis=1)
    return picked_Bx1xWxD[:, 0]


def l1_distances(x_BxNxD: jax.Array) -> jax.Array:
    """`[B, N, N]`: Σ_features |x_i − x_j| (float32)."""
    x = x_BxNxD.astype(jnp.float32)
    return jnp.sum(jnp.abs(x[:, :, None, :] - x[:, None, :, :]), axis=-1)


def kmedoid_centres(
    x_BxNxD: jax.Array, saliency_BxN: jax.Array, k: int, iterations: int = KMEDOIDS_ITERATIONS
) -> jax.Array:
    """Indices `[B, k]` of the saliency-weighted k-medoids centres (module docstring)."""
    x_BxNxD = jax.lax.stop_gradient(x_BxNxD)
    w_BxN = jax.lax.stop_gradient(saliency_BxN).astype(jnp.float32)
    dist_BxNxN = l1_distances(x_BxNxD)
    _, centres_BxK = jax.lax.top_k(w_BxN, k)

    def update(_, centres_BxK):
        to_centres_BxNxK = jnp.take_along_axis(dist_BxNxN, centres_BxK[:, None, :], axis=2)
        member_BxNxK = jax.nn.one_hot(jnp.argmin(to_centres_BxNxK, axis=2), k, dtype=bool)
        # cost[b, i, c] = Σ_j d(i, j)·w_j over the members j of cluster c.
        weighted_BxNxK = jnp.where(member_BxNxK, w_BxN[..., None], 0.0)
        cost_BxNxK = jnp.einsum("bij,bjc->bic", dist_BxNxN, weighted_BxNxK)
        cost_BxNxK = jnp.where(member_BxNxK, cost_BxNxK, jnp.inf)
        best_BxK = jnp.argmin(cost_BxNxK, axis=1).astype(centres_BxK.dtype)
        return jnp.where(jnp.any(member_BxNxK, axis=1), best_BxK, centres_BxK)

    return jax.lax.fori_loop(0, iterations, update, centres_BxK)


def attention_kmedoids(x_BxNxD: jax.Array, saliency_BxN: jax.Array, k: int) -> jax.Array:
    if k >= x_BxNxD.shape[1]:
        return x_BxNxD
    return _gather(x_BxNxD, kmedoid_centres(x_BxNxD, saliency_BxN, k))


def cls_topk(x_BxNxD: jax.Array, cls_scores_BxN: jax.Array, window: Window) -> jax.Array:
    """The N // kernel tokens with the highest CLS attention, in sequence order."""
    _, index_BxK = jax.lax.top_k(cls_scores_BxN, x_BxNxD.shape[1] // window.kernel)
    return _gather(x_BxNxD, jnp.sort(index_BxK, axis=-1))


def pool(
    x_BxNxD: jax.Array,
    pool_type: str,
    *,
    window: Window,
    pool_k: int,
    weights_BxLxL: jax.Array | None = None,
    key: jax.Array | None = None,
) -> jax.Array:
    """Pools `x_BxNxD` with `pool_type`; `weights_BxLxL` (the sparse block's head-averaged
    attention over [CLS ; tokens]) for the saliency pools and `cls_topk`, `key` for the random
    ones. Returns `[B, pooled_length(N, ...), D]`."""
    pooled_length(x_BxNxD.shape[1], pool_type, window, pool_k)  # raises on impossible sizes
    if pool_type == "max":
        return max_pool(x_BxNxD, window)
    if pool_type == "avg":
        return avg_pool(x_BxNxD, window)
    if pool_type == "topk":
        return channel_topk(x_BxNxD, pool_k)
    if pool_type in RANDOM_POOLS:
        if key is None:
            raise ValueError(f"pool_type {pool_type!r} needs a random key")
        if pool_type == "random":
            return random_k(x_BxNxD, pool_k, key)
        if pool_type == "strided_random":
            return strided_random(x_BxNxD, window, key)
    if weights_BxLxL is None:
        raise ValueError(f"pool_type {pool_type!r} needs the sparse block's attention weights")
    if pool_type == "cls_topk":
        return cls_topk(x_BxNxD, weights_BxLxL[:, 0, 1:], window)
    w_BxN = saliency(weights_BxLxL)
    if pool_type == "attn":
        return attention_avg_pool(x_BxNxD, w_BxN, window)
    if pool_type == "attn_topk":
        return attention_topk(x_BxNxD, w_BxN, pool_k)
    if pool_type == "attn_random" and key is not None:
        return attention_random_k(x_BxNxD, w_BxN, pool_k, key)
    if pool_type == "attn_wkmedoids":
        return attention_kmedoids(x_BxNxD, w_BxN, pool_k)
    raise ValueError(f"config.model.pool_type={pool_type!r}; allowed: {POOL_TYPES}")
