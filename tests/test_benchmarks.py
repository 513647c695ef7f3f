"""The benchmark scripts' building blocks (`mbt.tools.bench`) and the fusion-mode benchmark
(`scripts/benchmark_fusion.py`) on the tiny workload, one timed step."""

import jax
import numpy as np
import pytest
import script_fixtures

from mbt import models
from mbt.tools import bench


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
