"""What the config files share: argument strings, the papers' recipes, model and modality swaps.

Config files (`configs/<dataset>.py`) take one argument string in big_vision's style,
`key=value,key=value` (`--config=configs/audioset.py:model=sft,split=500k`), parse it with
`parse_arg` and build on `mbt_b16_config` (MBT's paper recipe) with `set_model` and
`set_modalities`. This module is imported by the config files as a package module (never
loaded by path).

MBT recipe (MBT paper and its official Scenic config; see docs/training.md): SGD momentum 0.9,
base lr 0.5, linear warmup 2.5 epochs then cosine decay, batch 64, global-norm clipping 1.0,
label smoothing 0.3, stochastic depth 0.3, modality mixup with alpha 0.5, bottleneck fusion
with B = 4 tokens from layer Lf = 8, 8 s of audio (800 x 128 log-mel), 32 frames at stride 2
(tubelets 2 x 16 x 16), 4 test clips, ImageNet-21k ViT-B/16 initialisation.

SpecAugment (`SPEC_AUGMENT_RECIPES`, config argument `specaug=`): 'paper' is the paper's
text (one frequency mask of up to 48 bins, one time mask of up to 192 frames, no time warp);
'scenic' is what Scenic's released MBT config does through Lingvo's SpectrumAugmenter. That
config sets 1 frequency mask of up to 48 bins, 4 time masks of up to 48 frames with
`time_mask_max_ratio = 0` and `time_warp_max_frames = 1` with `time_warp_max_ratio = 0`;
Lingvo skips time masking and time warping when their max ratio is <= 0, so only the
frequency mask acts (no time masks, no warp).
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections

from mbt import config_validation
from mbt import models
from mbt import pretrained
from mbt.data import settings as data_settings
from mbt.models import sft as sft_lib

# The `model=` choices of the config files, MBT (the default) first.
MODEL_NAMES = ("mbt",) + tuple(n for n in models.known_names() if n != "mbt")
# Argument value -> the modalities both the model and the data use.
MODALITY_CHOICES = {"av": ("rgb", "spectrogram"), "audio": ("spectrogram",), "rgb": ("rgb",)}
MODALITIES = tuple(MODALITY_CHOICES)
# Argument value -> config.dataset.spec_augment values (see the module docstring).
SPEC_AUGMENT_RECIPES = {
    "paper": data_settings.PAPER_SPEC_AUGMENT,
    "scenic": dict(
        num_freq_masks=1,
        max_freq_width=48,
        num_time_masks=0,  # Scenic: 4 masks of <= 48 frames, switched off by max ratio 0
        max_time_width=48,
        time_warp_max_frames=1,  # Scenic's value, switched off by max ratio 0 as in Lingvo
        time_warp_max_ratio=0.0,
        time_warp_bound="static",
    ),
}
SPEC_AUGMENTS = tuple(SPEC_AUGMENT_RECIPES)
# The `sft_recipe=` choices: the SFT authors' model and recipe (default), or this project's
# earlier SFT-B/16 in MBT's recipe (`mbt.models.sft.use_mbt_recipe`).
SFT_RECIPES = ("authors", "mbt")


def parse_arg(arg: str | None, **choices: Sequence[str]) -> ml_collections.ConfigDict:
    """`'k=v,k2=v2'` -> ConfigDict over the keys of `choices`, each value checked against its
    choices (the first choice is the default).

    Example: `parse_arg('model=sft', model=('mbt', 'sft'), modalities=('av', 'audio'))` ->
    `{model: 'sft', modalities: 'av'}`. Raises ValueError naming the bad key or value and
    what is allowed.
    """
    values = {key: allowed[0] for key, allowed in choices.items()}
    for part in (arg or "").split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in choices:
            raise ValueError(
                f"config argument {part!r} in {arg!r}: expected key=value with key one of "
                f"{sorted(choices)}"
            )
        if value not in choices[key]:
            raise ValueError(f"config argument {key}={value!r}; allowed: {', '.join(choices[key])}")
        values[key] = value
    return ml_collections.ConfigDict(values)


def mbt_b16_config(dataset_name: str) -> ml_collections.ConfigDict:
    """Trainer + MBT-B/16 + `dataset_name` with every key at the paper's value."""
    config = config_validation.trainer_config()  # SGD 0.9, lr 0.5, warmup 2.5 ep, cosine,
    config.batch_size = 64  # clip 1.0, smoothing 0.3, mixmod 0.5
    config.eval_batch_size = 64
    config.num_epochs = 50.0
    config.num_train_steps = 0
    config.checkpoint.every_steps = 1000
    config.checkpoint.keep = 3
    config.log_every_steps = 50
    config.eval_every_steps = 2000

    config.model = models.default_mbt_config()  # B/16, bottleneck, Lf 8, B 4, depth 0.3
    config.dataset = data_settings.default_dataset_config()  # 32 frames / 2, 224 px, 8 s
    config.dataset.name = dataset_name
    set_modalities(config, "av")

    # Set checkpoint_path to imagenet21k ViT-B_16.npz (vision_transformer) to start as the
    # paper does; None trains from scratch.
    config.init_from = pretrained.default_init_from_config()
    return config


