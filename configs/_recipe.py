"""MBT-B/16 with the paper's training recipe; the dataset configs start from `mbt_b16_config`.

Recipe (MBT paper and its official Scenic config; see docs/training.md): SGD momentum 0.9,
base lr 0.5, linear warmup 2.5 epochs then cosine decay, batch 64, global-norm clipping 1.0,
label smoothing 0.3, stochastic depth 0.3, modality mixup with alpha 0.5, bottleneck fusion
with B = 4 tokens from layer Lf = 8, 8 s of audio (800 x 128 log-mel), 32 frames at stride 2
(tubelets 2 x 16 x 16), 4 test clips, ImageNet-21k ViT-B/16 initialisation.

Not a config itself (no `get_config`): loaded by path from the files next to it.
"""

from mbt import config_validation
from mbt import models
from mbt import pretrained
from mbt.data import pipeline


def mbt_b16_config(dataset_name: str):
    """Trainer + MBT-B/16 + `dataset_name` with every key at the paper's value."""
    config = config_validation.trainer_config()  # SGD 0.9, lr 0.5, warmup 2.5 ep, cosine,
    config.batch_size = 64  # clip 1.0, smoothing 0.3, mixmod 0.5
    config.eval_batch_size = 64
    config.num_epochs = 50.0
    config.num_train_steps = 0
    config.checkpoint.every_steps = 1000
    config.checkpoint.keep = 3
    config.log_every_steps = 50
    config.eval_every_steps = 2000

    config.model = models.default_mbt_config()  # B/16, bottleneck, Lf 8, B 4, depth 0.3
    config.model.modalities = ("rgb", "spectrogram")

    config.dataset = pipeline.default_dataset_config()  # 32 frames / 2, 224 px, 8 s, 4 clips
    config.dataset.name = dataset_name
    config.dataset.modalities = ("rgb", "spectrogram")

    # Set checkpoint_path to imagenet21k ViT-B_16.npz (vision_transformer) to start as the
    # paper does; None trains from scratch.
    config.init_from = pretrained.default_init_from_config()
    return config


def set_modalities(config, arg_modality: str):
    """'av' (default) | 'audio' | 'rgb': which modalities both the model and the data use."""
    choices = {"av": ("rgb", "spectrogram"), "audio": ("spectrogram",), "rgb": ("rgb",)}
    if arg_modality not in choices:
        raise ValueError(f"config argument modality {arg_modality!r}; allowed: {sorted(choices)}")
    config.model.modalities = choices[arg_modality]
    config.dataset.modalities = choices[arg_modality]
    return config


def parse_arg(arg, first_choices, default_first):
    """'<first>[,<modality>]' -> (first, modality), e.g. 'mini,audio' -> ('mini', 'audio')."""
    parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
    first = parts[0] if parts else default_first
    modality = parts[1] if len(parts) > 1 else "av"
    if first not in first_choices:
        raise ValueError(f"config argument {arg!r}: first part must be one of {first_choices}")
    return first, modality
