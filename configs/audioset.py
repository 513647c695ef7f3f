"""AudioSet (527 classes, multi-label, sigmoid loss, mAP) with a paper's model and recipe.

    python -m mbt.main --config=configs/audioset.py:model=mbt,split=mini --workdir=... \
        --config.dataset.data_dir=/data/tfds --config.init_from.checkpoint_path=ViT-B_16.npz

Argument `key=value,...` (every key optional; the first value is the default):
  model       'mbt' (MBT-B/16) | 'sft' (SFT-B/16) | 'clstm' (early-fusion C-LSTM):
              `mbt.recipe.set_model` says what each changes in MBT's recipe.
  split       'mini': AS-mini, the balanced train split (~20k clips), 50 epochs;
              '500k': the builder's `subset` split, the training rows whose YTID is in the
              manual dir's `subset_ids.txt` (AS-500K style id list);
              'full': the unbalanced train split (~2M clips).
  modalities  'av' | 'audio' | 'rgb'.
  specaug     'paper' | 'scenic': SpecAugment as the MBT paper states it, or as Scenic's
              released config runs it (`mbt.recipe.SPEC_AUGMENT_RECIPES` says how they differ).
  sft_recipe  'authors' | 'mbt' (model=sft only): the SFT authors' model options and AdamW
              recipe, or this project's earlier SFT-B/16 in MBT's SGD recipe (docs/models.md).
Evaluation and test use the `eval` split (4 clips per video at test). The epoch counts for
'500k' and 'full' are this project's defaults (the references give the AS-mini recipe
only): set --config.num_epochs for your budget.
"""

from mbt import recipe

_TRAIN_SPLITS = {"mini": "balanced_train", "500k": "subset", "full": "unbalanced_train"}
_EPOCHS = {"mini": 50.0, "500k": 10.0, "full": 3.0}


def get_config(arg=None):
    arg = recipe.parse_arg(
        arg,
        model=recipe.MODEL_NAMES,
        split=tuple(_TRAIN_SPLITS),
        modalities=recipe.MODALITIES,
        specaug=recipe.SPEC_AUGMENTS,
        sft_recipe=recipe.SFT_RECIPES,
    )
    config = recipe.mbt_b16_config("audioset")
    recipe.set_modalities(config, arg.modalities)
    recipe.set_spec_augment(config, arg.specaug)
    recipe.set_model(config, arg.model, arg.sft_recipe)
    config.dataset.train_split = _TRAIN_SPLITS[arg.split]
    config.dataset.eval_split = "eval"
    config.dataset.test_split = "eval"
    config.num_epochs = _EPOCHS[arg.split]
    return config
