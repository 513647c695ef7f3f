"""Mesh, path-regex sharding rules, and the same losses on meshes (1,1), (8,1), (4,2)."""

import jax
import numpy as np
import pytest
import train_fixtures
from jax.sharding import PartitionSpec as P

from mbt import models
from mbt import sharding
from mbt import train

_BLOCK = "Transformer/encoderblock_3_spectrogram/"
_RULES = models.get_family("mbt").partition_rules


def test_mesh_shape_resolution_and_errors():
    assert sharding.resolve_mesh_shape(None, 8) == (8, 1)
    assert sharding.resolve_mesh_shape((-1, 2), 8) == (4, 2)
    assert sharding.resolve_mesh_shape((2, 2), 8) == (2, 2)  # a subset of the devices
    with pytest.raises(ValueError, match="mesh_shape"):
        sharding.resolve_mesh_shape((3, -1), 8)
    with pytest.raises(ValueError, match="needs 16 devices"):
        sharding.resolve_mesh_shape((8, 2), 8)
    with pytest.raises(ValueError, match="2 entries"):
        sharding.resolve_mesh_shape((8,), 8)
    mesh = sharding.make_mesh((4, 2))
    assert mesh.axis_names == ("data", "model") and dict(mesh.shape) == {"data": 4, "model": 2}


@pytest.mark.parametrize(
    "path, shape, expected",
    [
        (
            _BLOCK + "MultiHeadDotProductAttention_0/query/kernel",
            (64, 4, 16),
            (None, "model", None),
        ),
        (_BLOCK + "MultiHeadDotProductAttention_0/value/bias", (4, 16), ("model", None)),
        (_BLOCK + "MultiHeadDotProductAttention_0/out/kernel", (4, 16, 64), ("model", None, None)),
        (_BLOCK + "MlpBlock_0/Dense_0/kernel", (64, 256), (None, "model")),
        (_BLOCK + "MlpBlock_0/Dense_0/bias", (256,), ("model",)),
        (_BLOCK + "MlpBlock_0/Dense_1/kernel", (256, 64), ("model", None)),
        (_BLOCK + "MlpBlock_0/Dense_1/bias", (64,), (None,)),
        (_BLOCK + "LayerNorm_1/scale", (64,), (None,)),
        ("output_projection/kernel", (64, 10), (None, None)),
        ("bottleneck", (1, 5, 64), (None, None, None)),
        # Optimiser state follows its parameter: the path ends the same way.
        ("opt_state/1/0/trace/" + _BLOCK + "MlpBlock_0/Dense_0/kernel", (64, 256), (None, "model")),
        # 3 heads do not split over 2 devices: replicated.
        (_BLOCK + "MultiHeadDotProductAttention_0/key/kernel", (48, 3, 16), (None, None, None)),
    ],
)
def test_model_parallel_rules(path, shape, expected):
    mesh = sharding.make_mesh((4, 2))
    assert sharding.spec_for(path, shape, mesh, rules=_RULES) == P(*expected)


def test_fsdp_shards_the_largest_free_dimension_over_data():
    mesh = sharding.make_mesh((4, 2))
    mlp = _BLOCK + "MlpBlock_0/Dense_0/kernel"
    assert sharding.spec_for(mlp, (64, 256), mesh, fsdp=True, fsdp_min_size=1, rules=_RULES) == P(
        "data", "model"
    )
    assert sharding.spec_for(
        "embedding/kernel", (2, 16, 16, 3, 64), mesh, fsdp=True, fsdp_min_size=1, rules=_RULES
    ) == P(None, None, None, None, "data")
    # Small arrays and indivisible dimensions stay replicated.
    assert sharding.spec_for("encoder_norm/scale", (64,), mesh, fsdp=True, rules=_RULES) == P(None)
    assert sharding.spec_for(
        "cls", (1, 1, 63), mesh, fsdp=True, fsdp_min_size=1, rules=_RULES
    ) == P(None, None, None)
    # Without a 'model' axis the model rules do nothing; FSDP alone shards over 'data'.
    data_only = sharding.make_mesh((8, 1))
    assert sharding.spec_for(mlp, (64, 256), data_only, rules=_RULES) == P(None, None)
    assert sharding.spec_for(
        mlp, (64, 256), data_only, fsdp=True, fsdp_min_size=1, rules=_RULES
    ) == P(None, "data")


