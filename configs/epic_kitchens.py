"""EPIC-Kitchens-100 (verb 97 + noun 300 heads, per-head softmax) with a paper's model and recipe.

    python -m mbt.main --config=configs/epic_kitchens.py:model=mbt --workdir=... \
        --config.dataset.data_dir=/data/tfds --config.init_from.checkpoint_path=ViT-B_16.npz

Argument `key=value,...` (every key optional; the first value is the default):
  model       'mbt' (MBT-B/16) | 'sft' (SFT-B/16) | 'clstm' (early-fusion C-LSTM):
              `mbt.recipe.set_model` says what each changes in MBT's recipe.
  modalities  'av' | 'audio' | 'rgb'.
  specaug     'paper' | 'scenic': SpecAugment as the MBT paper states it, or as Scenic's
              released config runs it (`mbt.recipe.SPEC_AUGMENT_RECIPES` says how they differ).
  sft_recipe  'authors' | 'mbt' (model=sft only): the SFT authors' model options and AdamW
              recipe, or this project's earlier SFT-B/16 in MBT's SGD recipe (docs/models.md).
Labels are `[one-hot verb ; one-hot noun]`; the loss sums the two heads' softmax
cross-entropies (`config.loss.head_reduction`) and the metrics report verb, noun and action
(both right) top-1/top-5 on `validation`.
"""

from mbt import recipe


def get_config(arg=None):
    arg = recipe.parse_arg(
        arg,
        model=recipe.MODEL_NAMES,
        modalities=recipe.MODALITIES,
        specaug=recipe.SPEC_AUGMENTS,
        sft_recipe=recipe.SFT_RECIPES,
    )
    config = recipe.mbt_b16_config("epic_kitchens")
    recipe.set_modalities(config, arg.modalities)
    recipe.set_spec_augment(config, arg.specaug)
    recipe.set_model(config, arg.model, arg.sft_recipe)
    config.dataset.train_split = "train"
    config.dataset.eval_split = "validation"
    config.dataset.test_split = "validation"
    config.loss.head_reduction = "sum"
    return config
