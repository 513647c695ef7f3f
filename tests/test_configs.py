"""Every config file loads and validates; the paper recipe is what the configs hold; config
errors name the key and the allowed values (also from the command line, before any work)."""

import glob
import os
import subprocess
import sys

import ml_collections
import pytest
import train_fixtures

from mbt import config_validation
from mbt import siblings
from mbt import train
from mbt.data import pipeline
from mbt.data import registry
from mbt.data import settings as data_settings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.py"), recursive=True))
_MODELS = ("model=mbt", "model=sft", "model=clstm")
_SFT_MBT = ("model=sft,sft_recipe=mbt",)
# Arguments the config files document, beyond their default.
ARGS = {
    "audioset.py": _MODELS
    + _SFT_MBT
    + (
        "split=500k",
        "split=full",
        "split=500k,modalities=audio",
        "model=sft,modalities=rgb",
        "model=clstm,split=full",
        "specaug=scenic",
    ),
    "vggsound.py": _MODELS
    + _SFT_MBT
    + ("modalities=audio", "model=sft,modalities=rgb", "specaug=scenic"),
    "epic_kitchens.py": _MODELS + _SFT_MBT + ("modalities=audio", "model=clstm,modalities=rgb"),
    "synthetic.py": _MODELS
    + _SFT_MBT
    + ("modalities=audio", "modalities=rgb", "model=sft,modalities=rgb"),
    "sounding_objects.py": _MODELS + ("modalities=audio", "modalities=rgb"),
}


def _relative(path):
    return os.path.relpath(path, os.path.join(REPO, "configs"))


def test_the_config_tree_has_the_expected_files():
    names = {_relative(p) for p in CONFIG_FILES}
    assert names == {
        "audioset.py",
        "vggsound.py",
        "epic_kitchens.py",
        "synthetic.py",
        "sounding_objects.py",
    }
    # Every built-in dataset has a config file (scenic_tfrecord's is a user's own).
    datasets = {n for n in registry.names() if registry.get(n).builder}
    assert {os.path.splitext(p)[0] for p in names} >= datasets


@pytest.mark.parametrize("path", CONFIG_FILES, ids=_relative)
def test_every_config_loads_and_validates(path):
    for arg in (None,) + ARGS.get(_relative(path), ()):
        config = siblings.load_config_file(path, arg)
        config_validation.validate_config(config, mesh_shape=(8, 1))
        pipeline.dataset_values(config)  # the pipeline accepts the dataset section
        assert set(config.model.modalities) <= set(config.dataset.modalities)


def test_b16_configs_hold_the_paper_recipe():
    for name in ("audioset.py", "vggsound.py", "epic_kitchens.py"):
        c = siblings.load_config_file(os.path.join(REPO, "configs", name))
        assert (c.optimizer.name, c.optimizer.momentum, c.optimizer.grad_clip_norm) == (
            "sgd",
            0.9,
            1.0,
        ), name
        assert (c.lr.schedule, c.lr.base_lr, c.lr.warmup_epochs) == ("warmup_cosine", 0.5, 2.5)
        assert (c.batch_size, c.label_smoothing, c.mixup.alpha, c.mixup.mixmod) == (
            64,
            0.3,
            0.5,
            True,
        )
        m = c.model
        assert (m.variant, m.fusion, m.fusion_layer, m.n_bottlenecks) == (
            "B/16",
            "bottleneck",
            8,
            4,
        )
        assert m.stochastic_droplayer_rate == 0.3 and m.tokenizers.rgb.patches == (2, 16, 16)
        d = c.dataset
        assert (d.audio_seconds, d.num_test_clips, d.num_frames, d.stride) == (8.0, 4, 32, 2)
        assert c.init_from.checkpoint_path is None  # set to the ImageNet-21k ViT-B/16 npz
    mini = siblings.load_config_file(os.path.join(REPO, "configs", "audioset.py"), "split=mini")
    assert (mini.dataset.train_split, mini.num_epochs) == ("balanced_train", 50.0)
    as500k = siblings.load_config_file(
        os.path.join(REPO, "configs", "audioset.py"), "split=500k,modalities=audio"
    )
    assert as500k.dataset.train_split == "subset"
    assert as500k.model.modalities == as500k.dataset.modalities == ("spectrogram",)


