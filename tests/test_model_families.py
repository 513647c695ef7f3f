"""Model families (`mbt.models.family`): lookup, one set of defaults, and one train step of
every family on a (4, 2) mesh with every parameter covered by a partition rule."""

import dataclasses

import jax
import ml_collections
import numpy as np
import pytest
import train_fixtures

from mbt import models
from mbt import sharding
from mbt import train
from mbt.models import mbt as mbt_lib

FAMILIES = ("mbt", "sft", "clstm")


def _tiny(name):
    """`models.default_config(name)` shrunk to the train fixtures' 4×16×16 rgb, 32×16 audio."""
    config = models.default_config(name)
    if name == "clstm":
        # Strided convolutions, so the `downsample` rules are exercised too.
        config.update(
            num_layers=2, features=(4, 8), spatial_strides=(2, 2), downsample="conv", fusion_layer=1
        )
        return config
    config.variant = None
    config.hidden_size, config.num_heads, config.mlp_dim = 16, 2, 32
    config.tokenizers.rgb.patches = (2, 8, 8)
    config.tokenizers.spectrogram.patches = (8, 8)
    config.stochastic_droplayer_rate = 0.0
    if name == "sft":
        config.n_layers_pre_fusion, config.n_layers_post_fusion = 1, 1
        config.pool_sizes = {"rgb": 2, "spectrogram": 2}
    else:
        config.num_layers, config.fusion_layer, config.n_bottlenecks = 2, 1, 2
    return config


def test_get_family_finds_every_family_and_lists_them_for_an_unknown_name():
    assert set(FAMILIES) <= set(models.known_names())
    for name in FAMILIES:
        assert models.get_family(name).name == name
        assert models.default_config(name).name == name
    with pytest.raises(ValueError, match=r"'nope'.*'clstm', 'mbt', 'sft'"):
        models.get_family("nope")
    # A module of the package without a family is not one either.
    with pytest.raises(ValueError, match=r"config.model.name='vit'; allowed: \['clstm'"):
        models.build_model(models.default_config("mbt").to_dict() | {"name": "vit"}, 3)


@pytest.mark.parametrize("name", FAMILIES)
def test_missing_keys_take_the_family_defaults(name):
    """A config holding only the name builds the same module as the full default config."""
    full = models.build_model(models.default_config(name), 3)
    assert models.build_model({"name": name}, 3) == full
    defaults = models.default_config(name)
    for field in dataclasses.fields(full):
        value = defaults.get(field.name)
        if (
            field.name != "name"
            and value is not None
            and not isinstance(value, (tuple, dict, ml_collections.ConfigDict))
        ):
            assert getattr(full, field.name) == (str(value) if field.name == "dtype" else value)


def test_mbt_module_defaults_agree_with_the_family_defaults():
    defaults = models.default_config("mbt")
    assert (defaults.fusion_layer, defaults.stochastic_droplayer_rate) == (8, 0.3)
    config = _tiny("mbt")
    del config["fusion_layer"], config["stochastic_droplayer_rate"]
    config.num_layers = 8
    model = models.build_model(config, 3)
    assert model.fusion_layer == 8 and model.stochastic_droplayer_rate == 0.3
    for field in dataclasses.fields(mbt_lib.FusionEncoder):
        if (
            field.name in defaults
            and field.name != "name"
            and field.default is not dataclasses.MISSING
        ):
            assert field.default == defaults[field.name], field.name


def test_errors_name_the_key_the_value_and_the_allowed_values():
    config = _tiny("mbt")
    config.fusion = "sum"
    with pytest.raises(ValueError, match=r"config.model.fusion='sum'; allowed: .*bottleneck"):
        models.validate_model_config(config)
    config = _tiny("clstm")
    config.downsample = "stride"
    with pytest.raises(ValueError, match=r"config.model.downsample='stride'; allowed"):
        models.validate_model_config(config)


@pytest.mark.parametrize("name", FAMILIES)
def test_one_train_step_on_a_4x2_mesh_with_every_parameter_covered(name):
    config = train_fixtures.tiny_config(
        **{"mesh_shape": (4, 2), "lr.warmup_steps": 0, "fsdp": False}
    )
    config.model = _tiny(name)
    data = train_fixtures.InMemoryData()
    setup = train.Setup(config, data.meta, train.resolve_splits(config, data))

    rules = sharding.rules_for(config.model)
    assert rules == models.get_family(name).partition_rules
    assert sharding.uncovered_paths(setup.abstract_state, rules) == []
    specs = {
        sharding.path_to_str(path): tuple(s.spec)
        for path, s in jax.tree_util.tree_leaves_with_path(setup.params_shardings)
    }
    split = [p for p, spec in specs.items() if p.endswith("kernel") and "model" in spec]
    assert split, specs

    state = setup.init()
    batch = next(data.batches("train", "train", config.batch_size, seed=0))
    state, metrics = setup.run_train_step(state, batch, 1)
    assert np.isfinite(float(metrics["loss"])) and int(state.step) == 1
    # The optimiser state follows its parameter onto the 'model' axis.
    opt_specs = [
        tuple(s.spec)
        for path, s in jax.tree_util.tree_leaves_with_path(setup.state_shardings.opt_state)
        if sharding.path_to_str(path).endswith(split[0])
    ]
    assert all(spec == specs[split[0]] for spec in opt_specs)
