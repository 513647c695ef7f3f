"""Scenic MBT checkpoints: both train-state layouts round-trip, config inference, mismatch errors,
and fine-tuning initialisation through `init_from`. Checkpoints are written inside the tests with
`flax.serialization.msgpack_serialize`, and by flax's own `save_checkpoint` (orbax or msgpack, as
Scenic's `save_checkpoint` writes them)."""

import functools

import flax
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import serialization
from flax.training import checkpoints as flax_checkpoints

from mbt import models
from mbt.pretrained import default_init_from_config
from mbt.pretrained import formats
from mbt.pretrained import init_from
from mbt.pretrained import scenic_checkpoint
from mbt.pretrained import train_state

D, HEADS, MLP, LAYERS, CLASSES = 16, 2, 32, 3, 5
INPUT_SHAPES = {"rgb": (4, 16, 16, 3), "spectrogram": (32, 16, 1), "flow": (4, 16, 16, 2)}
SHAPE_KEYS = (
    "modalities",
    "hidden_size",
    "num_layers",
    "num_heads",
    "mlp_dim",
    "fusion",
    "fusion_layer",
    "n_bottlenecks",
    "share_encoder",
    "classifier",
    "representation_size",
)


def tiny_config(**overrides):
    config = models.default_mbt_config()
    config.variant = None
    config.hidden_size, config.num_heads, config.mlp_dim, config.num_layers = D, HEADS, MLP, LAYERS
    config.tokenizers.rgb.patches = (2, 8, 8)
    config.tokenizers.spectrogram.patches = (8, 8)
    config.fusion_layer = 1
    config.stochastic_droplayer_rate = 0.0
    config.update(overrides)
    return config


def param_shapes(model_config, num_classes=CLASSES):
    shapes = {m: INPUT_SHAPES[m] for m in model_config.modalities}
    return scenic_checkpoint.expected_param_shapes(model_config, num_classes, shapes)


def random_params(model_config, num_classes=CLASSES, seed=0):
    rng = np.random.default_rng(seed)
    return formats.unflatten(
        {
            k: (0.3 * rng.normal(size=s)).astype(np.float32)
            for k, s in param_shapes(model_config, num_classes).items()
        }
    )


def write_scenic_checkpoint(directory, params, step, layout):
    """What Scenic's `save_checkpoint` writes: the train state as msgpack `checkpoint_<step>`."""
    if layout == "optimizer/target":  # flax.optim era
        state = {
            "global_step": step,
            "optimizer": {"target": params, "state": {"step": step}},
            "model_state": {},
            "accum_train_time": 1.5,
        }
    else:  # optax era
        momentum = jax.tree.map(np.zeros_like, params)
        state = {
            "global_step": step,
            "params": params,
            "opt_state": {"0": {"trace": momentum}},
            "model_state": {},
            "rng": np.zeros(2, np.uint32),
        }
    directory.mkdir(exist_ok=True)
    path = directory / f"checkpoint_{step}"
    path.write_bytes(serialization.msgpack_serialize(state))
    return path


def make_inputs(model_config, seed=1):
    rng = np.random.default_rng(seed)
    return {
        m: rng.normal(size=(2,) + INPUT_SHAPES[m]).astype(np.float32)
        for m in model_config.modalities
    }


@functools.cache
def jitted_apply(model):
    """One compile per distinct model (flax modules with equal fields hash equal)."""
    return jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))


def logits_of(model, params, inputs):
    return np.asarray(jitted_apply(model)(params, inputs))


@pytest.fixture(scope="module")
def writer():
    """A bottleneck MBT (rgb tubelets + spectrogram), its random params and logits."""
    config = tiny_config()
    params = random_params(config)
    model = models.build_model(config, CLASSES)
    inputs = make_inputs(config)
    return config, params, inputs, logits_of(model, params, inputs)


