"""The README's run command, as a user runs it: the embedded demo, end to end, run once.

`python -m mbt.main --config=configs/synthetic.py --workdir=DIR` generates and builds the
synthetic VGGSound-layout copy in the workdir, trains the audio+rgb MBT, tests it on 2 clips
per video, exports it, trains its audio-only and rgb-only siblings on the same copy and
prints the comparison. The synthetic classes need both modalities, so fusion must win clearly
(about 1 to 1.5 minutes on 2 CPU cores). The tests below read what that one run left behind:
the table, the results files, the saved config, the export (through `mbt.predict`), and a
`--mode=test` without `--config`, as the README's real-data example does.
"""

import contextlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mbt import predict
from mbt import train
from mbt import workdir as workdir_lib
from mbt.pretrained import default_init_from_config
from mbt.pretrained import formats
from mbt.pretrained import init_from
from mbt.pretrained import train_state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIBLINGS = ("mbt_tiny_audio", "mbt_tiny_rgb")
# configs/synthetic.py: 144 regular clips, every 4th a test clip (36), plus the 2 test-split
# edge-case rows the builder keeps (no audio; shorter than its segment); 2 clips per video.
TEST_VIDEOS, TEST_CLIPS_PER_VIDEO = 38, 2


def _main(*flags: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, as a user
    return subprocess.run(
        [sys.executable, "-m", "mbt.main", *flags],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def _json(*parts: str) -> dict:
    with open(os.path.join(*parts), encoding="utf-8") as f:
        return json.load(f)


def _top1_by_run(table: str) -> dict[str, float]:
    rows = [line.split("|")[1:-1] for line in table.strip().splitlines()[2:]]
    return {cells[0].strip(): float(cells[1]) for cells in rows}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo command's workdir, its stdout and its stderr (the logs)."""
    workdir = str(tmp_path_factory.mktemp("demo") / "mbt_demo")
    result = _main("--config=configs/synthetic.py", f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, result.stdout, result.stderr


def test_demo_command_shows_fusion_beating_each_single_modality(demo):
    workdir, stdout, logs = demo
    with open(os.path.join(workdir, "comparison.md"), encoding="utf-8") as f:
        table = f.read()
    assert table.strip() in stdout  # printed, not only written, and where it was written
    assert f"(written to {os.path.join(workdir, 'comparison.md')})" in stdout
    assert f"tensorboard --logdir={workdir}" in stdout + logs
    # The deliberately broken clips are announced before the builder warns about them.
    assert "deliberately broken rows (missing_file, no_audio" in stdout + logs
    lines = table.strip().splitlines()
    assert lines[0] == "| run | top1 | map |"
    top1 = _top1_by_run(table)
    assert list(top1) == [
        "rgb+spectrogram (this config)",
        "spectrogram (mbt_tiny_audio)",
        "rgb (mbt_tiny_rgb)",
    ]
    fused = top1["rgb+spectrogram (this config)"]
    audio, rgb = top1["spectrogram (mbt_tiny_audio)"], top1["rgb (mbt_tiny_rgb)"]
    # One modality alone tells apart at most 1/2 (rgb) or 1/3 (audio) of the classes.
    assert audio <= 0.5 and rgb <= 0.6, table
    assert fused >= 0.9 and fused > max(audio, rgb) + 0.3, table


def test_demo_builds_its_copy_in_the_workdir_and_tests_every_view(demo):
    workdir, _, _ = demo
    saved = _json(workdir, "config.json")
    # prepare_dataset generated the media and built the TFDS copy inside the workdir.
    assert os.path.isdir(os.path.join(workdir, "synthetic_src"))
    assert os.path.isdir(os.path.join(workdir, "tfds", "vggsound"))
    results = _json(workdir, "results_test.json")
    assert results["split"] == "test" and results["mode"] == "test"
    assert results["step"] == saved["num_train_steps"]
    metrics = results["metrics"]
    assert metrics["num_examples"] == TEST_VIDEOS
    assert metrics["num_views"] == TEST_VIDEOS * TEST_CLIPS_PER_VIDEO  # no padding counted
    for name in SIBLINGS:
        sibling = _json(workdir, name, "results_test.json")["metrics"]
        assert sibling["num_examples"] == TEST_VIDEOS
        # The siblings read the main run's copy instead of generating their own.
        assert not os.path.exists(os.path.join(workdir, name, "synthetic_src"))


def test_demo_export_is_read_by_predict_with_nothing_else(demo):
    workdir, _, _ = demo
    clip = next(
        os.path.join(root, name)
        for root, _, names in sorted(os.walk(os.path.join(workdir, "synthetic_src")))
        for name in sorted(names)
        if name.endswith(".mp4")
    )
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = predict.main(["--workdir", workdir, "--json", "--top_k", "2", clip])
    assert code == 0
    record = json.loads(out.getvalue().strip().splitlines()[-1])
    assert record["file"] == clip and len(record["top_k"]) == 2


def test_demo_workdir_tests_again_without_config(demo):
    workdir, _, _ = demo
    trained = _json(workdir, "results_test.json")["metrics"]
    os.remove(os.path.join(workdir, "results_test.json"))
    retested = _main(f"--workdir={workdir}", "--mode=test")
    assert retested.returncode == 0, retested.stderr[-3000:]
    assert _json(workdir, "results_test.json")["metrics"] == trained


def test_a_trained_workdir_initialises_fine_tuning_from_its_last_checkpoint(demo):
    """`config.init_from.checkpoint_path` naming an mbt workdir (as for fine-tuning a trained
    MBT on another dataset): the last checkpoint's parameters are loaded, the head left fresh."""
    workdir, _, _ = demo
    config = workdir_lib.load_config(workdir)
    last = os.path.join(workdir, "checkpoints", str(config.num_train_steps))
    stored = train_state.read_params(workdir)
    assert (stored.path, stored.location, stored.step) == (
        os.path.join(last, "state"),
        "params",
        config.num_train_steps,
    )
    assert train_state.locate(last) == train_state.locate(os.path.dirname(last)) == stored.path
    assert formats.detect_format(workdir) == "scenic"  # an MBT train state
    # The export, written by another path (flax msgpack) after the last step, holds the same.
    exported = train_state.read_params(os.path.join(workdir, "export", "params.msgpack"))
    assert exported.location == ""  # a bare params tree
    checkpoint_flat = formats.flatten(stored.params)
    assert sorted(checkpoint_flat) == sorted(formats.flatten(exported.params))
    for path, value in formats.flatten(exported.params).items():
        np.testing.assert_array_equal(checkpoint_flat[path], value, err_msg=path)

    config.init_from = default_init_from_config()
    config.init_from.checkpoint_path = workdir
    fresh = {k: np.zeros_like(v) for k, v in checkpoint_flat.items()}
    params, report = init_from(config, formats.unflatten(fresh))
    for path, value in formats.flatten(params).items():
        head = path.startswith("output_projection/")
        np.testing.assert_array_equal(value, fresh[path] if head else checkpoint_flat[path])
    counts = {category: len(paths) for category, paths in report.by_category().items()}
    assert counts["loaded"] == len(fresh) - 2 and counts["fresh"] == 2, report.summary()
    assert report.unused_checkpoint_keys == ["output_projection/bias", "output_projection/kernel"]


def test_random_input_has_the_shapes_the_pipeline_gives_the_demo(demo):
    """`config.dataset.random_input` stands in for the data at the shapes the pipeline makes."""
    workdir, _, _ = demo
    config = workdir_lib.load_config(workdir)
    real = train.PipelineData(config, workdir).meta  # finds the copy the run built
    config.dataset.random_input.enabled = True
    stand_in = train.data_source(config, workdir).meta
    assert stand_in.input_shapes == real.input_shapes and stand_in.modalities == real.modalities
    assert stand_in.multi_label == real.multi_label
