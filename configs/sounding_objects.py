"""The sounding-objects benchmark: a task only audio-visual fusion solves, on a CPU.

    python -m mbt.main --config=configs/sounding_objects.py --workdir=/tmp/so_mbt
    python -m mbt.main --config=configs/sounding_objects.py:modalities=rgb --workdir=/tmp/so_rgb

Argument `key=value,...` (every key optional; the first value is the default):
  model       'mbt' | 'sft' | 'clstm' (sizes below)
  modalities  'av' | 'audio' | 'rgb'

`mbt.data.pipeline.prepare_dataset` writes the clips (`mbt.data.builders.sounding_objects`:
4 object types, 2 shown per clip, the sound follows one of them; label = the sounding one)
into `<workdir>/synthetic_src` and builds them with the TFDS builder. Chance: rgb alone and
late fusion 1/2, audio alone 1/4; a model whose modalities interact can reach ~1.0.

Inputs: 8 frames of 32 x 32 at 10 fps (0.8 s) and the 0.8 s of audio from the same instant
as 80 x 16 log-mel; training windows start at random frames of the 3.2 s clips.
Models (AdamW, lr 2e-3 with warm-up and cosine decay, batch 64):
- mbt: ViT width 64, 4 layers, 4 heads; one rgb token per frame (tubelets 1 x 32 x 32) and one
  audio token per frame (patches 10 x 16); bottleneck fusion from layer 1, 4 bottlenecks.
- sft: the same tokens; 1 unimodal block, max-pooling by 2 per modality, 3 joint blocks.
- clstm: 2 ConvLSTM layers (16, 32 channels, strides 4, 2), fused at the input.
"""

from mbt import config_validation
from mbt import models
from mbt import recipe
from mbt.data import settings as data_settings
from mbt.models import clstm
from mbt.models import sft

NUM_TRAIN_STEPS = 2000


def _data_config():
    data = data_settings.default_dataset_config()
    data.name = "sounding_objects"
    data.synthetic.num_clips = 3000  # 2400 train / 600 test clips
    data.synthetic.num_classes = 4
    data.synthetic.frame_size = 32
    data.synthetic.fps = 10.0
    data.synthetic.clip_seconds = 3.2
    data.synthetic.edge_cases = False
    data.num_frames = 8
    data.stride = 1
    data.frame_size = 32
    data.min_resize = 32
    data.audio_seconds = 0.8  # 80 log-mel frames, the span of the 8 frames
    data.num_mel_bins = 16
    data.fft_length = 512
    data.spec_augment.enabled = False
    data.rgb_augment.random_flip = False  # objects have fixed places
    data.rgb_augment.scale_jitter = False
    data.num_test_clips = 2
    data.shuffle_buffer = 512
    return data


def _mbt():
    model = models.default_mbt_config()
    model.variant = None
    model.hidden_size, model.num_layers, model.num_heads, model.mlp_dim = 64, 4, 4, 128
    model.tokenizers.rgb.patches = (1, 32, 32)  # one token per frame
    model.tokenizers.spectrogram.patches = (10, 16)  # one token per 0.1 s
    model.fusion = "bottleneck"
    model.fusion_layer = 1
    model.n_bottlenecks = 4
    model.stochastic_droplayer_rate = 0.0
    return model


def _sft():
    model = sft.default_config()
    model.variant = None
    model.hidden_size, model.num_heads, model.mlp_dim = 64, 4, 128
    model.tokenizers = _mbt().tokenizers.to_dict()
    model.n_layers_pre_fusion = 1
    model.n_layers_post_fusion = 3
    model.pool_type = "max"
    model.pool_sizes = {"rgb": 2, "spectrogram": 2}
    model.latent_mixup_alpha = 0.0
    return model


def _clstm():
    model = clstm.default_config()
    model.num_layers = 2
    model.features = (16, 32)
    model.spatial_strides = (4, 2)
    model.fusion_layer = 0
    return model


_MODELS = {"mbt": _mbt, "sft": _sft, "clstm": _clstm}


def get_config(arg=None):
    arg = recipe.parse_arg(arg, model=recipe.MODEL_NAMES, modalities=recipe.MODALITIES)
    config = config_validation.trainer_config()
    config.seed = 0
    config.dataset = _data_config()
    config.model = _MODELS[arg.model]()
    recipe.set_modalities(config, arg.modalities)

    config.batch_size = 64
    config.eval_batch_size = 64
    config.num_epochs = 0
    config.num_train_steps = NUM_TRAIN_STEPS
    config.optimizer.name = "adamw"
    config.optimizer.weight_decay = 1e-4
    config.optimizer.grad_clip_norm = 1.0
    config.lr.schedule = "warmup_cosine"
    config.lr.base_lr = 2e-3
    config.lr.warmup_epochs = None
    config.lr.warmup_steps = 200
    config.label_smoothing = 0.0
    config.mixup.alpha = 0.0
    config.checkpoint.every_steps = 500
    config.log_every_steps = 100
    config.eval_every_steps = 0
    config.final_eval = False  # train and test splits only
    return config