@pytest.mark.parametrize("layout", ["optimizer/target", "params"])
def test_round_trip_both_layouts_gives_the_writers_logits_and_config(tmp_path, writer, layout):
    config, params, inputs, logits = writer
    path = write_scenic_checkpoint(tmp_path / "ckpt", params, 120, layout)
    checkpoint = scenic_checkpoint.read_scenic_checkpoint(str(tmp_path / "ckpt"))
    assert (checkpoint.location, checkpoint.step, checkpoint.path) == (layout, 120, str(path))
    assert formats.detect_format(str(path)) == "scenic"

    # Hints: only what the shapes cannot tell, plus the non-shape keys of the writer.
    hints = {"fusion_layer": 1, "stochastic_droplayer_rate": 0.0}
    restored = scenic_checkpoint.load_scenic_mbt(str(tmp_path / "ckpt"), hints=hints)
    for key in SHAPE_KEYS:
        assert restored.model_config[key] == config[key], key
    for m in config.modalities:
        for key in ("kind", "patches"):
            assert tuple(np.atleast_1d(restored.model_config.tokenizers[m][key])) == tuple(
                np.atleast_1d(config.tokenizers[m][key])
            )
    assert restored.num_classes == CLASSES and restored.step == 120
    assert restored.inferred.token_counts == {"rgb": 8, "spectrogram": 8}
    assert restored.inferred.from_hints == ["fusion_layer"]
    assert "[4, 16, 16, 3]" in restored.inferred.input_shape_hints["rgb"]
    assert restored.model == models.build_model(config, CLASSES)
    jax.tree.map(np.testing.assert_array_equal, restored.params, params)
    np.testing.assert_allclose(
        logits_of(restored.model, restored.params, inputs), logits, rtol=1e-5, atol=1e-5
    )


def test_restoring_with_the_writers_full_config(tmp_path, writer):
    config, params, _, _ = writer
    write_scenic_checkpoint(tmp_path, params, 5, "params")
    restored = scenic_checkpoint.load_scenic_mbt(
        str(tmp_path), config, CLASSES, input_shapes=INPUT_SHAPES
    )
    assert restored.model_config is config


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (dict(fusion="concat", fusion_layer=2), dict(fusion="concat", fusion_layer=2)),
        (dict(fusion="concat", fusion_layer=0, share_encoder=True), None),  # asks fusion/layer
        (
            dict(classifier="gap", representation_size=7, n_bottlenecks=3),
            dict(classifier="gap", representation_size=7, n_bottlenecks=3),
        ),
        (dict(share_encoder=True), dict(share_encoder=True, fusion="bottleneck")),
        (
            dict(modalities=("rgb", "spectrogram", "flow"), fusion="concat", fusion_layer=1),
            dict(modalities=("rgb", "flow", "spectrogram"), fusion="concat", fusion_layer=1),
        ),
    ],
)
def test_inferred_config_from_shapes(overrides, expected):
    config = tiny_config(**overrides)
    if "flow" in config.modalities:
        config.tokenizers.flow = {"kind": "3d_conv", "patches": (2, 8, 8)}
    params = random_params(config)
    if expected is None:
        with pytest.raises(
            ValueError, match=r"config\.model\.fusion .*config\.model\.fusion_layer"
        ):
            scenic_checkpoint.infer_model_config(params)
        return
    hints = {} if "fusion_layer" in expected else {"fusion_layer": config.fusion_layer}
    inferred = scenic_checkpoint.infer_model_config(params, hints)
    for key, value in expected.items():
        assert inferred.model[key] == value, key
    for key in ("hidden_size", "num_layers", "num_heads", "mlp_dim"):
        assert inferred.model[key] == config[key]
    assert inferred.num_classes == CLASSES
    if "fusion_layer" in expected:
        assert "fusion_layer" not in inferred.from_hints  # read from where own blocks stop


