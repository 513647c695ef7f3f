"""The README's run command, as a user runs it: the embedded demo and its comparison table.

`python -m mbt.main --config=configs/synthetic.py --workdir=DIR` generates and builds
the synthetic copy, trains the audio+rgb MBT and its audio-only and rgb-only siblings, and
prints the comparison. The synthetic classes need both modalities, so fusion must win clearly
(about 1 to 1.5 minutes on 2 CPU cores). Then, as the README's real-data example does,
`--mode=test` on that workdir without `--config` (its config.json) repeats the test metrics.
"""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _top1_by_run(table: str) -> dict[str, float]:
    rows = [line.split("|")[1:-1] for line in table.strip().splitlines()[2:]]
    return {cells[0].strip(): float(cells[1]) for cells in rows}


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


def _test_metrics(workdir: str) -> dict:
    with open(os.path.join(workdir, "results_test.json"), encoding="utf-8") as f:
        return json.load(f)["metrics"]


def test_demo_command_shows_fusion_beating_each_single_modality(tmp_path):
    workdir = str(tmp_path / "mbt_demo")
    result = _main("--config=configs/synthetic.py", f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(workdir, "comparison.md")) as f:
        table = f.read()
    assert table.strip() in result.stdout  # printed, not only written
    top1 = _top1_by_run(table)
    fused = top1["rgb+spectrogram (this config)"]
    audio, rgb = top1["spectrogram (mbt_tiny_audio)"], top1["rgb (mbt_tiny_rgb)"]
    # One modality alone tells apart at most 1/2 (rgb) or 1/3 (audio) of the classes.
    assert audio <= 0.5 and rgb <= 0.6, table
    assert fused >= 0.9 and fused > max(audio, rgb) + 0.3, table

    # The workdir remembers its config: test it again without --config.
    trained = _test_metrics(workdir)
    os.remove(os.path.join(workdir, "results_test.json"))
    retested = _main(f"--workdir={workdir}", "--mode=test")
    assert retested.returncode == 0, retested.stderr[-3000:]
    assert _test_metrics(workdir) == trained
