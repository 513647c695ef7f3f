"""MBT-B/16 on EPIC-Kitchens-100 (verb 97 + noun 300 heads, per-split softmax), paper recipe.

    python -m mbt.main --config=configs/epic_kitchens/mbt_b16.py --workdir=... \
        --config.dataset.data_dir=/data/tfds --config.init_from.checkpoint_path=ViT-B_16.npz

Argument: modality 'av' (default) | 'audio' | 'rgb'. Labels are `[one-hot verb ; one-hot
noun]`; the loss sums the two heads' softmax cross-entropies (`config.loss.head_reduction`)
and the metrics report verb, noun and action (both right) top-1/top-5 on `validation`.
"""

import importlib.util
import os


def _recipe():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "_recipe.py")
    spec = importlib.util.spec_from_file_location("mbt_config_recipe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config(arg=None):
    recipe = _recipe()
    config = recipe.set_modalities(recipe.mbt_b16_config("epic_kitchens"), (arg or "av").strip())
    config.dataset.train_split = "train"
    config.dataset.eval_split = "validation"
    config.dataset.test_split = "validation"
    config.loss.head_reduction = "sum"
    return config
