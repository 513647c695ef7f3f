"""Tests of `<workdir>/config.json`: written by training, used without --config, checked."""

import glob
import json
import logging
import os
import subprocess
import sys

import ml_collections
import pytest
import train_fixtures

from mbt import checkpointing
from mbt import config_validation
from mbt import siblings
from mbt import train
from mbt import workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Each config file with its default argument and one that swaps the model.
CONFIG_FILES = [
    f"{path}{arg}"
    for path in sorted(glob.glob(os.path.join(REPO, "configs", "*.py")))
    for arg in ("", ":model=sft", ":model=clstm")
]


def _config(**overrides):
    return train_fixtures.tiny_config(
        **{"num_train_steps": 2, "checkpoint.every_steps": 2, "export": False, **overrides}
    )


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: os.path.relpath(p, REPO))
def test_config_json_round_trips(tmp_path, path):
    config = siblings.load_config_file(path)
    workdir_lib.save_config(config, str(tmp_path))
    loaded = workdir_lib.load_config(str(tmp_path))
    assert loaded.to_dict() == config.to_dict()
    config_validation.validate_config(loaded)
    assert workdir_lib.structure_differences(config, loaded) == []
    assert workdir_lib.other_differences(config, loaded) == []
    assert not [name for name in os.listdir(tmp_path) if name != "config.json"]  # no temp file


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("trained"))
    data = train_fixtures.InMemoryData()
    train.train_and_evaluate(_config(), workdir, data)
    return workdir, data


def test_training_writes_the_resolved_config(trained):
    workdir, _ = trained
    with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
        written = json.load(f)
    assert written["num_train_steps"] == 2 and written["model"]["fusion_layer"] == 1
    assert workdir_lib.load_config(workdir).to_dict() == _config().to_dict()


def test_test_mode_without_config_matches_the_test_with_it(trained, caplog):
    workdir, data = trained
    with_config = train.evaluate(_config(), workdir, "test", data)
    loaded = workdir_lib.resolve_config(None, workdir)
    with caplog.at_level(logging.INFO, logger="mbt.train"):
        without_config = train.evaluate(loaded, workdir, "test", data)
    assert without_config == with_config
    # The second test of the same checkpoint says which results it replaced.
    path = os.path.join(workdir, "results_test.json")
    assert any(
        r.getMessage().startswith(f"replacing {path} (mode test at step 2") for r in caplog.records
    ), caplog.text


def test_a_non_structural_override_is_accepted(trained):
    workdir, data = trained
    config = _config(**{"eval_batch_size": 16, "lr.base_lr": 0.01, "model.dropout_rate": 0.1})
    assert workdir_lib.resolve_config(config, workdir) is config
    results = train.evaluate(config, workdir, "evaluate", data)
    assert results["num_views"] == data.meta.num_examples["validation"]


def test_a_structural_override_fails_before_any_restore(trained, monkeypatch):
    workdir, data = trained

    def no_restore(*args, **kwargs):
        raise AssertionError("restored a checkpoint")

    monkeypatch.setattr(checkpointing.Checkpointer, "restore", no_restore)
    config = _config(**{"model.fusion_layer": 2, "optimizer.grad_clip_norm": None})
    with pytest.raises(workdir_lib.ConfigMismatchError) as error:
        workdir_lib.resolve_config(config, workdir)
    message = str(error.value)
    assert "config.model.fusion_layer: workdir has 1, --config gives 2" in message
    assert "config.optimizer.grad_clip_norm: workdir has 1.0, --config gives None" in message
    assert "Drop --config" in message and "new --workdir" in message
    with pytest.raises(workdir_lib.ConfigMismatchError, match="fusion_layer"):
        train.train_and_evaluate(config, workdir, data)


def test_structure_differences_of_the_optimizer():
    sgd = _config(**{"optimizer.name": "sgd"})
    no_momentum = _config(**{"optimizer.name": "sgd", "optimizer.momentum": 0.0})
    other_momentum = _config(**{"optimizer.name": "sgd", "optimizer.momentum": 0.5})
    adamw = _config(**{"optimizer.name": "adamw"})
    assert [k for k, _, _ in workdir_lib.structure_differences(sgd, no_momentum)] == [
        "config.optimizer.momentum"
    ]
    assert workdir_lib.structure_differences(sgd, other_momentum) == []
    assert workdir_lib.structure_differences(sgd, adamw) == [
        ("config.optimizer.name", "sgd", "adamw")
    ]
    assert workdir_lib.structure_differences(sgd, _config(**{"model.remat": True})) == []


def test_an_sft_workdir_from_before_the_authors_options_stays_compatible():
    """A workdir trained before SFT had the authors' keys: its config.json lacks them, and
    the keys take their family defaults (the earlier variant) on both sides."""
    earlier = siblings.load_config_file(
        os.path.join(REPO, "configs", "vggsound.py"), "model=sft,sft_recipe=mbt"
    )
    saved = earlier.to_dict()
    for key in ("sparse_block", "pool_paddings", "pool_k", "latent_mixup", "latent_mixup_layer"):
        del saved["model"][key]
    saved = ml_collections.ConfigDict(saved)
    assert workdir_lib.structure_differences(saved, earlier) == []
    # Pool and mixup settings run without parameters; the attention-only block has fewer.
    runtime = earlier.copy_and_resolve_references()
    runtime.model.pool_type, runtime.model.pool_sizes.rgb = "attn_topk", 4
    runtime.model.latent_mixup_alpha, runtime.model.latent_mixup = 0.3, "any"
    assert workdir_lib.structure_differences(saved, runtime) == []
    authors = siblings.load_config_file(os.path.join(REPO, "configs", "vggsound.py"), "model=sft")
    differing = {k for k, _, _ in workdir_lib.structure_differences(saved, authors)}
    assert "config.model.sparse_block" in differing


def test_input_shape_keys_of_the_dataset_are_structure():
    config = _config()
    frames = _config(**{"dataset.num_frames": 8})
    assert workdir_lib.structure_differences(_config(**{"dataset.num_frames": 4}), frames) == [
        ("config.dataset.num_frames", 4, 8)
    ]
    elsewhere = _config(**{"dataset.data_dir": "/elsewhere", "dataset.shuffle_buffer": 7})
    assert workdir_lib.structure_differences(config, elsewhere) == []


def _run_main(*args):
    return subprocess.run(
        [sys.executable, "-m", "mbt.main", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )


def test_the_command_line_refuses_a_structural_override_naming_the_key(tmp_path):
    workdir = str(tmp_path)
    demo = os.path.join(REPO, "configs", "synthetic.py")
    workdir_lib.save_config(siblings.load_config_file(demo), workdir)
    result = _run_main(
        f"--config={demo}", f"--workdir={workdir}", "--mode=test", "--config.model.fusion_layer=2"
    )
    assert result.returncode != 0
    assert "config.model.fusion_layer: workdir has 1, --config gives 2" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(os.listdir(workdir)) == ["config.json"]  # no data, no checkpoints


def test_the_command_line_without_config_names_the_missing_file(tmp_path):
    result = _run_main(f"--workdir={tmp_path}", "--mode=test")
    assert result.returncode != 0
    assert f"{tmp_path}/config.json does not exist" in result.stderr
    assert "--config=<file.py[:arg]>" in result.stderr
