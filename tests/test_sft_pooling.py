"""SFT's pool types, windows and token counts, and the sparse block's attention and mask, on
small hand-made inputs (`mbt.models.sft_pooling`, `mbt.models.sft_attention`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbt.models import sft_attention
from mbt.models import sft_pooling as P

W = P.Window


def _sequence():
    """[1, 5, 2]: feature 0 = 1..5, feature 1 = 5..1."""
    x = np.stack([np.arange(1.0, 6.0), np.arange(5.0, 0.0, -1.0)], axis=-1)
    return jnp.asarray(x[None], jnp.float32)


def test_max_and_avg_windows_with_padding_follow_pytorch():
    x = _sequence()
    # No padding: windows [1 2] [3 4], token 5 dropped (floor((5 - 2) / 2) + 1 = 2).
    np.testing.assert_array_equal(P.max_pool(x, W(2, 0))[0], [[2, 5], [4, 3]])
    np.testing.assert_array_equal(P.avg_pool(x, W(2, 0))[0], [[1.5, 4.5], [3.5, 2.5]])
    # Padding 1 each side: windows [pad 1] [2 3] [4 5]; max ignores the padding, avg counts
    # it as a zero (count_include_pad).
    np.testing.assert_array_equal(P.max_pool(x, W(2, 1))[0], [[1, 5], [3, 4], [5, 2]])
    np.testing.assert_array_equal(P.avg_pool(x, W(2, 1))[0], [[0.5, 2.5], [2.5, 3.5], [4.5, 1.5]])
    # Negative inputs: the -inf padding never wins a max.
    np.testing.assert_array_equal(P.max_pool(-x, W(3, 1))[0], [[-1, -4], [-3, -1]])


def test_attention_weighted_average_is_the_weighted_window_mean():
    x = _sequence()
    w = jnp.asarray([[1.0, 3.0, 0.0, 2.0, 2.0]])
    out = np.asarray(P.attention_avg_pool(x, w, W(2, 1)))[0]
    eps = 2 * P.ATTN_POOL_EPSILON  # kernel · 1e-5, their ratio of two average pools
    # Windows [pad, 1], [2, 3], [4, 5] with weights [0, 1], [3, 0], [2, 2].
    expected = [
        [1 * 1 / (1 + eps), 5 * 1 / (1 + eps)],
        [2 * 3 / (3 + eps), 4 * 3 / (3 + eps)],
        [(4 * 2 + 5 * 2) / (4 + eps), (2 * 2 + 1 * 2) / (4 + eps)],
    ]
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_topk_takes_each_features_largest_values_and_attn_topk_the_salient_tokens():
    x = jnp.asarray([[[1.0, 9.0], [7.0, 2.0], [4.0, 8.0], [3.0, 3.0]]])
    # Per feature: column 0 → 7, 4; column 1 → 9, 8 (token 0's feature 1 with token 2's).
    np.testing.assert_array_equal(P.channel_topk(x, 2)[0], [[7, 9], [4, 8]])
    saliency = jnp.asarray([[0.1, 0.2, 0.6, 0.1]])
    np.testing.assert_array_equal(P.attention_topk(x, saliency, 2)[0], [[4, 8], [7, 2]])


def test_random_pools_draw_distinct_tokens_and_repeat_with_the_key():
    x = jnp.arange(6 * 3, dtype=jnp.float32).reshape(1, 6, 3)
    x = jnp.concatenate([x, x + 100], axis=0)  # two examples
    key = jax.random.PRNGKey(3)
    out = np.asarray(P.random_k(x, 4, key))
    assert out.shape == (2, 4, 3)
    for b in range(2):
        rows = [int((row[0] - 100 * b) // 3) for row in out[b]]
        assert len(set(rows)) == 4 and all(0 <= r < 6 for r in rows)
        np.testing.assert_array_equal(out[b], np.asarray(x[b])[rows])
    np.testing.assert_array_equal(out, P.random_k(x, 4, key))
    # attn_random never draws a token without saliency, and draws distinct tokens.
    saliency = jnp.asarray([[0.0, 0.5, 0.0, 0.2, 0.3, 0.0]] * 2)
    for seed in range(5):
        picked = np.asarray(P.attention_random_k(x, saliency, 3, jax.random.PRNGKey(seed)))
        rows = sorted(int((row[0] % 100) // 3) for row in picked[0])
        assert rows == [1, 3, 4]


def test_strided_random_picks_one_of_the_tokens_w_apart():
    x = jnp.arange(1.0, 7.0).reshape(1, 6, 1)  # 6 tokens, pad 1 → 8 = kernel 4 × W 2
    out = np.asarray(P.strided_random(x, W(4, 1), jax.random.PRNGKey(0)))
    assert out.shape == (1, 2, 1)
    padded = [0, 1, 2, 3, 4, 5, 6, 0]
    assert out[0, 0, 0] in {padded[i * 2] for i in range(4)}  # positions 0, 2, 4, 6
    assert out[0, 1, 0] in {padded[i * 2 + 1] for i in range(4)}  # positions 1, 3, 5, 7
    seen = {
        tuple(np.asarray(P.strided_random(x, W(4, 1), jax.random.PRNGKey(s)))[0, :, 0])
        for s in range(30)
    }
    assert len(seen) > 4  # the draw varies with the key
    with pytest.raises(ValueError, match="divide"):
        P.strided_random(x, W(4, 0), jax.random.PRNGKey(0))


def test_weighted_kmedoids_finds_the_centre_of_each_cluster():
    # Two clusters on a line: {0, 1, 2} and {10, 11, 12}; saliency starts the centres at the
    # edges (tokens 0 and 5); Σ_j d(i, j)·w_j is smallest at each cluster's middle token
    # (cluster {0, 1, 2}: 0.4, 0.35, 0.5; cluster {3, 4, 5}: 0.46, 0.30, 0.34).
    x = jnp.asarray([[[0.0], [1.0], [2.0], [10.0], [11.0], [12.0]]])
    saliency = jnp.asarray([[0.2, 0.1, 0.15, 0.12, 0.1, 0.18]])
    np.testing.assert_array_equal(P.kmedoid_centres(x, saliency, 2)[0], [1, 4])
    np.testing.assert_array_equal(P.attention_kmedoids(x, saliency, 2)[0, :, 0], [1.0, 11.0])
    # A heavy weight pulls a cluster's medoid to it: Σ d(i, j)·w_j is smallest at i = 2.
    heavy = jnp.asarray([[0.1, 0.1, 5.0, 0.1, 0.1, 0.8]])
    assert 2 in np.asarray(P.kmedoid_centres(x, heavy, 2))[0].tolist()
    assert P.attention_kmedoids(x, saliency, 6).shape == x.shape  # k >= N: unchanged


def test_cls_topk_keeps_sequence_order_and_saliency_is_the_mean_over_queries():
    weights = np.full((1, 4, 4), 0.25, np.float32)
    weights[0, 0] = [0.1, 0.2, 0.6, 0.1]  # the CLS row: token 2 (x row 1) first
    weights[0, 1:, 1:] = [[0.1, 0.2, 0.4], [0.3, 0.2, 0.2], [0.5, 0.2, 0.0]]
    x = jnp.asarray([[[1.0], [2.0], [3.0]]])
    np.testing.assert_array_equal(
        P.pool(x, "cls_topk", window=W(2, 0), pool_k=1, weights_BxLxL=jnp.asarray(weights)),
        [[[2.0]]],
    )
    np.testing.assert_allclose(P.saliency(jnp.asarray(weights))[0], [0.3, 0.2, 0.2], rtol=1e-6)


@pytest.mark.parametrize(
    "n, k, kernel, padding, tokens",
    [(1200, 5, 240, 0, 5), (38, 5, 8, 1, 5), (400, 7, 58, 3, 7), (784, 1, 784, 0, 1)],
)
def test_derived_window_is_the_authors_formula(n, k, kernel, padding, tokens):
    window = P.derived_window(n, k)
    assert (window.kernel, window.padding) == (kernel, padding)
    assert P.pooled_length(n, "max", window, k) == tokens


def test_token_counts_of_the_authors_vggsound_run_and_of_the_k_pools():
    # run.sh: --ks_modality 38,64,38 without padding on rgb 38, spectrogram 1200, flow 38.
    assert [P.pooled_length(n, "max", W(k, 0), 5) for n, k in ((38, 38), (1200, 64))] == [1, 18]
    assert P.pooled_length(1200, "avg", W(64, 32), 5) == 19  # 1264 // 64
    assert P.pooled_length(1200, "attn", W(64, 16), 5) == 19  # 1232 // 64
    assert P.pooled_length(1200, "strided_random", W(60, 0), 5) == 20
    assert P.pooled_length(1200, "cls_topk", W(64, 0), 5) == 18
    assert [P.pooled_length(10, t, W(4, 0), 3) for t in P.K_POOLS] == [3] * 5
    assert P.pooled_length(2, "attn_wkmedoids", W(4, 0), 3) == 2
    with pytest.raises(ValueError, match="pool_k=3 exceeds the 2 tokens"):
        P.pooled_length(2, "topk", W(4, 0), 3)
    with pytest.raises(ValueError, match="exceeds"):
        P.pooled_length(3, "max", W(8, 2), 3)


def test_fixed_sparse_mask_is_fairseqs_bidirectional_pattern():
    mask = sft_attention.fixed_sparse_mask(10, stride=4, expressivity=1)
    allowed = [set(np.flatnonzero(row).tolist()) for row in mask]
    summaries = {3, 4, 7, 8}  # m·4 − 1 … m·4 for m = 1, 2
    assert allowed[0] == allowed[1] == allowed[3] == {0, 1, 2, 3, 4} | summaries
    assert allowed[4] == {0, 1, 2, 3, 4} | summaries  # a multiple of the stride: (i − 4) … i
    assert allowed[5] == allowed[8] == {4, 5, 6, 7, 8} | summaries
    assert allowed[9] == {8, 9} | summaries
    with pytest.raises(ValueError, match="expressivity"):
        sft_attention.fixed_sparse_mask(10, stride=4, expressivity=4)


def test_sparse_attention_block_is_attention_only_with_a_plain_layer_norm():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 8))
    for mask in ("dense", "fixed"):
        block = sft_attention.SparseAttentionBlock(num_heads=2, mask=mask, stride=2, expressivity=1)
        params = block.init(jax.random.PRNGKey(1), x, True)["params"]
        assert set(params) == {"MultiHeadDotProductAttention_0"}
        out, weights = block.apply({"params": params}, x, True)
        # Reference: x + out(softmax(q·kᵀ/√H)·v) on the parameter-free LayerNorm of x.
        a = jax.tree.map(np.asarray, params["MultiHeadDotProductAttention_0"])
        xs = np.asarray(x, np.float64)
        n = (xs - xs.mean(-1, keepdims=True)) / np.sqrt(xs.var(-1, keepdims=True) + 1e-5)
        q, k, v = (
            np.einsum("bld,dnh->blnh", n, a[p]["kernel"]) + a[p]["bias"]
            for p in ("query", "key", "value")
        )
        logits = np.einsum("bqnh,bknh->bnqk", q, k) / np.sqrt(4)
        if mask == "fixed":
            logits = np.where(sft_attention.fixed_sparse_mask(6, 2, 1), logits, -np.inf)
        w = np.exp(logits - logits.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        y = np.einsum("bnqk,bknh->bqnh", w, v)
        expected = xs + np.einsum("bqnh,nhd->bqd", y, a["out"]["kernel"]) + a["out"]["bias"]
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(weights, w.mean(axis=1), rtol=1e-4, atol=1e-6)
        if mask == "fixed":
            assert np.all(np.asarray(weights)[:, ~sft_attention.fixed_sparse_mask(6, 2, 1)] == 0)