def _flat(config):
    out = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, (dict, ml_collections.ConfigDict)):
                walk(value, f"{prefix}{key}.")
            else:
                out[prefix + key] = value

    walk(config.to_dict(), "")
    return out


def test_tiny_siblings_differ_only_in_their_modality():
    main = siblings.load_config_file(os.path.join(REPO, "configs", "synthetic.py"))
    assert list(main.siblings) == ["mbt_tiny_audio", "mbt_tiny_rgb"]
    for path, modality in zip(main.siblings.values(), ("spectrogram", "rgb")):
        sibling = _flat(siblings.load_config_file(path))
        differing = {k for k, v in _flat(main).items() if sibling.get(k) != v}
        assert differing == {
            "siblings.mbt_tiny_audio",
            "siblings.mbt_tiny_rgb",
            "model.modalities",
            "dataset.modalities",
        }
        assert sibling["model.modalities"] == (modality,)


def test_model_argument_swaps_the_model_and_keeps_the_dataset_recipe():
    path = os.path.join(REPO, "configs", "vggsound.py")
    mbt, sft, clstm = (
        siblings.load_config_file(path, f"model={m}") for m in ("mbt", "sft", "clstm")
    )
    assert (mbt.model.name, sft.model.name, clstm.model.name) == ("mbt", "sft", "clstm")
    assert sft.dataset.to_dict() == mbt.dataset.to_dict() == clstm.dataset.to_dict()
    assert (clstm.optimizer.name, clstm.lr.base_lr) == ("adamw", 1e-3)
    # SFT: the authors' recipe (yding37/sft run.sh) and model options.
    assert (sft.optimizer.name, sft.optimizer.weight_decay, sft.optimizer.grad_clip_norm) == (
        "adamw",
        0.0,
        0.8,
    )
    assert (sft.lr.schedule, sft.lr.base_lr, sft.lr.warmup_steps) == ("constant", 1e-3, 0)
    assert (sft.batch_size, sft.num_epochs, sft.label_smoothing, sft.mixup.alpha) == (24, 20, 0, 0)
    assert (sft.model.sparse_block, sft.model.pool_type, sft.model.pool_k) == (
        "attention",
        "max",
        1,
    )
    # rgb: one window over the clip (one token); spectrogram: 0.64 s = 4 rows of 8 patches.
    assert dict(sft.model.pool_sizes) == {"rgb": 0, "spectrogram": 32}
    assert (sft.model.latent_mixup, sft.model.latent_mixup_alpha) == ("any", 0.3)
    assert (sft.model.latent_mixup_lambdas, sft.model.latent_mixup_partner) == (
        "per_sample",
        "permutation",
    )
    assert sft.model.latent_mixup_after_epochs == 5.0
    audio = siblings.load_config_file(path, "model=sft,modalities=audio")
    assert audio.model.modalities == audio.dataset.modalities == ("spectrogram",)
    assert dict(audio.model.pool_sizes) == {"spectrogram": 32}
    # sft_recipe=mbt: the earlier SFT-B/16 in MBT's SGD recipe.
    earlier = siblings.load_config_file(path, "model=sft,sft_recipe=mbt")
    assert earlier.optimizer.to_dict() == mbt.optimizer.to_dict()
    assert (earlier.batch_size, earlier.mixup.to_dict()) == (mbt.batch_size, mbt.mixup.to_dict())
    assert dict(earlier.model.pool_sizes) == {"rgb": 16, "spectrogram": 16}
    assert (earlier.model.sparse_block, earlier.model.latent_mixup_alpha) == ("encoder", 0.0)
    assert earlier.model.stochastic_droplayer_rate == mbt.model.stochastic_droplayer_rate


