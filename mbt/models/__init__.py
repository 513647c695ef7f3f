"""Models of the package, built from `config.model` by name.

`build_model(config.model, num_classes)` returns a `flax.linen.Module`; see `docs/design.md` for
the call contract. `MODELS` maps `config.model.name` to a builder; `validate_model_config`
raises a ValueError naming the offending key and the allowed values.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import ml_collections

from mbt.models import clstm as clstm_lib
from mbt.models import mbt as mbt_lib
from mbt.models import sft as sft_lib
from mbt.models import tokenizers
from mbt.models import vit

# Modalities whose tokenizer may be left out of the config, and the default used for them.
_VIDEO_LIKE = ("rgb", "flow")
_DTYPES = ("float32", "bfloat16", "float16")
_ATTENTIONS = ("fused", "einsum")


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
    patch = base.patch if base is not None else int(model_config.get("patch_size", 16))
    return vit.ViTSize(**sizes, patch=patch)


def tokenizer_spec(
    model_config: ml_collections.ConfigDict, modality: str, patch: int
) -> tokenizers.TokenizerSpec:
    """The tokenizer of `modality` from `config.model.tokenizers.<modality>`, with defaults.

    Defaults: spectrogram → 2-D patch×patch; rgb/flow → 3-D tubelets (2, patch, patch) with the
    central-frame initialiser. Any other modality must be configured.
    """
    configured = (model_config.get("tokenizers") or {}).get(modality)
    if configured is None:
        if modality == "spectrogram":
            configured = {"kind": "2d", "patches": (patch, patch)}
        elif modality in _VIDEO_LIKE:
            configured = {
                "kind": "3d_conv",
                "patches": (2, patch, patch),
                "kernel_init": "central_frame_initializer",
            }
        else:
            raise ValueError(
                f"config.model.tokenizers.{modality} is missing; set kind to one of "
                f"{tokenizers.KINDS} and patches"
            )
    configured = dict(configured)
    spec = tokenizers.TokenizerSpec(
        kind=configured.get("kind"),
        patches=tuple(int(p) for p in configured.get("patches") or (patch, patch)),
        n_sampled_frames=configured.get("n_sampled_frames"),
        kernel_init=configured.get("kernel_init"),
    )
    spec.validate(modality)
    return spec


def transformer_options(model_config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The regularisation, head and numerics keys every transformer model takes, with defaults."""
    get = model_config.get
    return dict(
        representation_size=get("representation_size"),
        dropout_rate=get("dropout_rate", 0.0),
        attention_dropout_rate=get("attention_dropout_rate", 0.0),
        stochastic_droplayer_rate=get("stochastic_droplayer_rate", 0.0),
        attention=get("attention", "fused"),
        remat=get("remat", False),
        dtype=str(get("dtype", "float32")),
    )


