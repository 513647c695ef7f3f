"""VGGSound (309 classes, single label, softmax loss, top-1/top-5) with a paper's model and recipe.

    python -m mbt.main --config=configs/vggsound.py:model=sft --workdir=... \
        --config.dataset.data_dir=/data/tfds

Argument `key=value,...` (every key optional; the first value is the default):
  model       'mbt' (MBT-B/16) | 'sft' (SFT-B/16) | 'clstm' (early-fusion C-LSTM):
              `mbt.recipe.set_model` says what each changes in MBT's recipe.
  modalities  'av' | 'audio' | 'rgb'.
  specaug     'paper' | 'scenic': SpecAugment as the MBT paper states it, or as Scenic's
              released config runs it (`mbt.recipe.SPEC_AUGMENT_RECIPES` says how they differ).
  sft_recipe  'authors' | 'mbt' (model=sft only): the SFT authors' model options and AdamW
              recipe, or this project's earlier SFT-B/16 in MBT's SGD recipe (docs/models.md).
VGGSound has train and test splits only: the periodic evaluation and the final 4-clip test
both use `test`.
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
    config = recipe.mbt_b16_config("vggsound")
    recipe.set_modalities(config, arg.modalities)
    recipe.set_spec_augment(config, arg.specaug)
    recipe.set_model(config, arg.model, arg.sft_recipe)
    config.dataset.train_split = "train"
    config.dataset.eval_split = "test"
    config.dataset.test_split = "test"
    return config
