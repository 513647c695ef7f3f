"""Audio-only sibling of `mbt_tiny.py` (log-mel spectrogram): same tiny model and data.

    python -m mbt.main --config=configs/synthetic/mbt_tiny_audio.py --workdir=/tmp/mbt_demo_audio

Run on its own it prepares its own synthetic copy; `mbt_tiny.py` trains it after the
audio+rgb model on the copy it already built.
"""

import importlib.util
import os


def _base_config_module():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mbt_tiny.py")
    spec = importlib.util.spec_from_file_location("mbt_tiny_base_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config(arg=None):
    config = _base_config_module().get_config(arg)
    config.model.modalities = ("spectrogram",)
    config.dataset.modalities = ("spectrogram",)
    config.siblings = ()
    return config