def validate_model_config(model_config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the key and the allowed values for a bad `config.model`."""
    name = model_config.get("name")
    if name not in MODELS:
        raise ValueError(f"config.model.name={name!r}; allowed: {sorted(MODELS)}")
    MODELS[name].validate(model_config)


def build_model(model_config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
    """Builds the model named by `config.model.name` with `num_classes` outputs."""
    validate_model_config(model_config)
    return MODELS[model_config.name].build(model_config, num_classes)


class _MBTBuilder:
    """Validates and builds `config.model.name = 'mbt'`."""

    @staticmethod
    def validate(model_config: ml_collections.ConfigDict) -> None:
        sizes = resolve_sizes(model_config)
        modalities = tuple(model_config.get("modalities") or ())
        if not modalities or len(set(modalities)) != len(modalities):
            raise ValueError(
                f"config.model.modalities={modalities!r} must name one or more "
                "distinct modalities, e.g. ('rgb', 'spectrogram')"
            )
        for m in modalities:
            tokenizer_spec(model_config, m, sizes.patch)
        checks = {
            "fusion": (model_config.get("fusion", "bottleneck"), mbt_lib.FUSIONS),
            "classifier": (model_config.get("classifier", "token"), mbt_lib.CLASSIFIERS),
            "dtype": (str(model_config.get("dtype", "float32")), _DTYPES),
            "attention": (model_config.get("attention", "fused"), _ATTENTIONS),
        }
        for key, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"config.model.{key}={value!r}; allowed: {allowed}")
        fusion_layer = model_config.get("fusion_layer", 0)
        if not isinstance(fusion_layer, int) or not 0 <= fusion_layer <= sizes.num_layers:
            raise ValueError(
                f"config.model.fusion_layer={fusion_layer!r}; allowed: integers "
                f"0..{sizes.num_layers} (0 = early, {sizes.num_layers} = late fusion)"
            )
        if sizes.hidden_size % sizes.num_heads:
            raise ValueError(
                f"config.model.hidden_size={sizes.hidden_size} must be divisible by "
                f"config.model.num_heads={sizes.num_heads}"
            )
        if (
            model_config.get("fusion", "bottleneck") == "bottleneck"
            and int(model_config.get("n_bottlenecks", 4)) < 1
        ):
            raise ValueError("config.model.n_bottlenecks must be >= 1 for bottleneck fusion")

    @staticmethod
    def build(model_config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
        sizes = resolve_sizes(model_config)
        modalities = tuple(model_config.modalities)
        get = model_config.get
        return mbt_lib.MBT(
            num_classes=num_classes,
            modalities=modalities,
            tokenizer_specs=tuple(
                (m, tokenizer_spec(model_config, m, sizes.patch)) for m in modalities
            ),
            hidden_size=sizes.hidden_size,
            num_layers=sizes.num_layers,
            num_heads=sizes.num_heads,
            mlp_dim=sizes.mlp_dim,
            fusion=get("fusion", "bottleneck"),
            fusion_layer=get("fusion_layer", 0),
            n_bottlenecks=get("n_bottlenecks", 4),
            share_encoder=get("share_encoder", False),
            test_with_bottlenecks=get("test_with_bottlenecks", True),
            classifier=get("classifier", "token"),
            **transformer_options(model_config),
        )


class _SFTBuilder:
    """Validates and builds `config.model.name = 'sft'` (defaults: `sft_lib.default_config()`)."""

    @staticmethod
    def _sizes(model_config: ml_collections.ConfigDict) -> vit.ViTSize:
        # SFT's depth is fixed by its stage sizes, not by num_layers or the variant's depth.
        resolved = ml_collections.ConfigDict(model_config.to_dict())
        resolved.num_layers = (
            resolved.get("n_layers_pre_fusion", 1) + 1 + resolved.get("n_layers_post_fusion", 11)
        )
        return resolve_sizes(resolved)

    @staticmethod
    def validate(model_config: ml_collections.ConfigDict) -> None:
        modalities = tuple(model_config.get("modalities") or ())
        if not modalities or len(set(modalities)) != len(modalities):
            raise ValueError(
                f"config.model.modalities={modalities!r} must name one or more "
                "distinct modalities, e.g. ('rgb', 'spectrogram')"
            )
        sft_lib.check_config(model_config, modalities, model_config.get("num_layers"))
        sizes = _SFTBuilder._sizes(model_config)
        for m in modalities:
            tokenizer_spec(model_config, m, sizes.patch)
        checks = {
            "dtype": (str(model_config.get("dtype", "float32")), _DTYPES),
            "attention": (model_config.get("attention", "fused"), _ATTENTIONS),
        }
        for key, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"config.model.{key}={value!r}; allowed: {allowed}")
        if sizes.hidden_size % sizes.num_heads:
            raise ValueError(
                f"config.model.hidden_size={sizes.hidden_size} must be divisible by "
                f"config.model.num_heads={sizes.num_heads}"
            )

    @staticmethod
    def build(model_config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
        sizes = _SFTBuilder._sizes(model_config)
        modalities = tuple(model_config.modalities)
        get = model_config.get
        return sft_lib.SparseFusionTransformer(
            num_classes=num_classes,
            modalities=modalities,
            tokenizer_specs=tuple(
                (m, tokenizer_spec(model_config, m, sizes.patch)) for m in modalities
            ),
            pool_sizes=tuple((m, int(model_config.pool_sizes[m])) for m in modalities),
            hidden_size=sizes.hidden_size,
            num_heads=sizes.num_heads,
            mlp_dim=sizes.mlp_dim,
            pool_type=get("pool_type", "max"),
            n_layers_pre_fusion=get("n_layers_pre_fusion", 1),
            n_layers_post_fusion=get("n_layers_post_fusion", 11),
            latent_mixup_alpha=float(get("latent_mixup_alpha", 0.0) or 0.0),
            **transformer_options(model_config),
        )


class _CLSTMBuilder:
    """Validates and builds `config.model.name = 'clstm'` (defaults: `clstm_lib.default_config`)."""

    @staticmethod
    def validate(model_config: ml_collections.ConfigDict) -> None:
        clstm_lib.check_config(model_config)
        dtype = str(model_config.get("dtype", "float32"))
        if dtype not in _DTYPES:
            raise ValueError(f"config.model.dtype={dtype!r}; allowed: {_DTYPES}")

    @staticmethod
    def build(model_config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
        get = model_config.get
        num_layers = get("num_layers", 3)
        map_size = get("audio_map_size")
        return clstm_lib.ConvLSTMClassifier(
            num_classes=num_classes,
            modalities=tuple(model_config.modalities),
            features=clstm_lib.per_layer(get("features", 64), num_layers, "features"),
            spatial_strides=clstm_lib.per_layer(
                get("spatial_strides", 1), num_layers, "spatial_strides"
            ),
            kernel_size=tuple(get("kernel_size", (3, 3))),
            downsample=get("downsample", "pool"),
            fusion_layer=get("fusion_layer", 0),
            audio_map_size=tuple(map_size) if map_size is not None else None,
            audio_slices=get("audio_slices"),
            dropout_rate=get("dropout_rate", 0.0),
            dtype=str(get("dtype", "float32")),
        )


MODELS: dict[str, Any] = {"mbt": _MBTBuilder, "sft": _SFTBuilder, "clstm": _CLSTMBuilder}


def default_mbt_config() -> ml_collections.ConfigDict:
    """Every `config.model` key of MBT with MBT-B/16's defaults from the paper's code."""
    return ml_collections.ConfigDict(
        {
            "name": "mbt",
            "modalities": ("rgb", "spectrogram"),
            "variant": "B/16",
            "hidden_size": None,
            "num_layers": None,
            "num_heads": None,
            "mlp_dim": None,
            "tokenizers": {
                "rgb": {
                    "kind": "3d_conv",
                    "patches": (2, 16, 16),
                    "kernel_init": "central_frame_initializer",
                },
                "spectrogram": {"kind": "2d", "patches": (16, 16)},
            },
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
            "attention": "fused",
        }
    )