def test_spec_augment_argument_gives_the_paper_or_the_scenic_recipe():
    path = os.path.join(REPO, "configs", "audioset.py")
    paper = siblings.load_config_file(path).dataset.spec_augment
    assert (paper.num_freq_masks, paper.max_freq_width) == (1, 48)
    assert (paper.num_time_masks, paper.max_time_width, paper.time_warp_max_frames) == (1, 192, 0)
    scenic = siblings.load_config_file(path, "specaug=scenic,model=sft").dataset.spec_augment
    assert (scenic.num_freq_masks, scenic.max_freq_width, scenic.num_time_masks) == (1, 48, 0)
    # Scenic's time warp values, which Lingvo's max ratio 0 switches off.
    assert (scenic.time_warp_max_frames, scenic.time_warp_max_ratio) == (1, 0.0)
    for spec_augment in (paper, scenic):
        params = data_settings.spec_augment_settings(spec_augment)
        assert params is not None and not params.time_warp_enabled


@pytest.mark.parametrize(
    "arg, message",
    [
        ("model=vit", r"config argument model=.vit.; allowed: mbt, clstm, sft"),
        ("split=2m", r"config argument split='2m'; allowed: mini, 500k, full"),
        ("mini", r"config argument 'mini' in 'mini': expected key=value"),
        (
            "size=b",
            r"expected key=value with key one of "
            r"\['modalities', 'model', 'sft_recipe', 'specaug', 'split'\]",
        ),
        ("specaug=park", r"config argument specaug='park'; allowed: paper, scenic"),
        ("model=mbt,sft_recipe=mbt", r"sft_recipe=mbt applies to model=sft only"),
    ],
)
def test_bad_config_arguments_name_the_key_and_the_allowed_values(arg, message):
    with pytest.raises(ValueError, match=message):
        siblings.load_config_file(os.path.join(REPO, "configs", "audioset.py"), arg)


def test_configs_import_the_recipe_and_load_nothing_by_path():
    for path in CONFIG_FILES:
        with open(path) as f:
            text = f.read()
        assert "importlib" not in text and "spec_from_file_location" not in text, path


def _broken(**overrides):
    return train_fixtures.tiny_config(**overrides)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model.name": "vit"}, r"config.model.name='vit'; allowed: \[.*'mbt'"),
        (
            {"dataset.name": "kinetics"},
            r"config.dataset.name='kinetics' is not a registered dataset; known: "
            r"\('audioset', 'epic_kitchens', 'scenic_tfrecord', 'sounding_objects', 'vggsound'\).*"
            r"config.dataset.imports",
        ),
        ({"model.fusion_layer": 3}, r"config.model.fusion_layer=3; allowed: integers 0..2"),
        (
            {"dataset.modalities": ("spectrogram",)},
            r"config.model.modalities=\('rgb', 'spectrogram'\) is invalid; allowed: a subset of "
            r"the modalities the dataset provides \('spectrogram',\)",
        ),
        ({"batch_size": 12}, r"config.batch_size=12 is invalid; allowed: a positive multiple of 8"),
        (
            {"grad_accum_steps": 4, "batch_size": 16},
            r"config.batch_size=16 .* multiple of 32 "
            r"\(the data-parallel size 8 x grad_accum_steps 4",
        ),
        (
            {"optimizer.name": "lamb"},
            r"config.optimizer.name='lamb' is invalid; allowed: 'sgd', "
            r"'adamw'",
        ),
        ({"lr.schedule": "step"}, r"config.lr.schedule='step'"),
        ({"label_smoothing": 1.5}, r"config.label_smoothing=1.5"),
        ({"num_train_steps": 0, "num_epochs": 0}, r"config.num_train_steps=0"),
        ({"lr.base_lr": float("inf")}, r"config.lr.base_lr=inf .*a finite learning rate >= 0"),
        ({"lr.base_lr": float("nan")}, r"config.lr.base_lr=nan"),
        ({"lr.end_lr": -1.0}, r"config.lr.end_lr=-1.0"),
        ({"checkpoint.keep": 0}, r"config.checkpoint.keep=0 .*an integer >= 1"),
        (
            {"dataset.spec_augment": {"enabled": True, "time_warp_bound": "linear"}},
            r"config.dataset.spec_augment.time_warp_bound='linear'; allowed: static, dynamic",
        ),
        ({"dataset.train_fraction": 0.0}, r"config.dataset.train_fraction=0.0 .*in \(0, 1\]"),
        ({"dataset.train_fraction": 1.5}, r"config.dataset.train_fraction=1.5"),
    ],
)
def test_config_errors_name_the_key_and_the_allowed_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        config_validation.validate_config(_broken(**overrides), mesh_shape=(8, 1))


