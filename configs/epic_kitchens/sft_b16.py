"""SFT-B/16 (Sparse Fusion Transformer) on epic_kitchens: data, splits and recipe of `mbt_b16.py`.

    python -m mbt.main --config=configs/epic_kitchens/sft_b16.py --workdir=... \
        --config.dataset.data_dir=/data/tfds

Argument as `mbt_b16.py`: modality 'av' (default) | 'audio' | 'rgb'.
Model (Ding et al. 2021, see docs/models.md): ViT-B/16 widths, 1 unimodal block per modality,
the sparse-pool block (max pooling, 16 tokens per block: rgb 32x224² with 2x16x16 tubelets
3136 -> 196 tokens, spectrogram 800x128 400 -> 25), CLS tokens summed, 11 joint blocks.
Everything else (SGD 0.9, lr 0.5, warmup 2.5 epochs + cosine, batch 64, clipping 1.0, label
smoothing 0.3, stochastic depth 0.3, mixmod mixup 0.5) is MBT's recipe. Latent mixup stays off
(input mixup is on); the trainer supports it (`--config.model.latent_mixup_alpha=...
--config.mixup.alpha=0`).
"""

import importlib.util
import os

from mbt.models import sft


def _mbt_config_module():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mbt_b16.py")
    spec = importlib.util.spec_from_file_location("mbt_b16_epic_kitchens_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config(arg=None):
    config = _mbt_config_module().get_config(arg)
    model = sft.default_config()  # B/16, 1 + 1 + 11 blocks, max pooling 16/16
    model.modalities = tuple(config.model.modalities)
    model.pool_sizes = {m: 16 for m in model.modalities}
    model.stochastic_droplayer_rate = config.model.stochastic_droplayer_rate  # 0.3
    model.latent_mixup_alpha = 0.0
    config.model = model
    return config
