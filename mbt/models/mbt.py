"""MBT: Attention Bottlenecks for Multimodal Fusion (Nagrani et al., NeurIPS 2021).

Each modality is tokenised and encoded by its own transformer layers up to the fusion layer Lf;
from Lf on, modalities exchange information in one of three ways (`fusion`):

- `bottleneck`: a few shared bottleneck tokens. Each modality's block runs on
  [its tokens ; bottleneck tokens]; it keeps its own token outputs, and the next bottleneck is the
  mean over modalities of their bottleneck outputs. Cross-modal flow passes only through them.
- `concat`: all modalities' tokens concatenated and processed by one shared block per layer
  (vanilla self-attention fusion).
- `cross`: each modality's own block (modality-specific weights) attends from its own tokens to
  [other modalities' tokens ; its own tokens] of the previous layer. Scenic runs the whole block
  on that concatenation and keeps its own outputs; here queries, the output projection and the
  MLP run on the own tokens only (same outputs, less compute; `vit.EncoderBlock`).

Lf = 0 is early fusion, Lf = num_layers late fusion. The parameter tree is Scenic MBT's
(`embedding`, `embedding_spectrogram`, `cls`, `clsspectrogram`, `bottleneck`,
`Transformer/{posembed_input[_<m>], encoderblock_<i>[_<m>], encoder_norm}`, `output_projection`),
with every modality other than rgb named like the spectrogram.

`FAMILY` (end of file) is this model's `mbt.models.family.ModelFamily`: its `config.model`
defaults (`default_config()`), validation, build, analytic FLOPs, branches and partition rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mbt.models import common
from mbt.models import family
from mbt.models import tokenizers
from mbt.models import vit

FUSIONS = ("bottleneck", "concat", "cross")
CLASSIFIERS = ("token", "gap")
PRIMARY = "rgb"  # the modality whose parameters carry no suffix, as in Scenic

# Every `config.model` key of MBT with MBT-B/16's defaults from the paper's code.
_DEFAULTS: dict[str, Any] = {
    "name": "mbt",
    "modalities": ("rgb", "spectrogram"),
    "variant": "B/16",
    "hidden_size": None,
    "num_layers": None,
    "num_heads": None,
    "mlp_dim": None,
    "tokenizers": {m: common.default_tokenizer(m, 16) for m in ("rgb", "spectrogram")},
    "fusion": "bottleneck",
    "fusion_layer": 8,
    "n_bottlenecks": 4,
    "share_encoder": False,
    "test_with_bottlenecks": True,
    "classifier": "token",
    "representation_size": None,
    "dropout_rate": 0.0,
    "attention_dropout_rate": 0.0,
    "stochastic_droplayer_rate": 0.3,
    "dtype": "float32",
    "remat": False,
    "attention": "auto",
}


def default_config() -> ml_collections.ConfigDict:
    """Every `config.model` key of MBT with MBT-B/16's defaults from the paper's code."""
    return ml_collections.ConfigDict(_DEFAULTS)


def suffix(modality: str) -> str:
    """'' for rgb, '_<modality>' for the others (Scenic's naming)."""
    return "" if modality == PRIMARY else f"_{modality}"


def cls_name(modality: str, modalities: tuple[str, ...]) -> str:
    """Scenic's CLS parameter name: 'cls' for rgb or a single modality, else 'cls' + name (sic)."""
    return "cls" if (modality == PRIMARY or len(modalities) == 1) else f"cls{modality}"


class AddPositionEmbs(nn.Module):
    """Adds a learned position embedding `pos_embedding` `[1, tokens, D]`, init N(0, 0.02)."""

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
        pos_1xLxD = self.param(
            "pos_embedding", nn.initializers.normal(stddev=0.02), (1,) + x_BxLxD.shape[1:]
        )
        return x_BxLxD + pos_1xLxD.astype(x_BxLxD.dtype)


class FusionEncoder(nn.Module):
    """The `Transformer` submodule: position embeddings, L blocks with fusion from Lf, final norm.

    Input: `{modality: [B, L_m, D]}` (CLS tokens already prepended) and, for bottleneck fusion,
    `bottleneck_BxNxD`. Output: `[B, sum_m L_m, D]`, the modalities' tokens concatenated in
    `modalities` order after `encoder_norm` (bottleneck tokens are not part of the output).
    """

    modalities: tuple[str, ...]
    num_layers: int
    num_heads: int
    mlp_dim: int
    fusion: str = _DEFAULTS["fusion"]
    fusion_layer: int = _DEFAULTS["fusion_layer"]
    share_encoder: bool = _DEFAULTS["share_encoder"]
    use_bottlenecks: bool = True
    dropout_rate: float = _DEFAULTS["dropout_rate"]
    attention_dropout_rate: float = _DEFAULTS["attention_dropout_rate"]
    stochastic_droplayer_rate: float = _DEFAULTS["stochastic_droplayer_rate"]
    attention: str = _DEFAULTS["attention"]
    remat: bool = _DEFAULTS["remat"]
    dtype: Any = _DEFAULTS["dtype"]

    @nn.compact
    def __call__(
        self, tokens: dict[str, jax.Array], bottleneck_BxNxD: jax.Array | None, *, train: bool
    ) -> jax.Array:
        tokens = {
            m: AddPositionEmbs(name=f"posembed_input{suffix(m)}")(tokens[m])
            for m in self.modalities
        }
        block_cls = vit.encoder_block_class(self.remat)
        deterministic = not train
        multimodal = len(self.modalities) > 1
        joint_BxLxD = None  # concat fusion: the concatenated sequence once fusion has started

        for layer in range(self.num_layers):

            def block(name):
                return block_cls(
                    mlp_dim=self.mlp_dim,
                    num_heads=self.num_heads,
                    dropout_rate=self.dropout_rate,
                    attention_dropout_rate=self.attention_dropout_rate,
                    droplayer_p=vit.droplayer_rate(
                        layer,  # noqa: B023 (called within this iteration)
                        self.num_layers,
                        self.stochastic_droplayer_rate,
                    ),
                    attention=self.attention,
                    dtype=self.dtype,
                    name=name,
                )

            shared = block(f"encoderblock_{layer}")
            blocks = {
                m: shared
                if (m == PRIMARY or self.share_encoder)
                else block(f"encoderblock_{layer}{suffix(m)}")
                for m in self.modalities
            }
            fused = multimodal and layer >= self.fusion_layer
            if self.fusion == "bottleneck" and not self.use_bottlenecks:
                fused = False

            if not fused:
                tokens = {m: blocks[m](tokens[m], deterministic) for m in self.modalities}
            elif self.fusion == "bottleneck":
                assert bottleneck_BxNxD is not None  # made before the layers for this fusion
                bottleneck_outputs = []
                for m in self.modalities:
                    n_own = tokens[m].shape[1]
                    out = blocks[m](
                        jnp.concatenate([tokens[m], bottleneck_BxNxD], axis=1), deterministic
                    )
                    tokens[m] = out[:, :n_own]
                    bottleneck_outputs.append(out[:, n_own:])
                bottleneck_BxNxD = jnp.mean(jnp.stack(bottleneck_outputs, axis=0), axis=0)
            elif self.fusion == "cross":
                tokens = self._cross_layer(blocks, tokens, deterministic)
            else:  # concat: one shared block over all tokens
                if joint_BxLxD is None:
                    joint_BxLxD = jnp.concatenate([tokens[m] for m in self.modalities], axis=1)
                joint_BxLxD = shared(joint_BxLxD, deterministic)

        if joint_BxLxD is None:
            joint_BxLxD = jnp.concatenate([tokens[m] for m in self.modalities], axis=1)
        return nn.LayerNorm(name="encoder_norm")(joint_BxLxD)

    def _cross_layer(
        self, blocks: dict[str, nn.Module], tokens: dict[str, jax.Array], deterministic: bool
    ) -> dict[str, jax.Array]:
        """One cross-fusion layer: `{m: [B, L_m, D]}` → `{m: [B, L_m, D]}`.

        Modality m's tokens attend to [other modalities' tokens (in `modalities` order) ; its
        own], all from the previous layer; only its own tokens get queries, MLP and outputs
        (`vit.EncoderBlock` with a context).
        """
        out = {}
        for m in self.modalities:
            others_BxCxD = jnp.concatenate([tokens[o] for o in self.modalities if o != m], axis=1)
            out[m] = blocks[m](tokens[m], deterministic, others_BxCxD)
        return out


class MBT(nn.Module):
    """Audio-visual fusion transformer over any set of named modalities.

    Inputs: `{modality: array}` — video-like `[B, T, H, W, C]`, spectrogram `[B, time, mel, C]`.
    Returns logits `[B, num_classes]`; with `classifier='token'` in training a dict
    `{modality: [B, num_classes]}` of per-modality logits (one shared head), whose mean is what
    evaluation returns. Every field comes from `config.model` (`FAMILY.build`); none has a
    default of its own.
    """

    num_classes: int
    modalities: tuple[str, ...]
    tokenizer_specs: tuple[tuple[str, tokenizers.TokenizerSpec], ...]
    hidden_size: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    fusion: str
    fusion_layer: int
    n_bottlenecks: int
    share_encoder: bool
    test_with_bottlenecks: bool
    classifier: str
    representation_size: int | None
    dropout_rate: float
    attention_dropout_rate: float
    stochastic_droplayer_rate: float
    attention: str
    remat: bool
    dtype: Any

    @nn.compact
    def __call__(self, inputs: dict[str, jax.Array], *, train: bool):
        specs = dict(self.tokenizer_specs)
        missing = [m for m in self.modalities if m not in inputs]
        if missing:
            raise ValueError(f"model inputs lack modalities {missing}; got {sorted(inputs)}")
        dtype = jnp.dtype(self.dtype)

        tokens, num_tokens = {}, {}
        for m in self.modalities:
            x = tokenizers.embed(
                jnp.asarray(inputs[m], dtype),
                specs[m],
                self.hidden_size,
                name=f"embedding{suffix(m)}",
                dtype=dtype,
            )
            if self.classifier == "token":
                cls_1x1xD = self.param(
                    cls_name(m, self.modalities), nn.initializers.zeros, (1, 1, self.hidden_size)
                )
                cls_Bx1xD = jnp.broadcast_to(cls_1x1xD.astype(x.dtype), (x.shape[0], 1, x.shape[2]))
                x = jnp.concatenate([cls_Bx1xD, x], axis=1)
            tokens[m] = x
            num_tokens[m] = x.shape[1]
        batch = next(iter(tokens.values())).shape[0]

        bottleneck_BxNxD = None
        use_bottlenecks = train or self.test_with_bottlenecks
        if self.fusion == "bottleneck" and len(self.modalities) > 1:
            # Scenic adds one more bottleneck token when the classifier is 'token'.
            n = self.n_bottlenecks + (1 if self.classifier == "token" else 0)
            bottleneck_1xNxD = self.param(
                "bottleneck", nn.initializers.normal(stddev=0.02), (1, n, self.hidden_size)
            )
            bottleneck_BxNxD = jnp.broadcast_to(
                bottleneck_1xNxD.astype(dtype), (batch, n, self.hidden_size)
            )

        encoded_BxLxD = FusionEncoder(
            modalities=self.modalities,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            fusion=self.fusion,
            fusion_layer=self.fusion_layer,
            share_encoder=self.share_encoder,
            use_bottlenecks=use_bottlenecks,
            dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.attention_dropout_rate,
            stochastic_droplayer_rate=self.stochastic_droplayer_rate,
            attention=self.attention,
            remat=self.remat,
            dtype=dtype,
            name="Transformer",
        )(tokens, bottleneck_BxNxD, train=train)

        head = nn.Dense(
            self.num_classes, kernel_init=nn.initializers.zeros, name="output_projection"
        )
        pre_logits = None
        if self.representation_size is not None:
            pre_logits = nn.Dense(self.representation_size, name="pre_logits")

        def classify(features_BxD):
            if pre_logits is not None:
                features_BxD = jnp.tanh(pre_logits(features_BxD))
            return head(features_BxD).astype(jnp.float32)

        if self.classifier == "gap":
            return classify(jnp.mean(encoded_BxLxD, axis=1))

        logits, offset = {}, 0
        for m in self.modalities:
            logits[m] = classify(encoded_BxLxD[:, offset])
            offset += num_tokens[m]
        if train:
            return logits
        return sum(logits.values()) / len(logits)


def branch_cls_candidate(path: str, modalities: Sequence[str], full_modalities: Sequence[str]):
    """The full model's name of a branch's CLS parameter `path` (else `path` itself)."""
    rename = {
        cls_name(m, tuple(modalities)): cls_name(m, tuple(full_modalities)) for m in modalities
    }
    return rename.get(path, path)


class MBTFamily(family.ModelFamily):
    """`config.model.name = 'mbt'`."""

    name = "mbt"
    supports_branches = True
    predict_missing_with_branch = True  # the token classifier trains each modality's CLS
    supports_init_from = True  # Scenic MBT checkpoints and ViT weights (`mbt.pretrained`)
    partition_rules = common.TRANSFORMER_RULES + ((r"(^|/)bottleneck$", family.REPLICATE),)

    def default_config(self) -> ml_collections.ConfigDict:
        return default_config()

    def check(self, resolved: ml_collections.ConfigDict) -> None:
        sizes = common.resolve_sizes(resolved)
        common.check_modalities(resolved)
        common.check_choice(resolved, "fusion", FUSIONS)
        common.check_choice(resolved, "classifier", CLASSIFIERS)
        common.check_transformer(resolved, sizes)
        fusion_layer = resolved.fusion_layer
        if not isinstance(fusion_layer, int) or not 0 <= fusion_layer <= sizes.num_layers:
            raise ValueError(
                f"config.model.fusion_layer={fusion_layer!r}; allowed: integers "
                f"0..{sizes.num_layers} (0 = early, {sizes.num_layers} = late fusion)"
            )
        if resolved.fusion == "bottleneck" and int(resolved.n_bottlenecks) < 1:
            raise ValueError("config.model.n_bottlenecks must be >= 1 for bottleneck fusion")

    def make(self, resolved: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
        sizes = common.resolve_sizes(resolved)
        return MBT(
            num_classes=num_classes,
            modalities=tuple(resolved.modalities),
            tokenizer_specs=common.tokenizer_specs(resolved, sizes.patch),
            hidden_size=sizes.hidden_size,
            num_layers=sizes.num_layers,
            num_heads=sizes.num_heads,
            mlp_dim=sizes.mlp_dim,
            fusion=resolved.fusion,
            fusion_layer=resolved.fusion_layer,
            n_bottlenecks=int(resolved.n_bottlenecks),
            share_encoder=bool(resolved.share_encoder),
            test_with_bottlenecks=bool(resolved.test_with_bottlenecks),
            classifier=resolved.classifier,
            **common.transformer_options(resolved),
        )

    def analytic_macs(self, model_config, input_shapes, num_classes):
        from mbt.tools import flops  # pylint: disable=g-import-not-at-top (flops imports models)

        return flops.mbt_macs(self.resolve(model_config), input_shapes, num_classes)

    def branch_param_candidates(self, path, modalities, full_modalities):
        """The CLS rename; and with one modality and concat fusion, a block from Lf on is the
        shared `encoderblock_<i>` in the full model (it has no per-modality block there)."""
        candidates = [branch_cls_candidate(path, modalities, full_modalities)]
        if path.startswith("Transformer/encoderblock_") and len(modalities) == 1:
            block = path.split("/")[1]
            shared = "encoderblock_" + block.split("_")[1]
            candidates.append(path.replace(f"/{block}/", f"/{shared}/", 1))
        return candidates


FAMILY = MBTFamily()
