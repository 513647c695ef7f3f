"""MBT-B/16 on AudioSet (527 classes, multi-label, sigmoid loss, mAP) with the paper's recipe.

    python -m mbt.main --config=configs/audioset/mbt_b16.py:mini --workdir=... \
        --config.dataset.data_dir=/data/tfds --config.init_from.checkpoint_path=ViT-B_16.npz

Argument `<subset>[,<modality>]`:
  subset   'mini' (default): AS-mini, the balanced train split (~20k clips), 50 epochs;
           '500k': the builder's `subset` split, the training rows whose YTID is in the
           manual dir's `subset_ids.txt` (AS-500K style id list);
           'full': the unbalanced train split (~2M clips).
  modality 'av' (default) | 'audio' | 'rgb'.
Evaluation and test use the `eval` split (4 clips per video at test). The epoch counts for
'500k' and 'full' are this project's defaults (the references give the AS-mini recipe
only): set --config.num_epochs for your budget.
"""

import importlib.util
import os

_TRAIN_SPLITS = {"mini": "balanced_train", "500k": "subset", "full": "unbalanced_train"}
_EPOCHS = {"mini": 50.0, "500k": 10.0, "full": 3.0}


def _recipe():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "_recipe.py")
    spec = importlib.util.spec_from_file_location("mbt_config_recipe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config(arg=None):
    recipe = _recipe()
    subset, modality = recipe.parse_arg(arg, tuple(_TRAIN_SPLITS), "mini")
    config = recipe.set_modalities(recipe.mbt_b16_config("audioset"), modality)
    config.dataset.train_split = _TRAIN_SPLITS[subset]
    config.dataset.eval_split = "eval"
    config.dataset.test_split = "eval"
    config.num_epochs = _EPOCHS[subset]
    return config