def test_what_cannot_be_inferred_is_asked_for():
    bottleneck = random_params(tiny_config())
    with pytest.raises(ValueError, match=r"config\.model\.fusion_layer \(bottleneck fusion"):
        scenic_checkpoint.infer_model_config(bottleneck)
    cross = random_params(tiny_config(fusion="cross"))
    with pytest.raises(ValueError, match=r"config\.model\.fusion \(no bottleneck.*own block"):
        scenic_checkpoint.infer_model_config(cross)
    shared = random_params(tiny_config(fusion="concat", fusion_layer=0, share_encoder=True))
    with pytest.raises(ValueError, match=r"no bottleneck parameter; one block per layer shared"):
        scenic_checkpoint.infer_model_config(shared)
    inferred = scenic_checkpoint.infer_model_config(cross, {"fusion": "cross", "fusion_layer": 2})
    assert (inferred.model.fusion, inferred.model.fusion_layer) == ("cross", 2)
    sampled = tiny_config(modalities=("rgb",))
    sampled.tokenizers.rgb = {"kind": "temporal_sampling", "patches": (8, 8), "n_sampled_frames": 2}
    with pytest.raises(ValueError, match=r"tokenizers\.rgb\.n_sampled_frames"):
        scenic_checkpoint.infer_model_config(random_params(sampled))
    inferred = scenic_checkpoint.infer_model_config(
        random_params(sampled), {"tokenizers": {"rgb": {"n_sampled_frames": 2}}}
    )
    assert inferred.model.tokenizers.rgb.kind == "temporal_sampling"
    assert inferred.token_counts == {"rgb": 8}


def test_mismatches_are_errors_naming_the_parameter(tmp_path, writer):
    config, params, _, _ = writer
    write_scenic_checkpoint(tmp_path, params, 1, "optimizer/target")
    path = str(tmp_path)

    with pytest.raises(
        ValueError, match=r"num_heads=4 .*MultiHeadDotProductAttention_0/query/kernel"
    ):
        scenic_checkpoint.load_scenic_mbt(path, tiny_config(num_heads=4))
    with pytest.raises(ValueError, match=r"hidden_size=768 .*embedding/kernel"):
        scenic_checkpoint.load_scenic_mbt(path, models.default_mbt_config())  # B/16 sizes
    with pytest.raises(ValueError, match=r"n_bottlenecks=2 .*bottleneck"):
        scenic_checkpoint.load_scenic_mbt(path, tiny_config(n_bottlenecks=2))
    with pytest.raises(
        ValueError,
        match=r"tokenizers\.spectrogram\.patches=\(4, 4\).*"
        r"embedding_spectrogram/kernel",
    ):
        bad = tiny_config()
        bad.tokenizers.spectrogram.patches = (4, 4)
        scenic_checkpoint.load_scenic_mbt(path, bad)
    with pytest.raises(ValueError, match=r"num_classes=9 .*output_projection/kernel"):
        scenic_checkpoint.load_scenic_mbt(path, config, 9)
    with pytest.raises(
        ValueError,
        match=r"posembed_input_spectrogram/pos_embedding: checkpoint "
        r"shape \(1, 9, 16\) vs model shape \(1, 17, 16\)",
    ):
        scenic_checkpoint.load_scenic_mbt(
            path, config, input_shapes=dict(INPUT_SHAPES, spectrogram=(64, 16, 1))
        )
    with pytest.raises(ValueError, match=r"modalities=\('rgb',\).*embedding_spectrogram"):
        scenic_checkpoint.load_scenic_mbt(path, tiny_config(modalities=("rgb",)))


