"""The benchmark scripts' building blocks (`mbt.tools.bench`), the fusion-mode benchmark
(`scripts/benchmark_fusion.py`) on the tiny workload, one timed step, and the model benchmark
(`scripts/benchmark_model.py`, in a subprocess: its absl flags clash with the fusion one's), the
attention check (`scripts/check_attention.py`), and the Scenic comparison's error without a
Scenic checkout."""

import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
import script_fixtures

from mbt import models
from mbt import siblings
from mbt.tools import bench
from mbt.tools import flops


@pytest.mark.parametrize("name", sorted(bench.PRESETS))
def test_every_preset_is_a_valid_mbt_workload(name):
    config = bench.preset_config(name)
    models.validate_model_config(config.model)
    num_layers = models.resolve_sizes(config.model).num_layers
    assert config.model.fusion_layer == (num_layers // 2 if name in ("tiny", "small") else 8)
    with pytest.raises(ValueError, match=r"preset 'huge'; allowed"):
        bench.preset_config("huge")


def test_time_interleaved_alternates_the_calls():
    order = []

    def call(name):
        return lambda: order.append(name) or np.zeros(())

    medians = bench.time_interleaved({"a": (call("a"), ()), "b": (call("b"), ())}, steps=3)
    assert set(medians) == {"a", "b"} and all(t >= 0 for t in medians.values())
    assert order == ["a", "b"] * 4  # one warm-up each, then a, b alternating


def test_fusion_benchmark_rows_gflops_and_ratios_on_the_tiny_workload():
    fusion = script_fixtures.load_script("benchmark_fusion")
    config = bench.preset_config("tiny")
    rows = fusion.row_configs(config.model, [0])
    assert list(rows) == ["late", "bottleneck Lf=0", "concat Lf=0", "cross Lf=0"]
    assert rows["late"].fusion_layer == 2 and rows["cross Lf=0"].fusion == "cross"

    results = fusion.run(config, [0], batch_size=2, steps=1)
    table = fusion.table(results)
    assert len(table) == 2 + len(rows)
    late = results["late"]
    assert table[2].startswith("| late | ") and table[2].count("| 1.00 |") == 4
    # Every exchange between the modalities costs compute on top of late fusion.
    for name in ("bottleneck Lf=0", "concat Lf=0", "cross Lf=0"):
        assert results[name]["gflops"] > late["gflops"], name
    for result in results.values():
        assert result["train_s"] > 0 and result["forward_s"] > 0
        assert result["train_compile_s"] > 0
        grads = jax.tree_util.tree_leaves(result["train"][0](*result["train"][1])[1])
        assert all(np.isfinite(np.asarray(g)).all() for g in grads)


def test_mbt_b16_preset_is_the_audioset_configs_model_at_its_input_shapes():
    preset = bench.preset_config("mbt_b16")
    audioset = siblings.load_config_file(
        os.path.join(script_fixtures.REPO, "configs", "audioset.py")
    )
    assert preset.model.to_dict() == audioset.model.to_dict()
    assert flops.input_shapes_from_config(preset) == flops.input_shapes_from_config(audioset)
    assert flops.input_shapes_from_config(preset) == {
        "rgb": (32, 224, 224, 3),
        "spectrogram": (800, 128, 1),
    }


def _run_script(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, os.path.join("scripts", script), *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        cwd=script_fixtures.REPO,
        timeout=300,
    )


def test_check_attention_compares_every_path_that_runs_here_with_a_float32_reference():
    sizes = ("--tokens=9", "--context_tokens=4", "--hidden_size=32", "--num_heads=4")
    result = _run_script("check_attention.py", "--dtype=float32", *sizes)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = re.findall(
        r"^\| (self|cross) \| (\w+) \| (\S+) \| (\S+) \| (\S+) \|$", result.stdout, re.M
    )
    assert sorted({(case, path) for case, path, *_ in rows}) == [
        ("cross", "einsum"),
        ("cross", "fused"),
        ("self", "einsum"),
        ("self", "fused"),
    ]
    assert all(float(e) < 1e-5 for *_, out, gp, gx in rows for e in (out, gp, gx))
    assert "(no cudnn: the backend is 'cpu', not an NVIDIA GPU)" in result.stdout
    assert "PASS: largest relative error" in result.stdout
    # bfloat16 is far from the float32 reference: a tolerance under that error fails, exit 1
    failed = _run_script("check_attention.py", "--dtype=bfloat16", "--tolerance=1e-6", *sizes)
    assert failed.returncode == 1 and "FAIL: largest relative error" in failed.stdout


def test_accelerator_checks_script_parses():
    script = os.path.join(script_fixtures.REPO, "scripts", "accelerator_checks.sh")
    assert subprocess.run(["bash", "-n", script]).returncode == 0


def _benchmark_model(*args: str) -> str:
    result = _run_script("benchmark_model.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_model_benchmark_reports_model_flops_and_peak_unknown_mfu_on_cpu():
    out = _benchmark_model("--steps=1", "--batch_size=2")
    config = bench.preset_config("tiny")
    macs = models.get_family("mbt").analytic_macs(
        config.model, flops.input_shapes_from_config(config), flops.num_classes_from_config(config)
    )
    train_tflop = bench.step_flops(macs.total, 2, train=True) / 1e12
    printed = re.search(r"model FLOPs per training step: (\S+) TFLOP", out)
    assert printed and float(printed.group(1)) == pytest.approx(train_tflop, rel=1e-3)
    assert "device peak, float32 dense: peak unknown for 'cpu'" in out
    achieved = re.search(
        r"MFU: peak unknown for 'cpu' \(achieved TFLOP/s, fwd\+bwd: "
        r"einsum (\S+), fused (\S+)\)",
        out,
    )
    assert achieved and all(float(x) > 0 for x in achieved.groups()), out
    assert "peak device memory: n/a" in out
    assert re.search(r"^\| fused \| .* \| unknown \|$", out, flags=re.MULTILINE)
    # no cuDNN on a CPU: neither the default paths nor any compiled program has its kernel
    assert "attention paths: einsum, fused\n" in out
    assert (
        "cuDNN attention calls in the compiled program, forward / forward+backward: "
        "einsum 0 / 0, fused 0 / 0" in out
    )
    assert re.search(r"time / einsum time, forward, forward\+backward: fused \d", out)


def test_model_benchmark_stops_after_the_flops_of_mbt_b16_without_compiling():
    out = _benchmark_model(
        "--preset=mbt_b16", "--dtype=bfloat16", "--batch_size=8", "--stop_after=flops"
    )
    assert "dtype: bfloat16" in out and "(32, 224, 224, 3)" in out
    assert "analytic GFLOPs/example (1 multiply-add = 1 FLOP): 489.1" in out
    assert "model FLOPs per training step: 23.48 TFLOP" in out
    assert "device peak, bfloat16 dense: peak unknown for 'cpu'" in out
    assert "MFU" not in out and "| fused |" not in out  # nothing compiled or timed


def test_scenic_comparison_names_the_missing_checkout(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join("scripts", "compare_scenic.py"), f"--scenic_dir={tmp_path}"],
        capture_output=True,
        text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        cwd=script_fixtures.REPO,
        timeout=300,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"--scenic_dir={tmp_path}: no scenic/projects/mbt/model.py there; pass the root of a "
        "checkout of https://github.com/google-research/scenic"
    )


def test_measure_memory_counts_the_children_and_passes_their_exit_status_on():
    # A parent holding little, and a child of it holding 400 MiB of written pages.
    child = "import numpy, sys, time; x = numpy.ones(50 * 2**20); time.sleep(1.5); sys.exit(3)"
    parent = (
        "import subprocess, sys; "
        f"sys.exit(subprocess.run([sys.executable, '-c', {child!r}]).returncode)"
    )
    result = subprocess.run(
        [sys.executable, "scripts/measure_memory.py", sys.executable, "-c", parent],
        cwd=script_fixtures.REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 3, result.stderr
    pss = float(re.search(r"peak PSS of the process tree ([\d.]+) GiB", result.stdout).group(1))
    assert 0.39 <= pss < 2.0, result.stdout
    largest = float(re.search(r"largest process peak RSS ([\d.]+) GiB", result.stdout).group(1))
    assert 0.39 <= largest <= pss + 0.1, result.stdout  # the child, alone
    # What the tree held at its peak: both interpreters, the child (400 MiB) first.
    held = re.findall(r"at the peak: ([\d.]+) GiB pid \d+ (.*)", result.stdout)
    assert len(held) == 2 and float(held[0][0]) >= 0.39 and "numpy.ones" in held[0][1], held
    assert abs(sum(float(g) for g, _ in held) - pss) <= 0.02, result.stdout
    # Both interpreters' start and the child's 400 MiB of writes.
    cpu = float(re.search(r"\| CPU ([\d.]+) s \|", result.stdout).group(1))
    assert 0.1 <= cpu < 10, result.stdout