def test_epochs_count_passes_over_the_training_fraction():
    meta = train_fixtures.InMemoryData(num_train=64).meta
    config = _broken(num_train_steps=0, num_epochs=2.0)  # batch 16
    assert train.num_train_steps(config, meta, "train") == 8
    config.dataset.train_fraction = 0.25  # 16 examples: 2 epochs = 2 steps
    assert train.num_train_steps(config, meta, "train") == 2
    config.num_train_steps = 5  # an explicit step count wins
    assert train.num_train_steps(config, meta, "train") == 5


def test_modalities_are_checked_against_what_the_dataset_provides():
    config = _broken()
    meta = train_fixtures.InMemoryData().meta
    config_validation.validate_config(config, meta, mesh_shape=(8, 1))
    rgb_only = meta.__class__(**{**meta.__dict__, "modalities": ("rgb",)})
    with pytest.raises(ValueError, match=r"provides \('rgb',\).*\['spectrogram'\] are not"):
        config_validation.validate_config(config, rgb_only, mesh_shape=(8, 1))


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.model.fusion_layer=7", "config.model.fusion_layer=7; allowed: integers 0..2"),
        # conftest gives the subprocess 8 devices; mesh_shape (-1, 1) puts them all on 'data'.
        (
            "--config.batch_size=12",
            "config.batch_size=12 is invalid; allowed: a positive multiple of 8",
        ),
    ],
)
def test_the_command_line_rejects_a_bad_config_before_reading_data(tmp_path, override, message):
    result = _main_with(tmp_path, override)
    assert result.returncode != 0
    assert message in result.stderr
    assert not os.path.exists(str(tmp_path / "run"))


def test_a_misspelt_override_is_one_line_naming_the_key_and_the_likely_one(tmp_path):
    result = _main_with(tmp_path, "--config.model.fusion_layr=3")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) <= 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "--config.model.fusion_layr=3" in lines[-1]
    assert "no such key" in lines[-1] and 'Did you mean "fusion_layer"' in lines[-1]


def _main_with(tmp_path, override):
    """`python -m mbt.main` on configs/synthetic.py with one override, in a subprocess."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mbt.main",
            "--config=configs/synthetic.py",
            f"--workdir={tmp_path / 'run'}",
            override,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )


def test_command_line_overrides_reach_siblings_except_their_own_keys():
    sibling = siblings.load_config_file(
        os.path.join(REPO, "configs", "synthetic.py"), "modalities=audio"
    )
    # The flat dotted form is what config_flags.get_override_values returns.
    siblings.apply_overrides(
        sibling,
        {
            "num_train_steps": 7,
            "model.fusion_layer": 2,
            "dataset.synthetic.num_clips": 12,
            "model.modalities": ("rgb", "spectrogram"),
            "siblings": {"x": "x.py"},
        },
    )
    assert (sibling.num_train_steps, sibling.model.fusion_layer) == (7, 2)
    assert sibling.dataset.synthetic.num_clips == 12
    assert sibling.model.modalities == ("spectrogram",) and not sibling.siblings