def test_init_from_scenic_checkpoint_for_fine_tuning(tmp_path, writer):
    config, params, _, _ = writer
    write_scenic_checkpoint(tmp_path, params, 9, "params")
    run_config = ml_collections.ConfigDict(
        {"model": config, "init_from": default_init_from_config()}
    )
    run_config.init_from.checkpoint_path = str(tmp_path)
    fresh = random_params(config, num_classes=7, seed=5)  # a new dataset: 7 classes

    new, report = init_from(run_config, fresh)
    assert report.checkpoint_format == "scenic"
    fresh_paths = report.by_category()["fresh"]
    assert sorted(fresh_paths) == ["output_projection/bias", "output_projection/kernel"]
    assert len(report.by_category()["loaded"]) == len(report.entries) - 2
    np.testing.assert_array_equal(
        new["output_projection"]["kernel"], fresh["output_projection"]["kernel"]
    )
    np.testing.assert_array_equal(new["bottleneck"], params["bottleneck"])
    assert "output_projection/kernel" in report.unused_checkpoint_keys

    run_config.init_from.restore_output_projection = True
    with pytest.raises(ValueError, match=r"output_projection/bias: .*\(5,\) .*\(7,\)"):
        init_from(run_config, fresh)
    same_classes, report = init_from(run_config, random_params(config, seed=6))
    assert not report.by_category()["fresh"]
    np.testing.assert_array_equal(
        same_classes["output_projection"]["kernel"], params["output_projection"]["kernel"]
    )


def test_a_single_modality_checkpoint_with_scenics_unused_bottleneck_loads(tmp_path):
    """Scenic creates `bottleneck` for a single-modality model too; it is ignored, not an error."""
    config = tiny_config(modalities=("rgb",))
    params = random_params(config)
    inputs = make_inputs(config)
    logits = logits_of(models.build_model(config, CLASSES), params, inputs)
    scenic_params = dict(params, bottleneck=np.ones((1, 5, D), np.float32))
    write_scenic_checkpoint(tmp_path, scenic_params, 3, "params")
    for model_config in (None, tiny_config(modalities=("rgb",), n_bottlenecks=2)):
        restored = scenic_checkpoint.load_scenic_mbt(str(tmp_path), model_config)
        assert restored.ignored == ["bottleneck"]
        assert "bottleneck" not in restored.params
        np.testing.assert_allclose(
            logits_of(restored.model, restored.params, inputs), logits, rtol=1e-5, atol=1e-5
        )
    # The same unused array in a two-modality model's place still has to fit.
    assert scenic_checkpoint.unused_params({"bottleneck": 0}, tiny_config()) == set()


def test_settings_the_parameters_cannot_show_are_named_when_defaulted(tmp_path, writer, caplog):
    _, params, _, _ = writer
    write_scenic_checkpoint(tmp_path, params, 2, "params")
    with caplog.at_level("WARNING"):
        restored = scenic_checkpoint.load_scenic_mbt(str(tmp_path), hints={"fusion_layer": 1})
    assert restored.inferred.defaults_used == {
        "test_with_bottlenecks": True,
        "stochastic_droplayer_rate": 0.3,
    }
    assert "do not say stochastic_droplayer_rate or test_with_bottlenecks" in caplog.text
    caplog.clear()
    hints = {"fusion_layer": 1, "test_with_bottlenecks": False, "stochastic_droplayer_rate": 0.1}
    with caplog.at_level("WARNING"):
        restored = scenic_checkpoint.load_scenic_mbt(str(tmp_path), hints=hints)
    assert restored.inferred.defaults_used == {}
    assert restored.model_config.test_with_bottlenecks is False
    assert "do not say" not in caplog.text


def test_auto_format_tells_a_video_mbt_from_a_plain_vit(tmp_path):
    """An rgb-only MBT with a 2-D (temporal sampling) kernel has a ViT's parameter names; its
    frames x grid position table gives it away."""
    sampled = tiny_config(modalities=("rgb",))
    sampled.tokenizers.rgb = {"kind": "temporal_sampling", "patches": (8, 8), "n_sampled_frames": 2}
    path = write_scenic_checkpoint(tmp_path / "mbt", random_params(sampled), 1, "params")
    assert formats.detect_format(str(path)) == "scenic"
    image = formats.unflatten(
        {
            "embedding/kernel": np.zeros((8, 8, 3, D), np.float32),
            "cls": np.zeros((1, 1, D), np.float32),
            "Transformer/posembed_input/pos_embedding": np.zeros((1, 1 + 16, D), np.float32),
        }
    )
    assert not formats.is_mbt_tree(image)


