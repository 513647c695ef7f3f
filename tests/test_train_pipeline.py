"""End to end on the real input pipeline: the tiny synthetic config, its siblings and the table.

`configs/synthetic.py` with fewer clips and steps: `prepare_dataset` generates and
builds the VGGSound-layout copy, the audio+rgb model trains, tests on 2 clips per video, then
the audio-only and rgb-only siblings train on the same copy and the comparison table is
written. (The full demo's accuracies are in docs/training.md.)
"""

import contextlib
import io
import json
import os

import train_fixtures  # noqa: F401  (sys.path: tests/)

from mbt import predict
from mbt import siblings
from mbt import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tiny_config_trains_tests_and_compares_siblings_on_synthetic_data(tmp_path):
    workdir = str(tmp_path)
    config = siblings.load_config_file(os.path.join(REPO, "configs", "synthetic.py"))
    overrides = {
        "num_train_steps": 4,
        "batch_size": 8,
        "eval_batch_size": 8,
        "checkpoint": {"every_steps": 2},
        "log_every_steps": 2,
        "dataset": {"synthetic": {"num_clips": 24, "edge_cases": False}},
    }
    siblings.apply_overrides(config, overrides)

    result = train.train_and_evaluate(config, workdir)
    assert result["step"] == 4
    # prepare_dataset built the copy in the workdir and pointed the config at it.
    assert config.dataset.data_dir == os.path.join(workdir, "tfds")
    with open(os.path.join(workdir, "results_test.json")) as f:
        saved = json.load(f)
    assert saved["split"] == "test" and saved["mode"] == "test"
    assert saved["metrics"]["num_examples"] == 6  # every 4th of 24 clips is a test clip
    assert saved["metrics"]["num_views"] == 12  # 2 test clips per video, no padding
    assert 0.0 <= saved["metrics"]["top1"] <= 1.0

    # The run exported an inference bundle that `mbt.predict` reads with nothing else.
    clip = next(
        os.path.join(root, name)
        for root, _, names in os.walk(os.path.join(workdir, "synthetic_src"))
        for name in sorted(names)
        if name.endswith(".mp4")
    )
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = predict.main(["--workdir", workdir, "--json", "--top_k", "2", clip])
    assert code == 0
    record = json.loads(out.getvalue().strip().splitlines()[-1])
    assert record["file"] == clip and len(record["top_k"]) == 2

    table = siblings.train_siblings(config, workdir, result, overrides)
    lines = table.strip().splitlines()
    assert lines[0] == "| run | top1 | map |"
    assert [line.split("|")[1].strip() for line in lines[2:]] == [
        "rgb+spectrogram (this config)",
        "spectrogram (mbt_tiny_audio)",
        "rgb (mbt_tiny_rgb)",
    ]
    for name in ("mbt_tiny_audio", "mbt_tiny_rgb"):
        with open(os.path.join(workdir, name, "results_test.json")) as f:
            assert json.load(f)["metrics"]["num_examples"] == 6
        # The siblings read the main run's copy instead of generating their own.
        assert not os.path.exists(os.path.join(workdir, name, "synthetic_src"))
    with open(os.path.join(workdir, "comparison.md")) as f:
        assert f.read() == table
