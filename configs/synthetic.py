"""Tiny models on a synthetic VGGSound-layout copy: the no-download demos.

    python -m mbt.main --config=configs/synthetic.py --workdir=/tmp/mbt_demo
    python -m mbt.main --config=configs/synthetic.py:model=sft --workdir=/tmp/sft_demo
    python -m mbt.main --config=configs/synthetic.py:model=clstm --workdir=/tmp/clstm_demo

Argument `key=value,...` (every key optional; the first value is the default):
  model       'mbt' | 'sft' | 'clstm' (tiny sizes, below)
  modalities  'av' | 'audio' | 'rgb'
  sft_recipe  'authors' | 'mbt' (model=sft only): the SFT authors' model options and
              optimiser, or this project's earlier SFT with the demo's recipe (below)

`mbt.data.pipeline.prepare_dataset` writes and builds the synthetic copy in the workdir
(6 classes = 3 colour gratings x 2 tones; `mbt.data.synthetic`) and the model trains on CPU
in a few minutes. The audio+rgb MBT run then trains its siblings, the same model on audio
only and on rgb only, in `<workdir>/mbt_tiny_audio` and `<workdir>/mbt_tiny_rgb` on the same
data, and prints a table of their test top-1. Single modalities are capped by construction
(rgb sees only the grating: ~1/2; audio only the tone: ~1/3).

Models (all width 32, AdamW lr 3e-3, 300 steps of batch 16):
- mbt: 2 layers, bottleneck fusion from layer 1 with 4 bottleneck tokens; rgb tubelets
  2x8x8 (32 tokens), spectrogram patches 20x8 (20 tokens).
- sft: 1 unimodal block, the sparse block and 1 joint block. `sft_recipe=authors`: the
  authors' options (`mbt.models.sft.authors_model_overrides`): attention-only sparse block,
  max pooling of rgb to 1 token (32 tokens, one window) and of the spectrogram in 0.64 s
  windows (3 rows of 4 patches: 20 tokens -> 1), latent mixup `any` (alpha 0.3, per-example
  lambda per modality, permutation partner) after the first quarter of training unmixed
  (11 of 44 epochs, their 5 of 20); their optimiser (AdamW lr 1e-3 constant, no weight
  decay, clipping 0.8) at the demo's batch 16 and 300 steps. `sft_recipe=mbt`: the earlier
  variant, a full encoder sparse block and pool sizes 4 (rgb 32 tokens -> 8, spectrogram
  20 -> 5), with the recipe of the other demos.
- clstm: 2 ConvLSTM layers (16, 32 channels, strides 4, 2), fused at the input.
"""

import os

from mbt import config_validation
from mbt import models
from mbt import recipe
from mbt.data import settings as data_settings
from mbt.models import clstm
from mbt.models import sft


def _data_config():
    data = data_settings.default_dataset_config()
    data.name = "vggsound"
    # Stores 10 fps, 64 px, 2 s clips as generated; the classes are the 6 label names of the
    # CSV (a 6-way head), not the 309 official ones the `tiny` config would give.
    data.builder_config = "tiny_csv_classes"
    # 144 regular clips = 108 train / 36 test, plus 4 edge-case rows: the builder skips the
    # 2 train ones (missing, undecodable file) and keeps the 2 test ones (no audio, clip
    # shorter than its segment), so the built splits hold 108 train / 38 test videos.
    data.synthetic.num_clips = 144
    data.synthetic.num_classes = 6
    data.synthetic.edge_cases = True
    data.num_frames = 4
    data.stride = 2
    data.frame_size = 32
    data.min_resize = 36
    data.audio_seconds = 1.0  # 100 log-mel frames
    data.num_mel_bins = 32
    data.fft_length = 512
    data.spec_augment.enabled = False
    data.rgb_augment.scale_jitter = False
    data.num_test_clips = 2
    data.shuffle_buffer = 128
    return data


def _tiny_mbt():
    model = models.default_mbt_config()
    model.variant = None
    model.hidden_size, model.num_layers, model.num_heads, model.mlp_dim = 32, 2, 2, 64
    model.tokenizers.rgb.patches = (2, 8, 8)  # 2 x 4 x 4 = 32 tokens
    model.tokenizers.spectrogram.patches = (20, 8)  # 5 x 4 = 20 tokens
    model.fusion_layer = 1
    model.n_bottlenecks = 4
    model.stochastic_droplayer_rate = 0.0
    return model


def _tiny_sft():
    model = sft.default_config()
    model.variant = None
    model.hidden_size, model.num_heads, model.mlp_dim = 32, 2, 64
    model.tokenizers = _tiny_mbt().tokenizers.to_dict()  # rgb 2x8x8 tubelets, spec 20x8
    model.n_layers_pre_fusion = 1
    model.n_layers_post_fusion = 1
    model.pool_type = "max"
    model.pool_sizes = {"rgb": 4, "spectrogram": 4}
    model.latent_mixup_alpha = 0.0  # off, as in the MBT-recipe configs
    return model


def _use_sft_authors_recipe(config):
    """The authors' SFT options and optimiser at the demo's size, batch and step count."""
    sft.use_authors_model(config.model, config.dataset)
    config.model.n_layers_pre_fusion = 1
    config.model.n_layers_post_fusion = 1
    config.model.latent_mixup_after_epochs = 11.0  # of 44: their first 5 of 20 epochs
    config.optimizer.weight_decay = 0.0
    config.optimizer.grad_clip_norm = 0.8
    config.lr.schedule = "constant"
    config.lr.base_lr = 1e-3
    config.lr.warmup_steps = 0


def _tiny_clstm():
    model = clstm.default_config()
    model.num_layers = 2
    model.features = (16, 32)
    model.spatial_strides = (4, 2)
    model.fusion_layer = 0
    return model


_TINY_MODELS = {"mbt": _tiny_mbt, "sft": _tiny_sft, "clstm": _tiny_clstm}


def get_config(arg=None):
    arg = recipe.parse_arg(
        arg, model=recipe.MODEL_NAMES, modalities=recipe.MODALITIES, sft_recipe=recipe.SFT_RECIPES
    )
    if arg.sft_recipe != "authors" and arg.model != "sft":
        raise ValueError(f"config argument sft_recipe={arg.sft_recipe} applies to model=sft only")
    config = config_validation.trainer_config()
    config.seed = 0
    config.dataset = _data_config()
    config.model = _TINY_MODELS[arg.model]()
    recipe.set_modalities(config, arg.modalities)

    config.batch_size = 16
    config.eval_batch_size = 16
    config.num_epochs = 0
    config.num_train_steps = 300
    config.optimizer.name = "adamw"
    config.optimizer.weight_decay = 0.0 if arg.model == "clstm" else 1e-4
    config.optimizer.grad_clip_norm = 1.0
    config.lr.schedule = "warmup_cosine"
    config.lr.base_lr = 3e-3
    config.lr.warmup_epochs = None
    config.lr.warmup_steps = 20
    config.label_smoothing = 0.0
    config.mixup.alpha = 0.0
    config.checkpoint.every_steps = 100
    config.log_every_steps = 25
    config.eval_every_steps = 0
    config.final_eval = False  # VGGSound has no validation split: test only
    if arg.model == "sft" and arg.sft_recipe == "authors":
        _use_sft_authors_recipe(config)

    if arg.model == "mbt" and arg.modalities == "av":
        here = os.path.abspath(__file__)
        config.siblings = {
            f"mbt_tiny_{m}": f"{here}:model=mbt,modalities={m}" for m in ("audio", "rgb")
        }
    return config
