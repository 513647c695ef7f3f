"""Inference bundle: what `python -m mbt.predict` needs from a training run, and nothing else.

`save_export(export_dir, params, config, meta)` writes, by default to `<workdir>/export/`:

- `params.msgpack`: the parameter tree of numpy arrays (`flax.serialization.msgpack_serialize`);
- `config.json`: the full config -- `config.model` rebuilds the model, `config.dataset` the
  test-split preprocessing, `config.test_combine` how views are combined;
- `meta.json`: the label space (class names, class splits, multi-label), the modalities and
  per-example input shapes, and how the training frames were stored (fps, short side).

`load_export(export_dir)` returns `(model, params, config, meta)` ready for
`model.apply({'params': params}, inputs, train=False)`; it checks every parameter's shape
against the model built from the config and names the ones that differ.

Nothing here imports TensorFlow except `decode_settings` (it reads the TFDS builder configs).
What a dataset name means comes from its `mbt.data.registry` spec.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import serialization

from mbt import models
from mbt.data import registry
from mbt.data.settings import STORED_SAMPLE_RATE
from mbt.pretrained import train_state

EXPORT_VERSION = 1
EXPORT_SUBDIR = "export"
PARAMS_FILE = "params.msgpack"
CONFIG_FILE = "config.json"
META_FILE = "meta.json"


@dataclasses.dataclass(frozen=True)
class ExportMeta:
    """What predict needs to know besides the config.

    Attributes:
      num_classes: length of the logit vector.
      class_names: one name per logit.
      class_splits: sizes of the label heads (EPIC: (97, 300)) or None for one head.
      multi_label: scores are sigmoids (True) or softmaxes per head (False).
      modalities: the model's input modalities.
      input_shapes: per-example input shape of each modality, no batch axis.
      video_fps: frame rate (Hz) of the frames the model was trained on (as stored).
      short_side: short side (pixels) the stored frames were resized to; None = as decoded.
      sample_rate: audio sample rate (Hz) of the stored waveforms.
      head_names: one name per class split (('verb', 'noun') for EPIC), () for one head.
      step: training step of the parameters, if known.
    """

    num_classes: int
    class_names: tuple[str, ...]
    class_splits: tuple[int, ...] | None
    multi_label: bool
    modalities: tuple[str, ...]
    input_shapes: dict[str, tuple[int, ...]]
    video_fps: float
    short_side: int | None
    sample_rate: int = STORED_SAMPLE_RATE
    head_names: tuple[str, ...] = ()
    step: int | None = None

    def __post_init__(self):
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"{len(self.class_names)} class names for num_classes={self.num_classes}"
            )
        if self.class_splits and sum(self.class_splits) != self.num_classes:
            raise ValueError(
                f"class_splits={self.class_splits} sum to "
                f"{sum(self.class_splits)}, not num_classes={self.num_classes}"
            )
        if self.class_splits and self.multi_label:
            raise ValueError(f"class_splits={self.class_splits} need multi_label=False")
        if self.head_names and len(self.head_names) != len(self.class_splits or ()):
            raise ValueError(
                f"head_names={self.head_names} do not match class_splits={self.class_splits}"
            )

    def to_json_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["input_shapes"] = {m: list(s) for m, s in self.input_shapes.items()}
        return {"export_version": EXPORT_VERSION, **values}

    @classmethod
    def from_json_dict(cls, values: Mapping[str, Any], source: str = "meta") -> ExportMeta:
        version = values.get("export_version")
        if version != EXPORT_VERSION:
            raise ValueError(
                f"{source}: export_version={version!r}, this mbt reads version {EXPORT_VERSION}"
            )
        fields = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(
            f for f in fields if f not in values and f not in ("sample_rate", "head_names", "step")
        )
        if missing:
            raise ValueError(f"{source}: missing keys {missing}")
        splits = values.get("class_splits")
        short_side = values.get("short_side")
        return cls(
            num_classes=int(values["num_classes"]),
            class_names=tuple(str(n) for n in values["class_names"]),
            class_splits=tuple(int(s) for s in splits) if splits else None,
            multi_label=bool(values["multi_label"]),
            modalities=tuple(values["modalities"]),
            input_shapes={m: tuple(int(d) for d in s) for m, s in values["input_shapes"].items()},
            video_fps=float(values["video_fps"]),
            short_side=None if short_side is None else int(short_side),
            sample_rate=int(values.get("sample_rate", STORED_SAMPLE_RATE)),
            head_names=tuple(values.get("head_names") or ()),
            step=None if values.get("step") is None else int(values["step"]),
        )


def default_export_dir(workdir: str) -> str:
    """`<workdir>/export`: where the trainer writes the bundle and predict looks for it."""
    return os.path.join(os.fspath(workdir), EXPORT_SUBDIR)


def default_head_names(
    dataset_name: str | None, class_splits, imports: tuple[str, ...] = ()
) -> tuple[str, ...]:
    """The dataset spec's head names when it has one per class split (EPIC: ('verb', 'noun'),
    also for a reduced label space), ('head_0', ...) for other split labels, () for one head."""
    if not class_splits:
        return ()
    spec = None
    if dataset_name:
        try:
            spec = registry.get(dataset_name, imports)
        except ValueError:  # a dataset this process does not know: generic head names
            spec = None
    if spec is not None and len(spec.head_names) == len(class_splits):
        return tuple(spec.head_names)
    return tuple(f"head_{i}" for i in range(len(class_splits)))


def decode_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """`{'video_fps', 'short_side'}` of the frames the dataset of `config` stores.

    Datasets with a TFDS builder (registry spec `builder`): the builder config's `fps` and
    `short_side` (`config.dataset.builder_config`, '' = the builder's default),
    `config.dataset.video_fps` overriding the fps. Others (scenic_tfrecord): `video_fps`
    (0 = the spec's `default_fps`) and the short side `config.dataset.min_resize` (the
    records' frame size is not known here).
    """
    from mbt.data import pipeline  # TensorFlow: only when an export or a prediction is made

    values = pipeline.dataset_values(config)
    name = values["name"]
    spec = registry.get(name, values["imports"])
    fps = None
    short_side: int | None = int(values["min_resize"])
    if spec.builder is not None:
        builder_cls = registry.load(spec.builder)
        configs = list(getattr(builder_cls, "BUILDER_CONFIGS", None) or [])
        wanted = values["builder_config"] or getattr(builder_cls, "DEFAULT_CONFIG_NAME", None)
        wanted = wanted or (configs[0].name if configs else None)
        by_name = {c.name: c for c in configs}
        if configs and wanted not in by_name:
            raise ValueError(
                f"config.dataset.builder_config={wanted!r} is not a config of "
                f"{name}; allowed: {sorted(by_name)}"
            )
        chosen = by_name.get(wanted)
        fps = getattr(chosen, "fps", None)
        short_side = getattr(chosen, "short_side", None) if chosen is not None else short_side
    fps = float(values["video_fps"] or fps or spec.default_fps)
    return {"video_fps": fps, "short_side": None if short_side is None else int(short_side)}


def export_meta(
    config: ml_collections.ConfigDict, meta: Any, step: int | None = None
) -> ExportMeta:
    """`ExportMeta` from a `DatasetMeta` (or a mapping / object with its fields) and the config."""
    get = (lambda k: meta[k]) if isinstance(meta, Mapping) else (lambda k: getattr(meta, k))
    splits = get("class_splits")
    splits = tuple(int(s) for s in splits) if splits else None
    modalities = tuple(config.model.get("modalities") or get("modalities"))
    shapes = get("input_shapes")
    missing = [m for m in modalities if m not in shapes]
    if missing:
        raise ValueError(
            f"meta.input_shapes has no shape for {missing} (config.model.modalities={modalities})"
        )
    return ExportMeta(
        num_classes=int(get("num_classes")),
        class_names=tuple(str(n) for n in get("class_names")),
        class_splits=splits,
        multi_label=bool(get("multi_label")),
        modalities=modalities,
        input_shapes={m: tuple(int(d) for d in shapes[m]) for m in modalities},
        **decode_settings(config),
        head_names=default_head_names(
            config.dataset.get("name"), splits, tuple(config.dataset.get("imports") or ())
        ),
        step=None if step is None else int(step),
    )


def _to_numpy(params: Any) -> dict[str, Any]:
    """Plain nested dict of numpy arrays; arrays sharded over several hosts are gathered."""
    from jax.experimental import multihost_utils

    def fetch(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(fetch, serialization.to_state_dict(params))


def _write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def save_export(
    export_dir: str,
    params: Any,
    config: ml_collections.ConfigDict,
    meta: Any,
    *,
    step: int | None = None,
) -> str:
    """Writes the inference bundle to `export_dir` (created; existing files replaced).

    Args:
      export_dir: target directory, usually `default_export_dir(workdir)`.
      params: the model's parameter tree (numpy or jax arrays, sharded ones included).
      config: the full config (`model`, `dataset`, `test_combine`, ...).
      meta: the `mbt.data.pipeline.DatasetMeta` of the run (or a mapping with its fields).
      step: the training step of `params`, recorded in meta.json.

    Every process must call it (sharded parameters are gathered); only process 0 writes.
    Returns `export_dir`.
    """
    if config.get("model") is None or config.get("dataset") is None:
        raise ValueError("save_export needs a config with `model` and `dataset` sections")
    numpy_params = _to_numpy(params)
    bundle_meta = export_meta(config, meta, step)
    if jax.process_index() != 0:
        return export_dir
    os.makedirs(export_dir, exist_ok=True)
    _write_atomic(
        os.path.join(export_dir, PARAMS_FILE), serialization.msgpack_serialize(numpy_params)
    )
    _write_atomic(
        os.path.join(export_dir, CONFIG_FILE),
        config.to_json_best_effort(indent=2, sort_keys=True).encode(),
    )
    _write_atomic(
        os.path.join(export_dir, META_FILE),
        json.dumps(bundle_meta.to_json_dict(), indent=2).encode(),
    )
    return export_dir


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def expected_param_shapes(model, input_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple]:
    """`{path: shape}` of the params `model` creates for per-example `input_shapes` (abstract)."""
    inputs = {
        m: jax.ShapeDtypeStruct((1,) + tuple(s), jnp.float32) for m, s in input_shapes.items()
    }
    variables = jax.eval_shape(
        lambda x: model.init(
            {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}, x, train=False
        ),
        inputs,
    )
    return {k: tuple(v.shape) for k, v in _flatten(variables["params"]).items()}


def check_param_shapes(
    params: Mapping[str, Any], expected: Mapping[str, tuple], source: str
) -> None:
    """Raises ValueError naming every parameter missing, extra or of another shape."""
    have = {k: tuple(np.shape(v)) for k, v in _flatten(params).items()}
    problems = []
    for path in sorted(set(have) | set(expected)):
        if path not in have:
            problems.append(f"{path}: missing (model shape {expected[path]})")
        elif path not in expected:
            problems.append(f"{path}: {have[path]} is not a parameter of the model")
        elif have[path] != expected[path]:
            problems.append(f"{path}: shape {have[path]} but the model wants {expected[path]}")
    if problems:
        more = [f"... and {len(problems) - 10} more"] if len(problems) > 10 else []
        raise ValueError(
            f"{source} does not fit the model of its config.model:\n  "
            + "\n  ".join(problems[:10] + more)
        )


def _existing(export_dir: str, name: str) -> str:
    path = os.path.join(export_dir, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} not found: not an mbt export directory (written by "
            "mbt.export.save_export at the end of training)"
        )
    return path


def _read(export_dir: str, name: str) -> bytes:
    with open(_existing(export_dir, name), "rb") as f:
        return f.read()


def load_config(export_dir: str) -> ml_collections.ConfigDict:
    """The config stored in `<export_dir>/config.json`."""
    path = os.path.join(export_dir, CONFIG_FILE)
    try:
        return ml_collections.ConfigDict(json.loads(_read(export_dir, CONFIG_FILE)))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e


def load_meta(export_dir: str) -> ExportMeta:
    """The `ExportMeta` stored in `<export_dir>/meta.json`."""
    path = os.path.join(export_dir, META_FILE)
    try:
        values = json.loads(_read(export_dir, META_FILE))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    return ExportMeta.from_json_dict(values, path)


def load_export(export_dir: str):
    """`(model, params, config, meta)` from a bundle written by `save_export`.

    `params` is a nested dict of numpy arrays whose shapes were checked against
    `models.build_model(config.model, meta.num_classes)` at `meta.input_shapes`.
    """
    export_dir = os.fspath(export_dir)
    if not os.path.isdir(export_dir):
        raise FileNotFoundError(f"export directory {export_dir} does not exist")
    config = load_config(export_dir)
    meta = load_meta(export_dir)
    params_path = _existing(export_dir, PARAMS_FILE)
    params = train_state.read_msgpack(params_path)
    model = models.build_model(config.model, meta.num_classes)
    check_param_shapes(params, expected_param_shapes(model, meta.input_shapes), params_path)
    return model, params, config, meta
