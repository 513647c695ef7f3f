"""Early-fusion C-LSTM (Barnum et al. 2020) on audioset: the data and splits of `mbt_b16.py`.

    python -m mbt.main --config=configs/audioset/clstm.py:mini --workdir=... \
        --config.dataset.data_dir=/data/tfds

Argument as `mbt_b16.py`: `<subset>[,<modality>]`, e.g. 'mini' or '500k,audio'.
Model: `mbt.models.clstm.default_config()` (3 ConvLSTM layers, 32/64/128 channels, input
downsampled /4 /2 /2 by max pooling, 3x3 kernels), audio and video fused at the input
(`fusion_layer = 0`, the paper's most robust choice). Each of the 32 frames gets a 25-bin
slice of the 800x128 log-mel spectrogram, resized to the 224² frame grid. Trained from
scratch with AdamW (lr 1e-3, warmup + cosine, clipping 1.0); the ViT SGD recipe of MBT
(lr 0.5) is too aggressive for a recurrent model without normalisation. No stochastic depth
(not a transformer); label smoothing and mixup as MBT's recipe.
"""

import importlib.util
import os

from mbt.models import clstm


def _mbt_config_module():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mbt_b16.py")
    spec = importlib.util.spec_from_file_location("mbt_b16_audioset_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config(arg=None):
    config = _mbt_config_module().get_config(arg)
    model = clstm.default_config()
    model.modalities = tuple(config.model.modalities)
    model.fusion_layer = 0
    config.model = model
    config.optimizer.name = "adamw"
    config.optimizer.weight_decay = 1e-4
    config.lr.base_lr = 1e-3
    config.init_from.checkpoint_path = None  # no ImageNet ViT weights fit a ConvLSTM
    return config
