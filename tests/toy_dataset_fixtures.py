"""The toy dataset of tests: a spec + TFDS builder in a module written by the test itself.

`TOY_MODULE` registers `toy_sounds`, two classes with a synthetic generator that writes no
media files (the builder makes the frames and tones), so it builds quickly.
`install_toy_module` writes it to a folder on `sys.path` for one test; `toy_config()` is the
tiny model on it (config.dataset.imports names the module).
"""

import sys
import textwrap

import train_fixtures

from mbt.data import pipeline
from mbt.data import registry

MODULE = "toy_sounds_dataset"

TOY_MODULE = textwrap.dedent('''
    """Toy Sounds: class 0 = dark frames + 300 Hz tone, class 1 = bright frames + 2 kHz."""

    import dataclasses
    import inspect
    import json
    import os

    import numpy as np
    import tensorflow_datasets as tfds
    from etils import epath

    from mbt.data import registry

    CLASSES = ("low", "high")
    SPLITS = ("train", "test")


    def generate(out_dir, num_clips, *, seed, num_classes, frame_size, fps, clip_seconds,
                 edge_cases):
        """The 'manual dir': clips.json with one row per clip (every 4th is a test clip)."""
        rows = [
            {"id": f"clip{i:03d}", "label": i % 2, "split": "test" if i % 4 == 3 else "train"}
            for i in range(num_clips)
        ]
        path = os.path.join(out_dir, "clips.json")
        with open(path, "w") as f:
            json.dump(rows, f)
        counts = {s: sum(r["split"] == s for r in rows) for s in SPLITS}
        return {"root": out_dir, "files": {"clips": path}, "num_classes": 2,
                "counts": counts, "edge_cases": []}


    @dataclasses.dataclass(eq=False)
    class ToySoundsConfig(tfds.core.BuilderConfig):
        fps: float = 10.0
        short_side: int | None = None


    class ToySounds(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")
        BUILDER_CONFIGS = [ToySoundsConfig(name="default")]
        MANUAL_DOWNLOAD_INSTRUCTIONS = "Written by generate()."

        @tfds.core.utils.classproperty
        @classmethod
        def code_path(cls):
            return epath.Path(inspect.getfile(cls))  # TFDS 4.9.10 workaround, as base.py

        def _info(self):
            # DatasetInfo itself: dataset_info_from_configs looks for a package's metadata.
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict({
                    "rgb": tfds.features.Video(shape=(None, None, None, 3),
                                               encoding_format="jpeg"),
                    "audio": tfds.features.Tensor(shape=(None,), dtype=np.float32),
                    "label": tfds.features.ClassLabel(names=CLASSES),
                })
            )

        def _split_generators(self, dl_manager):
            with open(os.path.join(dl_manager.manual_dir, "clips.json")) as f:
                rows = json.load(f)
            return {s: self._generate_examples([r for r in rows if r["split"] == s])
                    for s in SPLITS}

        def _generate_examples(self, rows):
            t = np.arange(2 * 16000) / 16000
            for r in rows:
                c = r["label"]
                rgb = np.full((20, 16, 16, 3), 40 + 170 * c, np.uint8)  # 2 s at 10 fps
                tone = 0.5 * np.sin(2 * np.pi * (300.0, 2000.0)[c] * t)
                yield r["id"], {"rgb": rgb, "audio": tone.astype(np.float32), "label": c}


    registry.register(registry.DatasetSpec(
        name="toy_sounds",
        builder=f"{__name__}:ToySounds",
        default_splits=("train", "test", "test"),
        label_kind=registry.SINGLE_LABEL,
        num_classes=2,
        default_fps=10.0,
        synthetic=f"{__name__}:generate",
    ))
''')


def install_toy_module(src_dir, monkeypatch) -> str:
    """Writes the module to `src_dir`, puts that on sys.path and leaves the registry as it was
    after the test (monkeypatch undoes each: our registry and TFDS's). Returns the module name."""
    src_dir.mkdir(exist_ok=True)
    (src_dir / f"{MODULE}.py").write_text(TOY_MODULE)
    monkeypatch.syspath_prepend(str(src_dir))
    registry.names()  # the built-in specs, registered for good
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    # TFDS refuses a second class named ToySounds, which a later test's fresh import makes.
    from tensorflow_datasets.core import registered

    monkeypatch.setattr(registered, "_DATASET_REGISTRY", dict(registered._DATASET_REGISTRY))
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    return MODULE


def toy_config():
    """4 steps of batch 8 on 16 toy clips (12 train, 4 test), checkpoints every 2 steps."""
    config = train_fixtures.tiny_config(num_train_steps=4, batch_size=8, eval_batch_size=8)
    config.checkpoint.every_steps = 2
    config.log_every_steps = 2
    config.dataset = pipeline.default_dataset_config()
    data = config.dataset
    data.name = "toy_sounds"
    data.imports = (MODULE,)
    data.modalities = ("rgb", "spectrogram")
    data.num_frames, data.stride = 4, 2  # [4, 16, 16, 3] as train_fixtures.RGB_SHAPE
    data.frame_size, data.min_resize = 16, 16
    data.audio_seconds = 0.32  # 32 log-mel frames x 16 bins: train_fixtures.SPEC_SHAPE
    data.num_mel_bins, data.fft_length = 16, 512
    data.spec_augment.enabled = False
    data.rgb_augment.scale_jitter = False
    data.num_test_clips = 2
    data.synthetic.update(num_clips=16, edge_cases=False)
    return config
