"""Config helpers shared by the transformer families: sizes, tokenizers, common options.

Every function takes a `config.model` already merged over its family's defaults
(`ModelFamily.resolve`), so the keys it reads are present.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from mbt.models import tokenizers
from mbt.models import vit
from mbt.models.family import REPLICATE

# Modalities whose tokenizer may be left out of the config, and the default used for them.
VIDEO_LIKE = ("rgb", "flow")
DTYPES = ("float32", "bfloat16", "float16")
ATTENTIONS = ("auto", "fused", "cudnn", "einsum")

# Partition rules of a ViT-style model (`mbt.models.family`): its encoder blocks, then the
# small parameters around them (Scenic's names), replicated.
TRANSFORMER_RULES = vit.ENCODER_BLOCK_RULES + (
    (r"(^|/)embedding(_\w+)?/(kernel|bias)$", REPLICATE),  # patch embeddings
    (r"(^|/)cls\w*$", REPLICATE),  # CLS tokens: cls, cls<modality>
    (r"posembed_input(_\w+)?/pos_embedding$", REPLICATE),
    (r"encoder_norm/(scale|bias)$", REPLICATE),
    (r"(^|/)(pre_logits|output_projection)/(kernel|bias)$", REPLICATE),
)


def resolve_sizes(model_config: ml_collections.ConfigDict) -> vit.ViTSize:
    """Width/depth/heads/MLP from `variant` (e.g. 'B/16'), overridden by explicit keys."""
    variant = model_config.get("variant")
    base = vit.preset(variant) if variant else None
    sizes = {}
    for key in ("hidden_size", "num_layers", "num_heads", "mlp_dim"):
        value = model_config.get(key)
        if value is None:
            if base is None:
                raise ValueError(
                    f"config.model.{key} must be set when config.model.variant is None"
                )
            value = getattr(base, key)
        sizes[key] = int(value)
    patch = base.patch if base is not None else int(model_config.get("patch_size") or 16)
    return vit.ViTSize(**sizes, patch=patch)


def default_tokenizer(modality: str, patch: int) -> dict[str, Any] | None:
    """`config.model.tokenizers.<modality>` by default: 2-D patch×patch for the spectrogram,
    3-D tubelets (2, patch, patch) with the central-frame initialiser for rgb/flow, None for
    other modalities (they must be configured)."""
    if modality == "spectrogram":
        return {"kind": "2d", "patches": (patch, patch)}
    if modality in VIDEO_LIKE:
        return {
            "kind": "3d_conv",
            "patches": (2, patch, patch),
            "kernel_init": "central_frame_initializer",
        }
    return None


def tokenizer_spec(
    model_config: ml_collections.ConfigDict, modality: str, patch: int
) -> tokenizers.TokenizerSpec:
    """The tokenizer of `modality` from `config.model.tokenizers.<modality>`, with defaults.

    Defaults: `default_tokenizer(modality, patch)`.
    """
    configured = (model_config.get("tokenizers") or {}).get(modality)
    if configured is None:
        configured = default_tokenizer(modality, patch)
        if configured is None:
            raise ValueError(
                f"config.model.tokenizers.{modality} is missing; set kind to one of "
                f"{tokenizers.KINDS} and patches"
            )
    configured = dict(configured)
    kind = configured.get("kind")
    if not isinstance(kind, str):
        raise ValueError(
            f"config.model.tokenizers.{modality}.kind={kind!r}; allowed: {tokenizers.KINDS}"
        )
    spec = tokenizers.TokenizerSpec(
        kind=kind,
        patches=tuple(int(p) for p in configured.get("patches") or (patch, patch)),
        n_sampled_frames=configured.get("n_sampled_frames"),
        kernel_init=configured.get("kernel_init"),
    )
    spec.validate(modality)
    return spec


def tokenizer_specs(
    model_config: ml_collections.ConfigDict, patch: int
) -> tuple[tuple[str, tokenizers.TokenizerSpec], ...]:
    """`((modality, spec), ...)` for every configured modality, in order."""
    return tuple((m, tokenizer_spec(model_config, m, patch)) for m in model_config.modalities)


def transformer_options(model_config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The regularisation, head and numerics keys every transformer model takes."""
    return dict(
        representation_size=model_config.representation_size,
        dropout_rate=float(model_config.dropout_rate),
        attention_dropout_rate=float(model_config.attention_dropout_rate),
        stochastic_droplayer_rate=float(model_config.stochastic_droplayer_rate),
        attention=model_config.attention,
        remat=bool(model_config.remat),
        dtype=str(model_config.dtype),
    )


def check_modalities(model_config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """`config.model.modalities` as a tuple; ValueError unless one or more distinct names."""
    modalities = tuple(model_config.get("modalities") or ())
    if not modalities or len(set(modalities)) != len(modalities):
        raise ValueError(
            f"config.model.modalities={modalities!r} must name one or more "
            "distinct modalities, e.g. ('rgb', 'spectrogram')"
        )
    return modalities


def check_choice(model_config: ml_collections.ConfigDict, key: str, allowed) -> None:
    """ValueError `config.model.<key>=<value>; allowed: ...` when the value is not allowed."""
    value = model_config.get(key)
    if key == "dtype":
        value = str(value)
    if value not in allowed:
        raise ValueError(f"config.model.{key}={value!r}; allowed: {tuple(allowed)}")


def check_transformer(model_config: ml_collections.ConfigDict, sizes: vit.ViTSize) -> None:
    """Checks the keys of `transformer_options`, the tokenizers and the head count."""
    for m in model_config.modalities:
        tokenizer_spec(model_config, m, sizes.patch)
    check_choice(model_config, "dtype", DTYPES)
    check_choice(model_config, "attention", ATTENTIONS)
    if sizes.hidden_size % sizes.num_heads:
        raise ValueError(
            f"config.model.hidden_size={sizes.hidden_size} must be divisible by "
            f"config.model.num_heads={sizes.num_heads}"
        )
