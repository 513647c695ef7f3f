"""A dataset defined outside the package: a spec + TFDS builder in a module of the test's own.

The module (written to `tmp_path`, found through `config.dataset.imports`) registers a
two-class toy dataset with a synthetic generator; `train_and_evaluate` generates, builds,
trains, tests and exports it without any file of mbt naming it.
"""

import json
import os
import sys

import pytest
import toy_dataset_fixtures

from mbt import config_validation
from mbt import export
from mbt import train
from mbt.data import pipeline
from mbt.data import registry

MODULE = toy_dataset_fixtures.MODULE


@pytest.fixture
def toy_module(tmp_path, monkeypatch):
    yield toy_dataset_fixtures.install_toy_module(tmp_path / "src", monkeypatch)
    sys.modules.pop(MODULE, None)


def test_a_dataset_from_config_imports_trains_and_tests(toy_module, tmp_path):
    with pytest.raises(ValueError, match="toy_sounds.*config.dataset.imports"):
        registry.get("toy_sounds")  # not registered before its module is imported
    workdir = str(tmp_path / "run")
    config = toy_dataset_fixtures.toy_config()
    config_validation.validate_config(config)

    result = train.train_and_evaluate(config, workdir)

    assert result["step"] == 4
    assert "toy_sounds" in registry.names()
    assert registry.get("toy_sounds").builder == f"{MODULE}:ToySounds"
    meta = pipeline.get_dataset_meta(config)
    assert meta.class_names == ("low", "high") and not meta.multi_label
    assert meta.num_examples == {"train": 12, "test": 4}
    with open(os.path.join(workdir, "results_test.json")) as f:
        saved = json.load(f)
    assert saved["split"] == "test"
    assert saved["metrics"]["num_examples"] == 4 and saved["metrics"]["num_views"] == 8
    # The export read the toy builder's config for how the frames were stored.
    assert export.decode_settings(config) == {"video_fps": 10.0, "short_side": None}
    assert os.path.isfile(os.path.join(workdir, "export", export.META_FILE))
    assert MODULE in sys.modules
