"""Tiny early-fusion C-LSTM (audio + rgb) on the synthetic VGGSound copy of `mbt_tiny.py`.

    python -m mbt.main --config=configs/synthetic/clstm_tiny.py --workdir=/tmp/clstm_demo

Same data as `mbt_tiny.py`. Two ConvLSTM layers (16, 32 channels) fused at the input
(`fusion_layer = 0`): each 32x32 frame is pooled by 4 to 8x8, each of the 4 audio slices
(25 x 32 log-mel bins) is resized to the video grid and concatenated on channels.
"""

import importlib.util
import os

from mbt.models import clstm


def _base_config_module():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mbt_tiny.py")
    spec = importlib.util.spec_from_file_location("mbt_tiny_base_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config(arg=None):
    config = _base_config_module().get_config(arg)
    model = clstm.default_config()
    model.modalities = ("rgb", "spectrogram")
    model.num_layers = 2
    model.features = (16, 32)
    model.spatial_strides = (4, 2)
    model.fusion_layer = 0
    config.model = model
    config.optimizer.name = "adamw"
    config.optimizer.weight_decay = 0.0
    config.lr.base_lr = 3e-3
    config.siblings = ()
    return config
