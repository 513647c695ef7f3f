"""Sparse Fusion Transformer (SFT; Ding et al., 2021): fuse a few pooled tokens per modality.

Per modality: tokenizer → [CLS ; tokens] + position embedding → `n_layers_pre_fusion` unimodal
encoder blocks → the sparse-pooling block: one more (per-modality) encoder block, after which the
non-CLS tokens are pooled along the sequence with kernel = stride = `pool_sizes[m]` (block-wise
max, average, or top-k by the CLS's attention in that block). The CLS tokens of all modalities
are summed into one fused CLS; `n_layers_post_fusion` shared blocks run over
[fused CLS ; pooled tokens of every modality]; a LayerNorm; the head reads the fused CLS.

Pooling shrinks a modality's sequence from N to N // pool_size tokens, so the joint layers
(most of the depth) attend over far fewer tokens than MBT's concat fusion would.

Parameter tree (rgb carries no suffix, other modalities `_<modality>`, as in `mbt.models.mbt`):
`embedding[_<m>]`, `cls` / `cls<m>`, `Transformer/{posembed_input[_<m>],
encoderblock_<i>[_<m>], sparse_pool[_<m>], fused_encoderblock_<j>, encoder_norm}`,
optional `pre_logits`, `output_projection`.

Latent mixup (training only, `latent_mixup_alpha > 0`): see `LatentMixup`.

`FAMILY` (end of file) is this model's `mbt.models.family.ModelFamily`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mbt.models import common
from mbt.models import family
from mbt.models import mbt as mbt_lib
from mbt.models import tokenizers
from mbt.models import vit

POOL_TYPES = ("max", "avg", "topk")


def default_config() -> ml_collections.ConfigDict:
    """Every `config.model` key of SFT, with ViT-B/16 widths and the paper's 1 + 1 + 11 layout."""
    return ml_collections.ConfigDict(
        {
            "name": "sft",
            "modalities": ("rgb", "spectrogram"),
            "variant": "B/16",
            "hidden_size": None,
            "num_heads": None,
            "mlp_dim": None,
            # SFT's depth is n_layers_pre_fusion + 1 (sparse-pool block) + n_layers_post_fusion;
            # num_layers may be left None (or must equal that sum).
            "num_layers": None,
            "tokenizers": {m: common.default_tokenizer(m, 16) for m in ("rgb", "spectrogram")},
            "n_layers_pre_fusion": 1,
            "n_layers_post_fusion": 11,
            "pool_type": "max",
            # rgb 8×224² with tubelets 2×16×16: 784 tokens → 49; spectrogram 800×128: 400 → 25.
            "pool_sizes": {"rgb": 16, "spectrogram": 16},
            "latent_mixup_alpha": 0.0,
            "representation_size": None,
            "dropout_rate": 0.0,
            "attention_dropout_rate": 0.0,
            "stochastic_droplayer_rate": 0.0,
            "dtype": "float32",
            "remat": False,
            "attention": "fused",
        }
    )


def depth(model_config: ml_collections.ConfigDict) -> int:
    """SFT's number of encoder blocks along a modality's path: pre + sparse-pool + post."""
    return int(model_config.n_layers_pre_fusion) + 1 + int(model_config.n_layers_post_fusion)


