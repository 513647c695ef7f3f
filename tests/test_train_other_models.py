"""SFT and the C-LSTM through the same trainer and robustness mode as MBT (in-memory data)."""

import json
import math
import os

import pytest
import train_fixtures

from mbt import robustness
from mbt import train
from mbt.models import clstm


def _sft_model_config():
    config = train_fixtures.tiny_sft_model_config()
    config.stochastic_droplayer_rate = 0.0
    return config


def _clstm_model_config():
    config = clstm.default_config()
    config.update(num_layers=2, features=(4, 8), spatial_strides=(2, 2), fusion_layer=0)
    return config


@pytest.mark.parametrize(
    "model_name, make_model_config", [("sft", _sft_model_config), ("clstm", _clstm_model_config)]
)
def test_trains_tests_and_runs_robustness(model_name, make_model_config, tmp_path):
    config = train_fixtures.tiny_config(
        **{
            "num_train_steps": 12,
            "checkpoint.every_steps": 12,
            "eval_every_steps": 0,
            "log_every_steps": 4,
            "export": False,
        }
    )
    config.model = make_model_config()
    config.optimizer.name = "adamw"
    config.lr.base_lr = 3e-3
    data = train_fixtures.InMemoryData()
    workdir = str(tmp_path)
    setup = train.get_setup(config, data)
    batch = setup.device_batch(next(data.batches("train", "train", 16, seed=0)), train._TRAIN_KEYS)
    no_mixing = {m: 1.0 for m in config.model.modalities}
    _, first = setup.train_step(setup.init(), batch, no_mixing)

    result = train.train_and_evaluate(config, workdir, data)
    assert result["step"] == 12 and not result["stopped_early"]
    with open(os.path.join(workdir, "results_test.json")) as f:
        saved = json.load(f)["metrics"]
    assert saved["num_examples"] == 10 and saved["num_views"] == 20
    assert math.isfinite(saved["loss"])
    # Trained: the loss on the first training batch is below its value at initialisation.
    _, after = setup.train_step(result["final_state"], batch, no_mixing)
    assert float(after["loss"]) < float(first["loss"])

    report = robustness.run_robustness(config, workdir, data, snrs_db=(0.0,), plot=False)
    names = [c["name"] for c in report["conditions"]]
    assert names[0] == "clean" and "both noise 0 dB" in names and "no audio (zeros)" in names
    assert ("no audio (dropped tokens)" in names) == (model_name == "sft")
    clean = report["conditions"][0]["metrics"]
    assert clean["num_examples"] == 10
    for row in report["conditions"]:
        assert math.isfinite(row["metrics"]["loss"]), row["name"]
    assert os.path.exists(os.path.join(workdir, "robustness.md"))