def set_modalities(config: ml_collections.ConfigDict, choice: str) -> ml_collections.ConfigDict:
    """`choice` ('av' | 'audio' | 'rgb', `MODALITY_CHOICES`) sets the model's and data's
    modalities."""
    if choice not in MODALITY_CHOICES:
        allowed = ", ".join(MODALITY_CHOICES)
        raise ValueError(f"config argument modalities={choice!r}; allowed: {allowed}")
    modalities = MODALITY_CHOICES[choice]
    config.model.modalities = modalities
    config.dataset.modalities = modalities
    if "pool_sizes" in config.model:  # SFT: one pool size and padding per modality it has
        sizes = dict(config.model.pool_sizes)
        config.model.pool_sizes = {m: sizes.get(m, 16) for m in modalities}
        paddings = dict(config.model.get("pool_paddings") or {})
        config.model.pool_paddings = {m: paddings.get(m, 0) for m in modalities}
    return config


def set_spec_augment(config: ml_collections.ConfigDict, choice: str) -> ml_collections.ConfigDict:
    """`choice` ('paper' | 'scenic', `SPEC_AUGMENT_RECIPES`) sets `config.dataset.spec_augment`
    (enabled, with that recipe's masks and time warp)."""
    if choice not in SPEC_AUGMENT_RECIPES:
        allowed = ", ".join(SPEC_AUGMENT_RECIPES)
        raise ValueError(f"config argument specaug={choice!r}; allowed: {allowed}")
    config.dataset.spec_augment.update(dict(enabled=True, **SPEC_AUGMENT_RECIPES[choice]))
    return config


def set_model(
    config: ml_collections.ConfigDict, name: str, sft_recipe: str = "authors"
) -> ml_collections.ConfigDict:
    """Swaps the MBT-B/16 model of `config` for the defaults of family `name` (same
    modalities), with the recipe changes that family's paper needs (its `adapt_recipe`:
    e.g. SFT takes its authors' model options and AdamW recipe, the C-LSTM trains with AdamW
    from scratch). `sft_recipe='mbt'` (model 'sft' only) keeps MBT's recipe and this
    project's earlier SFT instead (`mbt.models.sft.use_mbt_recipe`)."""
    if sft_recipe not in SFT_RECIPES:
        raise ValueError(
            f"config argument sft_recipe={sft_recipe!r}; allowed: {', '.join(SFT_RECIPES)}"
        )
    if sft_recipe != "authors" and name != "sft":
        raise ValueError(f"config argument sft_recipe={sft_recipe} applies to model=sft only")
    family = models.get_family(name)
    mbt_model = config.model
    config.model = family.default_config()
    config.model.modalities = tuple(mbt_model.modalities)
    if sft_recipe == "mbt":
        sft_lib.use_mbt_recipe(config, mbt_model)
    else:
        family.adapt_recipe(config, mbt_model)
    return config