@pytest.fixture
def flax_checkpoint_format(request):
    """Sets flax's checkpoint format for `save_checkpoint` (orbax or msgpack), then restores it."""
    before = flax.config.flax_use_orbax_checkpointing
    flax.config.update("flax_use_orbax_checkpointing", request.param == "orbax")
    yield request.param
    flax.config.update("flax_use_orbax_checkpointing", before)


@pytest.mark.parametrize("flax_checkpoint_format", ["orbax", "msgpack"], indirect=True)
def test_what_flax_save_checkpoint_writes_loads_in_either_format(
    tmp_path, writer, flax_checkpoint_format
):
    """Scenic's `save_checkpoint` calls flax's, which writes an orbax directory
    `checkpoint_<step>/` by default (a msgpack file before flax moved to orbax)."""
    config, params, inputs, logits = writer
    momentum = jax.tree.map(np.zeros_like, params)
    for step in (100, 200):
        state = {
            "global_step": step,
            "params": jax.tree.map(lambda p, s=step: p * (s / 200), params),
            "opt_state": {"0": {"trace": momentum}},
            "model_state": {},
            "rng": np.zeros(2, np.uint32),
        }
        flax_checkpoints.save_checkpoint(str(tmp_path), state, step, keep=3)
    written = tmp_path / "checkpoint_200"
    assert written.is_dir() == (flax_checkpoint_format == "orbax")
    (tmp_path / "checkpoint_900.orbax-checkpoint-tmp-1").mkdir()  # an unfinished write
    assert train_state.locate(str(tmp_path)) == str(written)
    assert formats.detect_format(str(tmp_path)) == "scenic"
    checkpoint = scenic_checkpoint.read_scenic_checkpoint(str(tmp_path))
    assert (checkpoint.path, checkpoint.location, checkpoint.step) == (str(written), "params", 200)
    restored = scenic_checkpoint.load_scenic_mbt(
        str(tmp_path), hints={"fusion_layer": 1, "stochastic_droplayer_rate": 0.0}
    )
    assert restored.step == 200 and restored.model == models.build_model(config, CLASSES)
    jax.tree.map(np.testing.assert_array_equal, restored.params, params)
    np.testing.assert_allclose(
        logits_of(restored.model, restored.params, inputs), logits, rtol=1e-5, atol=1e-5
    )


def test_an_orbax_checkpoint_of_arrays_sharded_over_8_devices_reads_as_whole_arrays(
    tmp_path, writer
):
    """A train state saved from a run sharded over a mesh (here 8 simulated devices, FSDP-like
    over the first axis where it divides) reads back as whole numpy arrays on any machine."""
    _, params, _, _ = writer
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ("data",))

    def place(x):
        spec = jax.sharding.PartitionSpec("data") if x.shape[0] % 8 == 0 else None
        return jax.device_put(
            x, jax.sharding.NamedSharding(mesh, spec or jax.sharding.PartitionSpec())
        )

    sharded = jax.tree.map(place, params)
    assert any(
        len(x.sharding.device_set) == 8 and not x.is_fully_replicated
        for x in jax.tree.leaves(sharded)
    )
    ocp.PyTreeCheckpointer().save(str(tmp_path / "state"), {"params": sharded, "step": 7})
    stored = train_state.read_params(str(tmp_path))  # a step directory holding `state`
    assert (stored.path, stored.location, stored.step) == (str(tmp_path / "state"), "params", 7)
    assert all(type(x) is np.ndarray for x in jax.tree.leaves(stored.params))
    jax.tree.map(np.testing.assert_array_equal, stored.params, params)


def test_unreadable_orbax_checkpoints_and_empty_directories_are_errors_naming_them(tmp_path):
    broken = tmp_path / "checkpoint_3"
    broken.mkdir()
    (broken / "_METADATA").write_text("{ not json")
    with pytest.raises(ValueError, match=f"{broken}.*orbax"):
        scenic_checkpoint.read_scenic_checkpoint(str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty.*checkpoint_<step>.*checkpoints/<step>"):
        train_state.locate(str(tmp_path / "empty"))
