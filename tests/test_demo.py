"""The README's run command, as a user runs it: the embedded demo and its comparison table.

`python -m mbt.main --config=configs/synthetic.py --workdir=DIR` generates and builds
the synthetic copy, trains the audio+rgb MBT and its audio-only and rgb-only siblings, and
prints the comparison. The synthetic classes need both modalities, so fusion must win clearly
(about 1 to 1.5 minutes on 2 CPU cores).
"""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _top1_by_run(table: str) -> dict[str, float]:
    rows = [line.split("|")[1:-1] for line in table.strip().splitlines()[2:]]
    return {cells[0].strip(): float(cells[1]) for cells in rows}


def test_demo_command_shows_fusion_beating_each_single_modality(tmp_path):
    workdir = str(tmp_path / "mbt_demo")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, as a user
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mbt.main",
            "--config=configs/synthetic.py",
            f"--workdir={workdir}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
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
