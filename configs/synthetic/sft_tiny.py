"""Tiny Sparse Fusion Transformer (audio + rgb) on the synthetic VGGSound copy of `mbt_tiny.py`.

    python -m mbt.main --config=configs/synthetic/sft_tiny.py --workdir=/tmp/sft_demo

Same data, optimiser and width as `mbt_tiny.py` (trains on CPU in about a minute); the model
is SFT with 1 unimodal block, the sparse-pool block and 1 joint block. Pool sizes 4 (rgb 32
tokens -> 8, spectrogram 20 -> 5): the joint block sees 1 + 13 tokens instead of 54.
No siblings (the MBT demo trains the single-modality baselines).
"""

import importlib.util
import os

from mbt.models import sft


def _base_config_module():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mbt_tiny.py")
    spec = importlib.util.spec_from_file_location("mbt_tiny_base_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config(arg=None):
    config = _base_config_module().get_config(arg)
    base_model = config.model
    model = sft.default_config()
    model.modalities = ("rgb", "spectrogram")
    model.variant = None
    model.hidden_size, model.num_heads, model.mlp_dim = 32, 2, 64
    model.tokenizers = base_model.tokenizers.to_dict()  # rgb 2x8x8 tubelets, spec 20x8
    model.n_layers_pre_fusion = 1
    model.n_layers_post_fusion = 1
    model.pool_type = "max"
    model.pool_sizes = {"rgb": 4, "spectrogram": 4}
    model.latent_mixup_alpha = 0.0  # off, as in the B/16 configs
    config.model = model
    config.siblings = ()
    return config