def check_config(model_config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the `config.model` key of a bad SFT-specific setting.

    `model_config` is merged over `default_config()` (`FAMILY.resolve`).
    """
    n_pre, n_post = model_config.n_layers_pre_fusion, model_config.n_layers_post_fusion
    for key, value in (("n_layers_pre_fusion", n_pre), ("n_layers_post_fusion", n_post)):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"config.model.{key}={value!r} must be an integer >= 0")
    num_layers = model_config.num_layers
    if num_layers is not None and num_layers != n_pre + 1 + n_post:
        raise ValueError(
            f"config.model.num_layers={num_layers} disagrees with n_layers_pre_fusion + 1 + "
            f"n_layers_post_fusion = {n_pre + 1 + n_post}; set num_layers to None for SFT"
        )
    common.check_choice(model_config, "pool_type", POOL_TYPES)
    pool_sizes = model_config.pool_sizes or {}
    for m in model_config.modalities:
        size = pool_sizes.get(m)
        if not isinstance(size, int) or size < 1:
            raise ValueError(
                f"config.model.pool_sizes.{m}={size!r} must be a positive integer "
                "(tokens per pooling block)"
            )
    alpha = model_config.latent_mixup_alpha or 0.0
    if alpha < 0:
        raise ValueError(f"config.model.latent_mixup_alpha={alpha!r} must be >= 0 (0 = off)")


def vit_sizes(model_config: ml_collections.ConfigDict) -> vit.ViTSize:
    """ViT widths of a (resolved) SFT config; its depth is `depth()`, not the variant's."""
    resolved = ml_collections.ConfigDict(model_config.to_dict())
    resolved.num_layers = depth(model_config)
    return common.resolve_sizes(resolved)


def pool_tokens(
    tokens_BxNxD: jax.Array, pool_size: int, pool_type: str, scores_BxN: jax.Array | None = None
) -> jax.Array:
    """Pools a token sequence to `[batch, N // pool_size, D]`.

    `max` / `avg`: over consecutive blocks of `pool_size` tokens (kernel = stride); the last
    N mod pool_size tokens are dropped, as a VALID pooling does. `topk`: the k = N // pool_size
    tokens with the highest `scores_BxN`, kept in their original sequence order.
    """
    batch, n, width = tokens_BxNxD.shape
    k = n // pool_size
    if k < 1:
        raise ValueError(
            f"pool size {pool_size} exceeds the {n} tokens to pool; lower "
            "config.model.pool_sizes for this modality"
        )
    if pool_type == "topk":
        if scores_BxN is None:
            raise ValueError("pool_type 'topk' needs attention scores")
        _, top_BxK = jax.lax.top_k(scores_BxN, k)
        top_BxK = jnp.sort(top_BxK, axis=-1)
        return jnp.take_along_axis(tokens_BxNxD, top_BxK[..., None], axis=1)
    blocks_BxKxSxD = tokens_BxNxD[:, : k * pool_size].reshape(batch, k, pool_size, width)
    if pool_type == "max":
        return jnp.max(blocks_BxKxSxD, axis=2)
    if pool_type == "avg":
        return jnp.mean(blocks_BxKxSxD, axis=2)
    raise ValueError(f"config.model.pool_type={pool_type!r}; allowed: {POOL_TYPES}")


def cls_attention_scores(block_params: Any, x_BxLxD: jax.Array, num_heads: int) -> jax.Array:
    """How much token 0 (CLS) attends to each other token in an `EncoderBlock`, `[batch, L-1]`.

    Recomputes the block's own first LayerNorm and query/key projections on its input
    `x_BxLxD`; softmax over all L keys (as in the block), averaged over heads, CLS column dropped.
    """
    width = x_BxLxD.shape[-1]
    head_dim = width // num_heads
    normed = nn.LayerNorm().apply({"params": block_params["LayerNorm_0"]}, x_BxLxD)
    attention = block_params["MultiHeadDotProductAttention_0"]
    project = nn.DenseGeneral(features=(num_heads, head_dim))
    normed_BxLxD: jax.Array = normed  # type: ignore[assignment]  # apply without mutable
    query_Bx1xNxH = project.apply({"params": attention["query"]}, normed_BxLxD[:, :1])
    key_BxLxNxH = project.apply({"params": attention["key"]}, normed_BxLxD)
    logits_BxNx1xL = jnp.einsum("bqnh,bknh->bnqk", query_Bx1xNxH, key_BxLxNxH)
    weights = jax.nn.softmax(logits_BxNx1xL.astype(jnp.float32) / jnp.sqrt(head_dim), axis=-1)
    return jnp.mean(weights[:, :, 0, 1:], axis=1)


class LatentMixup(nn.Module):
    """Mixes hidden states of the unimodal stages at one random point, per modality.

    In training with `alpha > 0`, draws (from the 'dropout' RNG stream) one mixing point
    p ∈ {0, …, num_points - 1} and one λ_m ~ Beta(alpha, alpha) per modality; at point p every
    modality's hidden state becomes λ_m·h + (1 - λ_m)·roll(h, 1, axis=0), i.e. example i is
    mixed with example i - 1 (the partner convention of `mbt.mixup`).
    `__call__(tokens, point)` applies the mix when `point == p`; `lambdas()` returns
    `{modality: λ_m}` and `point()` the drawn p (scalars).
    """

    modalities: tuple[str, ...]
    alpha: float
    num_points: int

    def setup(self):
        point_rng, lambda_rng = jax.random.split(self.make_rng("dropout"))
        self._point = jax.random.randint(point_rng, (), 0, self.num_points)
        keys = jax.random.split(lambda_rng, len(self.modalities))
        self._lambdas = {
            m: jax.random.beta(key, self.alpha, self.alpha, dtype=jnp.float32)
            for m, key in zip(self.modalities, keys)
        }

    def __call__(self, tokens: dict[str, jax.Array], point: int) -> dict[str, jax.Array]:
        mixed = {}
        for m, h in tokens.items():
            lam = self._lambdas[m].astype(h.dtype)
            mixed[m] = jnp.where(
                self._point == point, lam * h + (1 - lam) * jnp.roll(h, 1, axis=0), h
            )
        return mixed

    def lambdas(self) -> dict[str, jax.Array]:
        return dict(self._lambdas)

    def point(self) -> jax.Array:
        return self._point


class SparseFusionEncoder(nn.Module):
    """The `Transformer` submodule: unimodal blocks, sparse pooling, CLS sum, joint blocks, norm.

    Input: `{modality: [B, 1 + N_m, D]}` (CLS first). Output: `[B, 1 + sum_m N_m // s_m, D]`,
    the fused CLS followed by every modality's pooled tokens (in `modalities` order), after
    `encoder_norm`, and the latent-mixup λs `{modality: scalar}` (None when mixup is off).

    Sows into 'intermediates': `cls_at_fusion` (`{modality: [B, D]}`, each modality's CLS
    after its sparse-pool block) and `fused_cls` (`[B, D]`, their sum).
    """

    modalities: tuple[str, ...]
    pool_sizes: tuple[tuple[str, int], ...]
    pool_type: str
    num_heads: int
    mlp_dim: int
    n_layers_pre_fusion: int
    n_layers_post_fusion: int
    latent_mixup_alpha: float
    dropout_rate: float
    attention_dropout_rate: float
    stochastic_droplayer_rate: float
    attention: str
    remat: bool
    dtype: Any

    @nn.compact
    def __call__(self, tokens: dict[str, jax.Array], *, train: bool):
        deterministic = not train
        depth = self.n_layers_pre_fusion + 1 + self.n_layers_post_fusion
        block_cls = vit.encoder_block_class(self.remat)

        def block(layer, name):
            return block_cls(
                mlp_dim=self.mlp_dim,
                num_heads=self.num_heads,
                dropout_rate=self.dropout_rate,
                attention_dropout_rate=self.attention_dropout_rate,
                droplayer_p=vit.droplayer_rate(layer, depth, self.stochastic_droplayer_rate),
                attention=self.attention,
                dtype=self.dtype,
                name=name,
            )

        mixup = None
        if train and self.latent_mixup_alpha > 0:
            # Points: 0 = embedded tokens, i = after unimodal block i, last = after pooling.
            mixup = LatentMixup(
                self.modalities,
                self.latent_mixup_alpha,
                num_points=self.n_layers_pre_fusion + 2,
                name="latent_mixup",
            )

        tokens = {
            m: mbt_lib.AddPositionEmbs(name=f"posembed_input{mbt_lib.suffix(m)}")(tokens[m])
            for m in self.modalities
        }
        if mixup is not None:
            tokens = mixup(tokens, 0)
        for layer in range(self.n_layers_pre_fusion):
            tokens = {
                m: block(layer, f"encoderblock_{layer}{mbt_lib.suffix(m)}")(
                    tokens[m], deterministic
                )
                for m in self.modalities
            }
            if mixup is not None:
                tokens = mixup(tokens, layer + 1)

        pool_sizes = dict(self.pool_sizes)
        cls, pooled = {}, {}
        for m in self.modalities:
            if tokens[m].shape[1] - 1 < pool_sizes[m]:
                raise ValueError(
                    f"config.model.pool_sizes.{m}={pool_sizes[m]} exceeds the "
                    f"{tokens[m].shape[1] - 1} tokens of modality {m!r}"
                )
            sparse_block = block(self.n_layers_pre_fusion, f"sparse_pool{mbt_lib.suffix(m)}")
            out_BxLxD = sparse_block(tokens[m], deterministic)
            scores_BxN = None
            if self.pool_type == "topk":
                scores_BxN = cls_attention_scores(
                    sparse_block.variables["params"], tokens[m], self.num_heads
                )
            cls[m] = out_BxLxD[:, :1]
            pooled[m] = pool_tokens(out_BxLxD[:, 1:], pool_sizes[m], self.pool_type, scores_BxN)
        if mixup is not None:
            mixed = mixup(
                {m: jnp.concatenate([cls[m], pooled[m]], axis=1) for m in self.modalities},
                self.n_layers_pre_fusion + 1,
            )
            cls = {m: mixed[m][:, :1] for m in self.modalities}
            pooled = {m: mixed[m][:, 1:] for m in self.modalities}

        fused_cls_Bx1xD = sum(cls[m] for m in self.modalities)
        self.sow("intermediates", "cls_at_fusion", {m: cls[m][:, 0] for m in self.modalities})
        self.sow("intermediates", "fused_cls", fused_cls_Bx1xD[:, 0])

        joint_BxLxD = jnp.concatenate(
            [fused_cls_Bx1xD] + [pooled[m] for m in self.modalities], axis=1
        )
        for j in range(self.n_layers_post_fusion):
            layer = self.n_layers_pre_fusion + 1 + j
            joint_BxLxD = block(layer, f"fused_encoderblock_{j}")(joint_BxLxD, deterministic)
        joint_BxLxD = nn.LayerNorm(name="encoder_norm")(joint_BxLxD)
        lambdas = mixup.lambdas() if mixup is not None else None
        point = mixup.point() if mixup is not None else None
        return joint_BxLxD, lambdas, point


class SparseFusionTransformer(nn.Module):
    """SFT over any set of named modalities; one classifier on the fused CLS.

    Inputs: `{modality: array}` — video-like `[B, T, H, W, C]`, spectrogram `[B, time, mel, C]`.
    Returns logits `[B, num_classes]` (float32) in training and evaluation alike.

    With latent mixup active (training, `latent_mixup_alpha > 0`) the model sows
    `latent_mixup_lambda` (`{modality: λ_m}`) and `latent_mixup_point` into 'intermediates';
    run `apply(..., mutable=['intermediates'])` to read them and mix the labels with the mean λ:
    `y_mixed = λ̄·y + (1 - λ̄)·roll(y, 1, axis=0)`, λ̄ = mean_m λ_m (the single head sees every
    modality; this equals averaging per-modality mixed targets, as `mbt.mixup` does for a
    single-head model). Every field comes from `config.model` (`FAMILY.build`); none has a
    default of its own.
    """

    num_classes: int
    modalities: tuple[str, ...]
    tokenizer_specs: tuple[tuple[str, tokenizers.TokenizerSpec], ...]
    pool_sizes: tuple[tuple[str, int], ...]
    hidden_size: int
    num_heads: int
    mlp_dim: int
    pool_type: str
    n_layers_pre_fusion: int
    n_layers_post_fusion: int
    latent_mixup_alpha: float
    representation_size: int | None
    dropout_rate: float
    attention_dropout_rate: float
    stochastic_droplayer_rate: float
    attention: str
    remat: bool
    dtype: Any

    @nn.compact
    def __call__(self, inputs: dict[str, jax.Array], *, train: bool) -> jax.Array:
        missing = [m for m in self.modalities if m not in inputs]
        if missing:
            raise ValueError(f"model inputs lack modalities {missing}; got {sorted(inputs)}")
        specs = dict(self.tokenizer_specs)
        dtype = jnp.dtype(self.dtype)

        tokens = {}
        for m in self.modalities:
            x_BxNxD = tokenizers.embed(
                jnp.asarray(inputs[m], dtype),
                specs[m],
                self.hidden_size,
                name=f"embedding{mbt_lib.suffix(m)}",
                dtype=dtype,
            )
            cls_1x1xD = self.param(
                mbt_lib.cls_name(m, self.modalities),
                nn.initializers.zeros,
                (1, 1, self.hidden_size),
            )
            cls_Bx1xD = jnp.broadcast_to(
                cls_1x1xD.astype(x_BxNxD.dtype), (x_BxNxD.shape[0], 1, self.hidden_size)
            )
            tokens[m] = jnp.concatenate([cls_Bx1xD, x_BxNxD], axis=1)

        encoded_BxLxD, lambdas, point = SparseFusionEncoder(
            modalities=self.modalities,
            pool_sizes=self.pool_sizes,
            pool_type=self.pool_type,
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            n_layers_pre_fusion=self.n_layers_pre_fusion,
            n_layers_post_fusion=self.n_layers_post_fusion,
            latent_mixup_alpha=self.latent_mixup_alpha,
            dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.attention_dropout_rate,
            stochastic_droplayer_rate=self.stochastic_droplayer_rate,
            attention=self.attention,
            remat=self.remat,
            dtype=dtype,
            name="Transformer",
        )(tokens, train=train)
        if lambdas is not None:
            self.sow("intermediates", "latent_mixup_lambda", lambdas)
            self.sow("intermediates", "latent_mixup_point", point)

        features_BxD = encoded_BxLxD[:, 0]
        if self.representation_size is not None:
            features_BxD = jnp.tanh(
                nn.Dense(self.representation_size, name="pre_logits")(features_BxD)
            )
        logits = nn.Dense(
            self.num_classes, kernel_init=nn.initializers.zeros, name="output_projection"
        )(features_BxD)
        return logits.astype(jnp.float32)


class SFTFamily(family.ModelFamily):
    """`config.model.name = 'sft'`."""

    name = "sft"
    supports_branches = True
    partition_rules = common.TRANSFORMER_RULES

    def default_config(self) -> ml_collections.ConfigDict:
        return default_config()

    def adapt_recipe(self, config, mbt_model) -> None:
        """SFT-B/16 (Ding et al. 2021) in MBT's recipe: max pooling to 16 tokens per block
        for each modality (rgb 32x224² with 2x16x16 tubelets 3136 -> 196 tokens, spectrogram
        800x128 400 -> 25), MBT's stochastic depth; latent mixup stays off (MBT's input mixup
        is on)."""
        config.model.pool_sizes = {m: 16 for m in config.model.modalities}
        config.model.stochastic_droplayer_rate = mbt_model.stochastic_droplayer_rate
        config.model.latent_mixup_alpha = 0.0

    def check(self, resolved: ml_collections.ConfigDict) -> None:
        common.check_modalities(resolved)
        check_config(resolved)
        common.check_transformer(resolved, vit_sizes(resolved))

    def make(self, resolved: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
        widths = vit_sizes(resolved)
        modalities = tuple(resolved.modalities)
        return SparseFusionTransformer(
            num_classes=num_classes,
            modalities=modalities,
            tokenizer_specs=common.tokenizer_specs(resolved, widths.patch),
            pool_sizes=tuple((m, int(resolved.pool_sizes[m])) for m in modalities),
            hidden_size=widths.hidden_size,
            num_heads=widths.num_heads,
            mlp_dim=widths.mlp_dim,
            pool_type=resolved.pool_type,
            n_layers_pre_fusion=resolved.n_layers_pre_fusion,
            n_layers_post_fusion=resolved.n_layers_post_fusion,
            latent_mixup_alpha=float(resolved.latent_mixup_alpha or 0.0),
            **common.transformer_options(resolved),
        )

    def analytic_macs(self, model_config, input_shapes, num_classes):
        from mbt.tools import flops  # pylint: disable=g-import-not-at-top (flops imports models)

        return flops.sft_macs(self.resolve(model_config), input_shapes, num_classes)

    def latent_mixup(self, model_config) -> bool:
        return float(self.resolve(model_config).latent_mixup_alpha or 0.0) > 0

    def branch_param_candidates(self, path, modalities, full_modalities):
        """Only the CLS is renamed: the kept modality's unimodal and sparse-pool blocks, the
        joint blocks and the head are the trained ones."""
        return [mbt_lib.branch_cls_candidate(path, modalities, full_modalities)]


FAMILY = SFTFamily()
