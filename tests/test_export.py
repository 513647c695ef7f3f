"""mbt.export: the inference bundle round-trips (same logits), holds only what predict needs,
gathers sharded parameters, and its errors name the file, key or parameter."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import predict_fixtures as fx
import pytest
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

from mbt import export
from mbt import models


@pytest.fixture(scope="module")
def trained():
    config = fx.tiny_config()
    model = models.build_model(config.model, len(fx.CLASS_NAMES))
    return config, model, fx.random_params(model)


def test_round_trip_gives_the_same_logits_and_meta(tmp_path, trained):
    config, model, params = trained
    # The trainer hands over device arrays, here sharded over the 8 CPU devices.
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    kernel = params["output_projection"]["kernel"]  # [16, 6]: rows split over devices
    sharded = jax.tree.map(lambda x: x, params)
    sharded["output_projection"]["kernel"] = jax.device_put(
        kernel, NamedSharding(mesh, PartitionSpec("data", None))
    )
    out = export.save_export(
        export.default_export_dir(tmp_path), sharded, config, fx.dataset_meta(), step=1234
    )
    assert out == str(tmp_path / "export")
    assert sorted(os.listdir(out)) == ["config.json", "meta.json", "params.msgpack"]

    loaded_model, loaded_params, loaded_config, meta = export.load_export(out)
    assert loaded_model == model
    inputs = {
        "rgb": np.random.default_rng(1).normal(size=(2,) + fx.RGB_SHAPE),
        "spectrogram": np.random.default_rng(2).normal(size=(2,) + fx.SPEC_SHAPE),
    }
    inputs = {k: v.astype(np.float32) for k, v in inputs.items()}
    want = np.asarray(fx.jitted_apply(model)(params, inputs))
    got = np.asarray(fx.jitted_apply(loaded_model)(loaded_params, inputs))
    np.testing.assert_array_equal(got, want)
    assert np.abs(want).max() > 0.1  # a random head, not the zero-initialised one

    assert loaded_config.model.to_dict() == json.loads(config.model.to_json_best_effort())
    assert loaded_config.dataset.num_test_clips == 2
    assert meta.class_names == fx.CLASS_NAMES and meta.num_classes == 6
    assert meta.class_splits is None and meta.multi_label is False
    assert meta.modalities == ("rgb", "spectrogram")
    assert meta.input_shapes == {"rgb": fx.RGB_SHAPE, "spectrogram": fx.SPEC_SHAPE}
    assert (meta.video_fps, meta.short_side, meta.sample_rate) == (10.0, 64, 16000)
    assert meta.step == 1234 and meta.head_names == ()
    stored = json.loads((tmp_path / "export" / "meta.json").read_text())
    assert "num_examples" not in stored  # nothing from the run beyond what predict needs


def test_epic_meta_names_its_heads(tmp_path, trained):
    config, _, params = trained
    config = fx.tiny_config()
    config.dataset.name = "epic_kitchens"
    meta = {
        **vars(fx.dataset_meta()),
        "class_splits": (2, 4),
        "class_names": ("take", "put", "cup", "pan", "lid", "tap"),
    }
    export.save_export(str(tmp_path), params, config, meta)
    loaded = export.load_meta(str(tmp_path))
    assert loaded.class_splits == (2, 4) and loaded.head_names == ("verb", "noun")


def test_decode_settings_follow_the_dataset():
    config = fx.tiny_config()
    assert export.decode_settings(config) == {"video_fps": 10.0, "short_side": 64}
    config.dataset.video_fps = 12.5
    assert export.decode_settings(config)["video_fps"] == 12.5
    config.dataset.builder_config = ""
    config.dataset.video_fps = 0.0
    assert export.decode_settings(config) == {"video_fps": 25.0, "short_side": 256}
    config.dataset.name, config.dataset.min_resize = "scenic_tfrecord", 240
    assert export.decode_settings(config) == {"video_fps": 25.0, "short_side": 240}
    config.dataset.name, config.dataset.builder_config = "audioset", "huge"
    with pytest.raises(ValueError, match=r"builder_config='huge'.*allowed: \['default', 'tiny'\]"):
        export.decode_settings(config)


def test_errors_name_the_file_or_parameter(tmp_path, trained):
    config, model, params = trained
    with pytest.raises(FileNotFoundError, match="nowhere"):
        export.load_export(str(tmp_path / "nowhere"))

    good = str(tmp_path / "good")
    export.save_export(good, params, config, fx.dataset_meta())
    os.remove(os.path.join(good, "params.msgpack"))
    with pytest.raises(FileNotFoundError, match="params.msgpack not found"):
        export.load_export(good)

    # Parameters of another model (3 layers) under this config.
    bigger = fx.tiny_config()
    bigger.model.num_layers = 3
    other = fx.random_params(models.build_model(bigger.model, 6))
    wrong = str(tmp_path / "wrong")
    export.save_export(wrong, other, config, fx.dataset_meta())
    with pytest.raises(ValueError, match=r"encoderblock_2/.*is not a parameter of the model"):
        export.load_export(wrong)

    meta_path = os.path.join(good, "meta.json")
    values = json.loads(open(meta_path).read())
    values["export_version"] = 99
    open(meta_path, "w").write(json.dumps(values))
    with pytest.raises(ValueError, match="meta.json: export_version=99"):
        export.load_meta(good)

    with pytest.raises(ValueError, match="5 class names for num_classes=6"):
        export.save_export(
            str(tmp_path / "x"),
            params,
            config,
            {**vars(fx.dataset_meta()), "class_names": fx.CLASS_NAMES[:5]},
        )


def test_load_export_needs_no_tensorflow(tmp_path, trained):
    """The GPU machines have JAX but no TensorFlow: loading and running an export must work."""
    config, model, params = trained
    export.save_export(str(tmp_path), params, config, fx.dataset_meta())
    script = textwrap.dedent(f"""
        import importlib.abc, sys
        import numpy as np

        class BlockTensorFlow(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split('.')[0] in ('tensorflow', 'tensorflow_datasets'):
                    raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)")

        sys.meta_path.insert(0, BlockTensorFlow())
        from mbt import export
        model, params, config, meta = export.load_export({str(tmp_path)!r})
        x = {{m: np.zeros((1,) + s, np.float32) for m, s in meta.input_shapes.items()}}
        print(model.apply({{'params': params}}, x, train=False).shape)
    """)
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        timeout=300,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "(1, 6)"
