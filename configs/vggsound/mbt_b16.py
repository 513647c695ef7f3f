"""MBT-B/16 on VGGSound (309 classes, single label, softmax loss, top-1/top-5), paper recipe.

    python -m mbt.main --config=configs/vggsound/mbt_b16.py --workdir=... \
        --config.dataset.data_dir=/data/tfds --config.init_from.checkpoint_path=ViT-B_16.npz

Argument: modality 'av' (default) | 'audio' | 'rgb'. VGGSound has train and test splits
only: the periodic evaluation and the final 4-clip test both use `test`.
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
    config = recipe.set_modalities(recipe.mbt_b16_config("vggsound"), (arg or "av").strip())
    config.dataset.train_split = "train"
    config.dataset.eval_split = "test"
    config.dataset.test_split = "test"
    return config
