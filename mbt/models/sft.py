"""Sparse Fusion Transformer (SFT; Ding et al., 2021): fuse a few pooled tokens per modality.

Model here. Per modality: tokenizer → [CLS ; tokens] + position embedding →
`n_layers_pre_fusion` unimodal encoder blocks → the sparse block → the non-CLS tokens pooled
along the sequence (`pool_type`, `mbt.models.sft_pooling`). The modalities' CLS tokens (sparse
block outputs) are summed into one fused CLS; `n_layers_post_fusion` joint blocks run over
[fused CLS ; pooled tokens of every modality]; a LayerNorm; the head reads the fused CLS.
Latent mixup (training, `latent_mixup_alpha > 0`) mixes hidden states of two examples at one
layer (`mbt.models.sft_mixup`).

What the authors' code does (`yding37/sft`: `models/sparse_fusion_transformer.py`,
`scripts/train_eval_vgg.py`, `utils/mixup.py`, `run.sh`, `main.py`), read for this module:
- Inputs: pre-extracted VGGSound features, rgb and flow `[38, 1024]` (I3D), spectrogram
  `[1200, 128]` (frames as tokens); each a linear tokenizer + CLS + learned position
  embedding. Always three modalities (the forward raises without the third). Width 40,
  5 heads (`init_config` fixes them whatever the flags say).
- Blocks: x + MHA(LN(x)) with a parameter-free LayerNorm, then x + MLP(x) with MLP = LN →
  Linear(D, D) → dropout → ReLU → Linear(D, D). 1 pre-fusion block per modality.
- Sparse block per modality: x + MHA(LN(x)), attention only, no MLP, with fairseq's
  `SparseMultiheadAttention` (fixed factorized pattern, stride 32, expressivity 8); called
  as `mha(x, x, x)` it takes fairseq's PyTorch fast path, which skips the sparse mask, so it
  attends densely (`mbt.models.sft_attention`). It returns the head-averaged weights.
- Pooling of the non-CLS tokens, per modality: `--pool_type` max (run.sh), avg, topk, attn,
  attn_topk, random, attn_random, strided_random, attn_wkmedoids (semantics in
  `mbt.models.sft_pooling`). Windows: kernel = stride = `--ks_modality` (run.sh:
  38,64,38 for rgb, spectrogram, flow) and padding `--pad_modality` (default 0,0,0, as in
  run.sh); PyTorch's pools give ⌊(N + 2p − k)/k⌋ + 1 tokens: rgb 38 → 1, spectrogram
  1200 → 18 (the last 48 frames dropped), flow 38 → 1. Without `--custom_ks` the window is
  derived from `--pool_k` (kernel ⌈N/k⌉, padding min((kernel·k − N)//2, kernel//2)); the
  k pools keep `--pool_k` tokens (default 5).
- Fusion: the three CLS outputs of the sparse blocks are summed; 11 joint blocks over
  [CLS ; pooled rgb ; pooled spectrogram ; pooled flow] (21 tokens); classifier LN + Linear
  on the CLS. (`--fusion_layer_enabled` adds a second pooling after fusion; run.sh does not
  use it and its attention pools would read weights of the wrong length.)
- Latent mixup (`--mixup any --alpha_type permodality`, α = 0.3): after 5 epochs without it
  (`--warmup_epochs`), every step draws a random permutation of the batch, a per-example
  λ ~ Beta(α, α) per modality and a layer; placements within / cross / fused / any
  (`mbt.models.sft_mixup`); loss Σ λ̄_b·CE(y_b) + (1 − λ̄_b)·CE(y_perm(b)), λ̄ the mean over
  modalities.
- Recipe (run.sh, VGGSound-10 / -100): AdamW lr 1e-3, weight decay 0, batch 24, 20 epochs,
  gradient clipping at global norm 0.8, no label smoothing, dropout 0, lr divided by 10 when
  the validation loss has not improved for 10 epochs (`ReduceLROnPlateau`), no lr warmup (the
  "5 warmup epochs" are the epochs without mixup). run.sh also passes `--debug`, which cuts a
  run to 5 epochs (2 without mixup) of 11 batches; the settings above are without it.

What matches here (`sparse_block='attention'`, `configs/<dataset>.py:model=sft`): the sparse
block (attention only, parameter-free LayerNorm, dense as run; `sparse_attention_mask='fixed'`
applies the fixed pattern), every pool type and its token count, per-modality windows and
padding (and the window derived from `pool_k` with `pool_sizes.<m> = 0`), the CLS sum, the
latent-mixup placements with per-example λ per modality and a permutation partner, mixup
starting after `latent_mixup_after_epochs`, and the optimiser settings. What differs: ViT
patch tokenizers on raw frames and log-mel patches instead of linear projections of
features (so the windows are mapped: rgb pooled to one token, as their 38-of-38 window does;
spectrogram windows of 0.64 s of audio, their 64 frames); ViT blocks (affine LayerNorms,
GELU MLP of `mlp_dim`) at the configured width; any set of modalities; no lr-on-plateau;
random pools use a fixed key at evaluation (theirs draw anew).

This project's earlier SFT (the defaults of `default_config()`, kept so existing configs and
workdirs keep their meaning and parameter tree): the sparse block is a full ViT encoder block
(`sparse_block='encoder'`), `pool_type` max / avg / `cls_topk` (earlier called `topk`: the
N // s tokens the CLS attends to most, in sequence order), windows without padding, latent
mixup `unimodal` with one λ per modality per batch and the `roll` partner.

Parameter tree (rgb carries no suffix, other modalities `_<modality>`, as in `mbt.models.mbt`):
`embedding[_<m>]`, `cls` / `cls<m>`, `Transformer/{posembed_input[_<m>],
encoderblock_<i>[_<m>], sparse_pool[_<m>], fused_encoderblock_<j>, encoder_norm}`,
optional `pre_logits`, `output_projection`. `sparse_pool[_<m>]` is a ViT block with
`sparse_block='encoder'` and only `MultiHeadDotProductAttention_0/{query,key,value,out}`
with `'attention'`.

`FAMILY` (end of file) is this model's `mbt.models.family.ModelFamily`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mbt.models import common
from mbt.models import family
from mbt.models import mbt as mbt_lib
from mbt.models import sft_attention
from mbt.models import sft_mixup
from mbt.models import sft_pooling
from mbt.models import tokenizers
from mbt.models import vit

POOL_TYPES = sft_pooling.POOL_TYPES
SPARSE_BLOCKS = ("attention", "encoder")
# Seed of the key the random pools use at evaluation (training draws from 'dropout').
EVAL_POOL_SEED = 0
# The authors' spectrogram window: 64 frames at a 10 ms hop.
AUTHORS_SPECTROGRAM_WINDOW_MS = 640.0


def default_config() -> ml_collections.ConfigDict:
    """Every `config.model` key of SFT: ViT-B/16 widths, the paper's 1 + 1 + 11 layout, and
    this project's earlier variant where the authors' code differs (`authors_model_overrides`
    gives theirs; the dataset configs use it)."""
    return ml_collections.ConfigDict(
        {
            "name": "sft",
            "modalities": ("rgb", "spectrogram"),
            "variant": "B/16",
            "hidden_size": None,
            "num_heads": None,
            "mlp_dim": None,
            # SFT's depth is n_layers_pre_fusion + 1 (sparse block) + n_layers_post_fusion;
            # num_layers may be left None (or must equal that sum).
            "num_layers": None,
            "tokenizers": {m: common.default_tokenizer(m, 16) for m in ("rgb", "spectrogram")},
            "n_layers_pre_fusion": 1,
            "n_layers_post_fusion": 11,
            # 'encoder': a full ViT block (earlier); 'attention': the authors' attention-only
            # block with a parameter-free LayerNorm.
            "sparse_block": "encoder",
            # 'dense' (the authors' runs) or 'fixed' (fairseq's fixed sparse pattern;
            # needs sparse_block='attention').
            "sparse_attention_mask": "dense",
            "sparse_attention_stride": 32,
            "sparse_attention_expressivity": 8,
            "pool_type": "max",
            # Kernel = stride per modality; 0 = derived from pool_k (the authors' formula).
            # rgb 8×224² with tubelets 2×16×16: 784 tokens → 49; spectrogram 800×128: 400 → 25.
            "pool_sizes": {"rgb": 16, "spectrogram": 16},
            # Tokens added at both ends before window pooling (<= pool size // 2); absent = 0.
            "pool_paddings": {"rgb": 0, "spectrogram": 0},
            # Tokens kept by the k pools (topk, attn_topk, random, attn_random,
            # attn_wkmedoids) and the target of derived windows.
            "pool_k": 5,
            "latent_mixup_alpha": 0.0,  # Beta(α, α); 0 = off
            "latent_mixup": "unimodal",  # placement: sft_mixup.PLACEMENTS
            "latent_mixup_lambdas": "per_batch",  # or 'per_sample'
            "latent_mixup_partner": "roll",  # or 'permutation'
            "latent_mixup_layer": -1,  # -1 = drawn every step; >= 0 = that point
            "latent_mixup_after_epochs": 0.0,  # unmixed training epochs first
            "representation_size": None,
            "dropout_rate": 0.0,
            "attention_dropout_rate": 0.0,
            "stochastic_droplayer_rate": 0.0,
            "dtype": "float32",
            "remat": False,
            "attention": "auto",
        }
    )


def authors_spectrogram_window(model_config, data_config) -> int:
    """Spectrogram pool size covering 0.64 s of audio (the authors' 64 frames at 10 ms) in
    whole rows of patch tokens: rows of `patch_time` frames × `num_mel_bins // patch_mel`
    tokens per row (800×128 log-mel, 16×16 patches: 4 rows × 8 = 32 tokens)."""
    patch = vit_sizes(model_config).patch
    spec = common.tokenizer_spec(model_config, "spectrogram", patch)
    frames = AUTHORS_SPECTROGRAM_WINDOW_MS / float(data_config.get("hop_ms", 10.0))
    rows = max(int(round(frames / spec.patches[0])), 1)
    return rows * max(int(data_config["num_mel_bins"]) // spec.patches[1], 1)


def authors_model_overrides(model_config, data_config) -> dict[str, Any]:
    """The `config.model` keys of the authors' SFT (module docstring), for `model_config`'s
    modalities: attention-only dense sparse block, max pooling with the spectrogram pooled in
    0.64 s windows and every other modality to one token (pool size 0 with pool_k 1, their
    38-frame window over 38 features), no padding, latent mixup `any` with α = 0.3,
    per-example λ per modality, a permutation partner, after 5 unmixed epochs."""
    sizes = {
        m: authors_spectrogram_window(model_config, data_config) if m == "spectrogram" else 0
        for m in model_config.modalities
    }
    return {
        "n_layers_pre_fusion": 1,
        "n_layers_post_fusion": 11,
        "sparse_block": "attention",
        "sparse_attention_mask": "dense",
        "pool_type": "max",
        "pool_sizes": sizes,
        "pool_paddings": {m: 0 for m in model_config.modalities},
        "pool_k": 1,
        "latent_mixup_alpha": 0.3,
        "latent_mixup": "any",
        "latent_mixup_lambdas": "per_sample",
        "latent_mixup_partner": "permutation",
        "latent_mixup_layer": -1,
        "latent_mixup_after_epochs": 5.0,
        "dropout_rate": 0.0,
        "attention_dropout_rate": 0.0,
        "stochastic_droplayer_rate": 0.0,
    }


def use_authors_model(model_config: ml_collections.ConfigDict, data_config) -> None:
    """Sets the keys of `authors_model_overrides` in `model_config` (dicts replaced whole)."""
    for key, value in authors_model_overrides(model_config, data_config).items():
        model_config[key] = value


def depth(model_config: ml_collections.ConfigDict) -> int:
    """SFT's number of blocks along a modality's path: pre + sparse + post."""
    return int(model_config.n_layers_pre_fusion) + 1 + int(model_config.n_layers_post_fusion)


def _check_int(key: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"config.model.{key}={value!r} must be an integer >= {low}")


def _check_pooling(model_config: ml_collections.ConfigDict) -> None:
    common.check_choice(model_config, "pool_type", POOL_TYPES)
    pool_type = model_config.pool_type
    sizes = dict(model_config.pool_sizes or {})
    paddings = dict(model_config.get("pool_paddings") or {})
    needs_k = pool_type in sft_pooling.K_POOLS
    if sft_pooling.uses_windows(pool_type):
        for m in model_config.modalities:
            size = sizes.get(m)
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise ValueError(
                    f"config.model.pool_sizes.{m}={size!r} must be an integer >= 0 (tokens per "
                    "pooling window, kernel = stride; 0 = derived from pool_k)"
                )
            padding = paddings.get(m, 0)
            _check_int(f"pool_paddings.{m}", padding, 0)
            if size and padding > size // 2:
                raise ValueError(
                    f"config.model.pool_paddings.{m}={padding} exceeds half the pool size "
                    f"{size} (PyTorch's limit, which the authors' pools have)"
                )
            needs_k = needs_k or size == 0
    if needs_k:
        _check_int("pool_k", model_config.pool_k, 1)


def _check_sparse_block(model_config: ml_collections.ConfigDict) -> None:
    common.check_choice(model_config, "sparse_block", SPARSE_BLOCKS)
    common.check_choice(model_config, "sparse_attention_mask", sft_attention.MASKS)
    if model_config.sparse_attention_mask == "fixed":
        if model_config.sparse_block != "attention":
            raise ValueError(
                "config.model.sparse_attention_mask='fixed' needs "
                "config.model.sparse_block='attention'"
            )
        stride = model_config.sparse_attention_stride
        _check_int("sparse_attention_stride", stride, 1)
        expressivity = model_config.sparse_attention_expressivity
        _check_int("sparse_attention_expressivity", expressivity, 0)
        if expressivity >= stride:
            raise ValueError(
                f"config.model.sparse_attention_expressivity={expressivity} must be below "
                f"config.model.sparse_attention_stride={stride}"
            )


def _check_mixup(model_config: ml_collections.ConfigDict, n_pre: int, n_post: int) -> None:
    alpha = model_config.latent_mixup_alpha or 0.0
    if alpha < 0:
        raise ValueError(f"config.model.latent_mixup_alpha={alpha!r} must be >= 0 (0 = off)")
    common.check_choice(model_config, "latent_mixup", sft_mixup.PLACEMENTS)
    common.check_choice(model_config, "latent_mixup_lambdas", sft_mixup.LAMBDAS)
    common.check_choice(model_config, "latent_mixup_partner", sft_mixup.PARTNERS)
    after = model_config.latent_mixup_after_epochs or 0.0
    if after < 0:
        raise ValueError(f"config.model.latent_mixup_after_epochs={after!r} must be >= 0")
    layer = model_config.latent_mixup_layer
    _check_int("latent_mixup_layer", layer, -1)
    if alpha <= 0:
        return
    placement = model_config.latent_mixup
    low, high = sft_mixup.point_range(placement, n_pre, n_post)
    if high <= low:
        raise ValueError(
            f"config.model.latent_mixup={placement!r} has no layer to mix at with "
            f"n_layers_pre_fusion={n_pre}, n_layers_post_fusion={n_post}"
        )
    if layer >= 0 and not low <= layer < high:
        raise ValueError(
            f"config.model.latent_mixup_layer={layer} is outside [{low}, {high}), the points "
            f"of latent_mixup={placement!r} (-1 draws one every step)"
        )


def check_config(model_config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the `config.model` key of a bad SFT-specific setting.

    `model_config` is merged over `default_config()` (`FAMILY.resolve`).
    """
    n_pre, n_post = model_config.n_layers_pre_fusion, model_config.n_layers_post_fusion
    _check_int("n_layers_pre_fusion", n_pre, 0)
    _check_int("n_layers_post_fusion", n_post, 0)
    num_layers = model_config.num_layers
    if num_layers is not None and num_layers != n_pre + 1 + n_post:
        raise ValueError(
            f"config.model.num_layers={num_layers} disagrees with n_layers_pre_fusion + 1 + "
            f"n_layers_post_fusion = {n_pre + 1 + n_post}; set num_layers to None for SFT"
        )
    _check_pooling(model_config)
    _check_sparse_block(model_config)
    _check_mixup(model_config, n_pre, n_post)


def vit_sizes(model_config: ml_collections.ConfigDict) -> vit.ViTSize:
    """ViT widths of a (resolved) SFT config; its depth is `depth()`, not the variant's."""
    resolved = ml_collections.ConfigDict(model_config.to_dict())
    resolved.num_layers = depth(model_config)
    return common.resolve_sizes(resolved)


def pooled_length(model_config: ml_collections.ConfigDict, modality: str, num_tokens: int) -> int:
    """Tokens `modality` keeps after pooling; ValueError naming the key when it cannot pool."""
    return PoolSettings.from_config(model_config).pooled_length(modality, num_tokens)


@dataclasses.dataclass(frozen=True)
class PoolSettings:
    """The pooling keys of `config.model` (hashable, a module field): `pool_type`, per
    modality `(name, pool size)` and `(name, padding)` pairs, `pool_k`."""

    pool_type: str
    sizes: tuple[tuple[str, int], ...]
    paddings: tuple[tuple[str, int], ...]
    pool_k: int

    @classmethod
    def from_config(cls, model_config: ml_collections.ConfigDict) -> PoolSettings:
        modalities = tuple(model_config.modalities)
        sizes = dict(model_config.pool_sizes or {})
        paddings = dict(model_config.get("pool_paddings") or {})
        return cls(
            pool_type=str(model_config.pool_type),
            sizes=tuple((m, int(sizes.get(m, 0) or 0)) for m in modalities),
            paddings=tuple((m, int(paddings.get(m, 0) or 0)) for m in modalities),
            pool_k=int(model_config.pool_k or 1),
        )

    def window(self, modality: str, num_tokens: int) -> sft_pooling.Window:
        """The window of `modality` over its `num_tokens` non-CLS tokens."""
        size, padding = dict(self.sizes)[modality], dict(self.paddings)[modality]
        return sft_pooling.resolve_window(num_tokens, size, padding, self.pool_k)

    def pooled_length(self, modality: str, num_tokens: int) -> int:
        """Tokens kept; ValueError naming the config key when the pool cannot run."""
        window = self.window(modality, num_tokens)
        try:
            return sft_pooling.pooled_length(num_tokens, self.pool_type, window, self.pool_k)
        except ValueError as error:
            if self.pool_type in sft_pooling.K_POOLS:
                key = f"pool_k={self.pool_k}"
            else:
                size = dict(self.sizes)[modality]
                key = f"pool_sizes.{modality}={size}"
                if size == 0:
                    key += f" (derived from pool_k={self.pool_k})"
            raise ValueError(
                f"config.model.{key} cannot pool modality {modality!r}: {error}; change it "
                "for this modality"
            ) from None


class SparseFusionEncoder(nn.Module):
    """The `Transformer` submodule: unimodal blocks, sparse block, pooling, CLS sum, joint
    blocks, norm.

    Input: `{modality: [B, 1 + N_m, D]}` (CLS first). Returns the fused CLS followed by every
    modality's pooled tokens (in `modalities` order), after `encoder_norm`,
    `[B, 1 + Σ_m K_m, D]`, and the latent-mixup plan (`sft_mixup.MixPlan`, None when mixup is
    off or in evaluation).

    Sows into 'intermediates': `cls_at_fusion` (`{modality: [B, D]}`, each modality's CLS
    after its sparse block) and `fused_cls` (`[B, D]`, their sum).
    """

    modalities: tuple[str, ...]
    pooling: PoolSettings
    num_heads: int
    mlp_dim: int
    n_layers_pre_fusion: int
    n_layers_post_fusion: int
    sparse_block: str
    sparse_attention_mask: str
    sparse_attention_stride: int
    sparse_attention_expressivity: int
    mixup: sft_mixup.MixupSettings | None
    dropout_rate: float
    attention_dropout_rate: float
    stochastic_droplayer_rate: float
    attention: str
    remat: bool
    dtype: Any

    def _block(self, layer: int, name: str) -> nn.Module:
        depth = self.n_layers_pre_fusion + 1 + self.n_layers_post_fusion
        return vit.encoder_block_class(self.remat)(
            mlp_dim=self.mlp_dim,
            num_heads=self.num_heads,
            dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.attention_dropout_rate,
            droplayer_p=vit.droplayer_rate(layer, depth, self.stochastic_droplayer_rate),
            attention=self.attention,
            dtype=self.dtype,
            name=name,
        )

    def _sparse(self, m: str, x_BxLxD: jax.Array, deterministic: bool):
        """The sparse block of modality m: its output and, when pooling needs them, the
        head-averaged attention weights `[B, L, L]` (CLS row only for `cls_topk` with a ViT
        block)."""
        name = f"sparse_pool{mbt_lib.suffix(m)}"
        pool_type = self.pooling.pool_type
        if self.sparse_block == "attention":
            return sft_attention.SparseAttentionBlock(
                num_heads=self.num_heads,
                mask=self.sparse_attention_mask,
                stride=self.sparse_attention_stride,
                expressivity=self.sparse_attention_expressivity,
                dropout_rate=self.dropout_rate,
                attention_dropout_rate=self.attention_dropout_rate,
                dtype=self.dtype,
                name=name,
            )(x_BxLxD, deterministic)
        block = self._block(self.n_layers_pre_fusion, name)
        out_BxLxD = block(x_BxLxD, deterministic)
        weights = None
        if pool_type == "cls_topk" or pool_type in sft_pooling.SALIENCY_POOLS:
            weights = sft_attention.encoder_block_attention_weights(
                block.variables["params"],
                x_BxLxD,
                self.num_heads,
                cls_only=pool_type == "cls_topk",
            )
        return out_BxLxD, weights

    def _pool_key(self, index: int, train: bool) -> jax.Array | None:
        if self.pooling.pool_type not in sft_pooling.RANDOM_POOLS:
            return None
        if train:
            return self.make_rng("dropout")
        return jax.random.fold_in(jax.random.PRNGKey(EVAL_POOL_SEED), index)

    @nn.compact
    def __call__(
        self,
        tokens: dict[str, jax.Array],
        *,
        train: bool,
        latent_mixup_active: jax.Array | bool = True,
    ):
        deterministic = not train
        n_pre, n_post = self.n_layers_pre_fusion, self.n_layers_post_fusion
        first = self.modalities[0]
        plan = None
        placement = None
        if train and self.mixup is not None:
            placement = self.mixup.placement
            batch = tokens[first].shape[0]
            plan = sft_mixup.draw_plan(
                self.make_rng("dropout"),
                self.mixup,
                self.modalities,
                batch,
                n_pre,
                n_post,
                latent_mixup_active,
            )

        tokens = {
            m: mbt_lib.AddPositionEmbs(name=f"posembed_input{mbt_lib.suffix(m)}")(tokens[m])
            for m in self.modalities
        }
        if plan is not None and placement == "unimodal":
            tokens = sft_mixup.mix_at(plan, 0, tokens)
        for layer in range(n_pre):
            tokens = {
                m: self._block(layer, f"encoderblock_{layer}{mbt_lib.suffix(m)}")(
                    tokens[m], deterministic
                )
                for m in self.modalities
            }
            if plan is not None and placement == "unimodal":
                tokens = sft_mixup.mix_at(plan, layer + 1, tokens)
            elif plan is not None and placement in ("within", "any"):
                tokens = sft_mixup.mix_at(plan, layer, tokens)

        cls, pooled = {}, {}
        for index, m in enumerate(self.modalities):
            num_tokens = tokens[m].shape[1] - 1
            self.pooling.pooled_length(m, num_tokens)  # a clear error before tracing further
            out_BxLxD, weights_BxLxL = self._sparse(m, tokens[m], deterministic)
            cls[m] = out_BxLxD[:, :1]
            pooled[m] = sft_pooling.pool(
                out_BxLxD[:, 1:],
                self.pooling.pool_type,
                window=self.pooling.window(m, num_tokens),
                pool_k=self.pooling.pool_k,
                weights_BxLxL=weights_BxLxL,
                key=self._pool_key(index, train),
            )
        if plan is not None and placement == "unimodal":
            mixed = sft_mixup.mix_at(
                plan,
                n_pre + 1,
                {m: jnp.concatenate([cls[m], pooled[m]], axis=1) for m in self.modalities},
            )
            cls = {m: mixed[m][:, :1] for m in self.modalities}
            pooled = {m: mixed[m][:, 1:] for m in self.modalities}

        fused_cls_Bx1xD = sum(cls[m] for m in self.modalities)
        self.sow("intermediates", "cls_at_fusion", {m: cls[m][:, 0] for m in self.modalities})
        self.sow("intermediates", "fused_cls", fused_cls_Bx1xD[:, 0])

        joint_BxLxD = jnp.concatenate(
            [fused_cls_Bx1xD] + [pooled[m] for m in self.modalities], axis=1
        )
        for j in range(n_post):
            layer = n_pre + 1 + j
            joint_BxLxD = self._block(layer, f"fused_encoderblock_{j}")(joint_BxLxD, deterministic)
            if plan is not None and placement in ("fused", "any"):
                joint_BxLxD = sft_mixup.mix_joint_at(plan, n_pre + j, joint_BxLxD, first)
        joint_BxLxD = nn.LayerNorm(name="encoder_norm")(joint_BxLxD)
        return joint_BxLxD, plan


class SparseFusionTransformer(nn.Module):
    """SFT over any set of named modalities; one classifier on the fused CLS.

    Inputs: `{modality: array}` — video-like `[B, T, H, W, C]`, spectrogram `[B, time, mel, C]`.
    Returns logits `[B, num_classes]` (float32) in training and evaluation alike.

    With latent mixup active (training, `latent_mixup_alpha > 0`) the model sows into
    'intermediates' `latent_mixup_lambda` (`{modality: [B]}` float32, λ per example),
    `latent_mixup_partner` (`[B]` int32, the example each one was mixed with) and
    `latent_mixup_point` (the layer); run `apply(..., mutable=['intermediates'])` to read
    them and mix the targets: `y_mixed[b] = λ̄_b·y[b] + (1 − λ̄_b)·y[partner[b]]`,
    λ̄ = mean_m λ_m (`mbt.train_step.latent_mixup_targets`; the authors' loss is the same
    mix of two cross-entropies). `latent_mixup_active=False` (a traced bool is fine) sets
    every λ to 1: nothing is mixed (the unmixed first epochs). Every field comes from
    `config.model` (`FAMILY.build`); none has a default of its own.
    """

    num_classes: int
    modalities: tuple[str, ...]
    tokenizer_specs: tuple[tuple[str, tokenizers.TokenizerSpec], ...]
    pooling: PoolSettings
    hidden_size: int
    num_heads: int
    mlp_dim: int
    n_layers_pre_fusion: int
    n_layers_post_fusion: int
    sparse_block: str
    sparse_attention_mask: str
    sparse_attention_stride: int
    sparse_attention_expressivity: int
    mixup: sft_mixup.MixupSettings | None
    representation_size: int | None
    dropout_rate: float
    attention_dropout_rate: float
    stochastic_droplayer_rate: float
    attention: str
    remat: bool
    dtype: Any

    @nn.compact
    def __call__(
        self,
        inputs: dict[str, jax.Array],
        *,
        train: bool,
        latent_mixup_active: jax.Array | bool = True,
    ) -> jax.Array:
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

        encoded_BxLxD, plan = SparseFusionEncoder(
            modalities=self.modalities,
            pooling=self.pooling,
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            n_layers_pre_fusion=self.n_layers_pre_fusion,
            n_layers_post_fusion=self.n_layers_post_fusion,
            sparse_block=self.sparse_block,
            sparse_attention_mask=self.sparse_attention_mask,
            sparse_attention_stride=self.sparse_attention_stride,
            sparse_attention_expressivity=self.sparse_attention_expressivity,
            mixup=self.mixup,
            dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.attention_dropout_rate,
            stochastic_droplayer_rate=self.stochastic_droplayer_rate,
            attention=self.attention,
            remat=self.remat,
            dtype=dtype,
            name="Transformer",
        )(tokens, train=train, latent_mixup_active=latent_mixup_active)
        if plan is not None:
            self.sow("intermediates", "latent_mixup_lambda", plan.lambdas)
            self.sow("intermediates", "latent_mixup_partner", plan.partner)
            self.sow("intermediates", "latent_mixup_point", plan.point)

        features_BxD = encoded_BxLxD[:, 0]
        if self.representation_size is not None:
            features_BxD = jnp.tanh(
                nn.Dense(self.representation_size, name="pre_logits")(features_BxD)
            )
        logits = nn.Dense(
            self.num_classes, kernel_init=nn.initializers.zeros, name="output_projection"
        )(features_BxD)
        return logits.astype(jnp.float32)


def mixup_settings(model_config: ml_collections.ConfigDict) -> sft_mixup.MixupSettings | None:
    """The latent-mixup keys of a resolved config; None when `latent_mixup_alpha` is 0."""
    alpha = float(model_config.latent_mixup_alpha or 0.0)
    if alpha <= 0:
        return None
    return sft_mixup.MixupSettings(
        alpha=alpha,
        placement=model_config.latent_mixup,
        lambdas=model_config.latent_mixup_lambdas,
        partner=model_config.latent_mixup_partner,
        layer=int(model_config.latent_mixup_layer),
    )


class SFTFamily(family.ModelFamily):
    """`config.model.name = 'sft'`."""

    name = "sft"
    supports_branches = True
    partition_rules = common.TRANSFORMER_RULES

    def default_config(self) -> ml_collections.ConfigDict:
        return default_config()

    def adapt_recipe(self, config, mbt_model) -> None:
        """The authors' SFT and recipe (module docstring) at B/16 size on MBT's data: their
        model keys (`authors_model_overrides`), AdamW lr 1e-3 constant without warmup and
        without weight decay, clipping at global norm 0.8, batch 24, 20 epochs, no label
        smoothing, no input mixup (latent mixup instead, after 5 epochs)."""
        del mbt_model
        use_authors_model(config.model, config.dataset)
        config.optimizer.name = "adamw"
        config.optimizer.b1, config.optimizer.b2, config.optimizer.eps = 0.9, 0.999, 1e-8
        config.optimizer.weight_decay = 0.0
        config.optimizer.grad_clip_norm = 0.8
        config.lr.schedule = "constant"
        config.lr.base_lr = 1e-3
        config.lr.warmup_steps = 0
        config.batch_size = 24
        config.eval_batch_size = 24
        config.num_epochs = 20.0
        config.label_smoothing = 0.0
        config.mixup.alpha = 0.0
        config.mixup.mixmod = False

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
            pooling=PoolSettings.from_config(resolved),
            hidden_size=widths.hidden_size,
            num_heads=widths.num_heads,
            mlp_dim=widths.mlp_dim,
            n_layers_pre_fusion=resolved.n_layers_pre_fusion,
            n_layers_post_fusion=resolved.n_layers_post_fusion,
            sparse_block=resolved.sparse_block,
            sparse_attention_mask=resolved.sparse_attention_mask,
            sparse_attention_stride=int(resolved.sparse_attention_stride),
            sparse_attention_expressivity=int(resolved.sparse_attention_expressivity),
            mixup=mixup_settings(resolved),
            **common.transformer_options(resolved),
        )

    def analytic_macs(self, model_config, input_shapes, num_classes):
        from mbt.tools import flops  # pylint: disable=g-import-not-at-top (flops imports models)

        return flops.sft_macs(self.resolve(model_config), input_shapes, num_classes)

    def latent_mixup(self, model_config) -> bool:
        return mixup_settings(self.resolve(model_config)) is not None

    def latent_mixup_start_step(self, model_config, steps_per_epoch: float) -> int:
        after = float(self.resolve(model_config).latent_mixup_after_epochs or 0.0)
        return int(round(after * steps_per_epoch))

    def branch_param_candidates(self, path, modalities, full_modalities):
        """Only the CLS is renamed: the kept modality's unimodal and sparse blocks, the
        joint blocks and the head are the trained ones."""
        return [mbt_lib.branch_cls_candidate(path, modalities, full_modalities)]


def use_mbt_recipe(config: ml_collections.ConfigDict, mbt_model) -> None:
    """This project's earlier SFT-B/16 in MBT's recipe (`configs/<dataset>.py:model=sft,
    sft_recipe=mbt`): the `default_config()` model with max pooling to 16 tokens per window
    for each modality (rgb 32×224² with 2×16×16 tubelets 3136 → 196 tokens, spectrogram
    800×128 400 → 25), MBT's stochastic depth, MBT's SGD recipe and input mixup; latent
    mixup off."""
    config.model.pool_sizes = {m: 16 for m in config.model.modalities}
    config.model.pool_paddings = {m: 0 for m in config.model.modalities}
    config.model.stochastic_droplayer_rate = mbt_model.stochastic_droplayer_rate
    config.model.latent_mixup_alpha = 0.0


FAMILY = SFTFamily()
