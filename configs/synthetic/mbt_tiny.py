"""Tiny MBT (audio + rgb) on a synthetic VGGSound-layout copy: the no-download demo.

    python -m mbt.main --config=configs/synthetic/mbt_tiny.py --workdir=/tmp/mbt_demo

`mbt.data.pipeline.prepare_dataset` writes and builds the synthetic copy in the workdir
(6 classes = 3 colour gratings x 2 tones; `mbt.data.synthetic`), the model trains on CPU in
a few minutes, and then the sibling configs `mbt_tiny_audio.py` and `mbt_tiny_rgb.py` (the
same model on one modality) train in `<workdir>/mbt_tiny_audio` and `<workdir>/mbt_tiny_rgb`
on the same data; a table of their test top-1 ends the run. Single modalities are capped
by construction (rgb sees only the grating: ~1/2; audio only the tone: ~1/3).
"""

import os

from mbt import config_validation
from mbt import models
from mbt.data import pipeline

SIBLINGS = ("mbt_tiny_audio.py", "mbt_tiny_rgb.py")


def get_config(arg=None):
    del arg
    config = config_validation.trainer_config()
    config.seed = 0

    config.dataset = pipeline.default_dataset_config()
    data = config.dataset
    data.name = "vggsound"
    data.builder_config = "tiny"  # stores 10 fps, 64 px, 2 s clips as generated
    data.modalities = ("rgb", "spectrogram")
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

    config.model = models.default_mbt_config()
    model = config.model
    model.modalities = ("rgb", "spectrogram")
    model.variant = None
    model.hidden_size, model.num_layers, model.num_heads, model.mlp_dim = 32, 2, 2, 64
    model.tokenizers.rgb.patches = (2, 8, 8)  # 2 x 4 x 4 = 32 tokens
    model.tokenizers.spectrogram.patches = (20, 8)  # 5 x 4 = 20 tokens
    model.fusion_layer = 1
    model.n_bottlenecks = 4
    model.stochastic_droplayer_rate = 0.0

    config.batch_size = 16
    config.eval_batch_size = 16
    config.num_epochs = 0
    config.num_train_steps = 300
    config.optimizer.name = "adamw"
    config.optimizer.weight_decay = 1e-4
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

    here = os.path.dirname(os.path.abspath(__file__))
    config.siblings = tuple(os.path.join(here, name) for name in SIBLINGS)
    return config