def _mesh_config(mesh_shape, fsdp):
    # One layer (bottleneck fusion from layer 0) keeps the three compiles short.
    return train_fixtures.tiny_config(
        **{
            "mesh_shape": mesh_shape,
            "fsdp": fsdp,
            "fsdp_min_size": 256,
            "lr.warmup_steps": 0,
            "mixup.alpha": 0.5,
            "mixup.mixmod": True,
            "label_smoothing": 0.1,
            "model.num_layers": 1,
            "model.fusion_layer": 0,
            "model.dropout_rate": 0.1,
            "model.stochastic_droplayer_rate": 0.1,
        }
    )


def test_same_seed_gives_the_same_losses_on_every_mesh_shape():
    data = train_fixtures.InMemoryData()
    batches = [b for _, b in zip(range(3), data.batches("train", "train", 16, seed=0))]
    splits = train.resolve_splits(_mesh_config((8, 1), False), data)
    initial = None
    runs = {}
    for mesh_shape, fsdp in (((1, 1), False), ((8, 1), False), ((4, 2), True)):
        setup = train.Setup(_mesh_config(mesh_shape, fsdp), data.meta, splits)
        if initial is None:
            initial = jax.device_get(setup.init())  # one init compile, resharded below
        state = jax.device_put(initial, setup.state_shardings)
        losses = []
        for step, batch in enumerate(batches, start=1):
            state, metrics = setup.run_train_step(state, batch, step)
            losses.append(float(metrics["loss"]))
        runs[mesh_shape] = (losses, jax.device_get(state.params), setup)
    reference_losses, reference_params, _ = runs[(1, 1)]
    assert len(set(reference_losses)) == 3  # the steps really differ
    for mesh_shape, (losses, params, _) in runs.items():
        np.testing.assert_allclose(losses, reference_losses, rtol=2e-5, err_msg=str(mesh_shape))
        for a, b in zip(
            jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(reference_params)
        ):
            np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4, err_msg=str(mesh_shape))
    # The (4, 2) FSDP run really split parameters over both axes, optimiser state included.
    specs = [tuple(s.spec) for s in jax.tree_util.tree_leaves(runs[(4, 2)][2].state_shardings)]
    assert any("model" in spec for spec in specs) and any("data" in spec for spec in specs)
    assert any(spec == ("data", "model", None) for spec in specs)


def test_uncovered_arrays_are_listed_and_warned_once(caplog):
    mesh = sharding.make_mesh((4, 2))
    tree = {
        "step": np.zeros((), np.int32),
        "params": {"mystery/kernel": np.zeros((4, 4)), "output_projection": {"bias": np.zeros(3)}},
        # A rule of another rank does not cover the array.
        "odd": {"MlpBlock_0": {"Dense_0": {"kernel": np.zeros((2, 4, 4))}}},
    }
    uncovered = sharding.uncovered_paths(tree, _RULES)
    assert uncovered == ["odd/MlpBlock_0/Dense_0/kernel", "params/mystery/kernel"]
    with caplog.at_level("WARNING", logger="mbt.sharding"):
        shardings = sharding.tree_shardings(tree, mesh, rules=_RULES)
    warnings = [r for r in caplog.records if "match no partition rule" in r.getMessage()]
    assert len(warnings) == 1 and "params/mystery/kernel" in warnings[0].getMessage()
    assert tuple(shardings["params"]["mystery/kernel"].spec) == (None, None)
