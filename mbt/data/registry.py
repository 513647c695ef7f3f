"""The dataset registry: every dataset described once, by a `DatasetSpec` (no TensorFlow).

A spec says where the dataset's builder is, its usual splits, its label layout, its class
count, where its class names come from and how a synthetic copy is written. Built-in specs
live beside their builders as `mbt/data/builders/<name>_spec.py`; each such module calls
`register(SPEC)` when imported. `get(name)` imports `mbt.data.builders.<name>_spec` for a
name not registered yet, so no central list exists. Datasets defined elsewhere are
registered by a module listed in `config.dataset.imports` (imported by `import_modules`
before the name is looked up, like `tfds build --imports`).

Builders, generators and source factories are given as lazy import paths
`"package.module:attribute"` (`load(path)` imports them): reading a spec needs neither
TensorFlow nor TFDS.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Iterable
from typing import Any

MULTI_LABEL = "multi_label"  # several classes per example (sigmoid), one `label` index list
SINGLE_LABEL = "single_label"  # one class per example (softmax), one `label` index
CLASS_SPLITS = "class_splits"  # one class per head, e.g. EPIC verb + noun
FROM_CONFIG = "from_config"  # config.dataset.{multi_label, class_splits} say (scenic_tfrecord)
LABEL_KINDS = (MULTI_LABEL, SINGLE_LABEL, CLASS_SPLITS, FROM_CONFIG)
CLASS_NAMES_FROM = ("builder", "config")

_SPEC_PACKAGE = "mbt.data.builders"
_SPEC_SUFFIX = "_spec"


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Everything the code needs to know about one dataset by name.

    Attributes:
      name: the `config.dataset.name` (for TFDS datasets also the builder's TFDS name).
      default_splits: (train, eval, test) split names used when the config leaves them ''.
      label_kind: one of `LABEL_KINDS`.
      num_classes: classes of the full dataset (all heads together), e.g. for FLOP counts
        without a built copy; None when only the config knows (scenic_tfrecord).
      builder: lazy import path of the TFDS builder class ("mbt.data.builders.vggsound:
        Vggsound"), None for datasets read another way (then `source_factory` is set).
      class_splits: classes per head for `CLASS_SPLITS` (EPIC: (97, 300)), else ().
      head_names: one name per head for `CLASS_SPLITS` (EPIC: ("verb", "noun")), else ().
      class_names_from: "builder" (the built dataset's label features) or "config"
        (`config.dataset.class_names`).
      default_fps: frame rate (Hz) assumed when neither `config.dataset.video_fps` nor the
        builder config gives one.
      synthetic: lazy import path of a synthetic-copy generator
        `fn(out_dir, num_clips, *, seed, num_classes, frame_size, fps, clip_seconds,
        edge_cases, **options) -> summary dict` (see `mbt.data.synthetic.generate`), or None.
      source_factory: lazy import path of `fn(values) -> mbt.data.sources.ExampleSource`
        taking the merged `config.dataset` values, for datasets without a builder.
    """

    name: str
    default_splits: tuple[str, str, str]
    label_kind: str
    num_classes: int | None = None
    builder: str | None = None
    class_splits: tuple[int, ...] = ()
    head_names: tuple[str, ...] = ()
    class_names_from: str = "builder"
    default_fps: float = 25.0
    synthetic: str | None = None
    source_factory: str | None = None

    def __post_init__(self):
        if self.label_kind not in LABEL_KINDS:
            raise ValueError(f"{self.name}: label_kind={self.label_kind!r}; allowed {LABEL_KINDS}")
        if self.class_names_from not in CLASS_NAMES_FROM:
            raise ValueError(
                f"{self.name}: class_names_from={self.class_names_from!r}; "
                f"allowed {CLASS_NAMES_FROM}"
            )
        if len(self.default_splits) != 3:
            raise ValueError(f"{self.name}: default_splits must be (train, eval, test)")
        if (self.builder is None) == (self.source_factory is None):
            raise ValueError(f"{self.name}: give exactly one of builder and source_factory")
        if self.label_kind == CLASS_SPLITS:
            if not self.class_splits or len(self.head_names) != len(self.class_splits):
                raise ValueError(f"{self.name}: class splits need one head name per split")
        elif self.class_splits or self.head_names:
            raise ValueError(f"{self.name}: class_splits/head_names need label_kind=CLASS_SPLITS")

    def label_layout(self, values: dict) -> tuple[bool, tuple[int, ...] | None]:
        """(multi_label, class_splits or None); `values` = merged `config.dataset` values."""
        if self.label_kind == FROM_CONFIG:
            splits = tuple(int(s) for s in values.get("class_splits") or ()) or None
            return bool(values.get("multi_label")) and not splits, splits
        if self.label_kind == CLASS_SPLITS:
            return False, self.class_splits
        return self.label_kind == MULTI_LABEL, None


_REGISTRY: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
    """Adds `spec`; registering an equal spec again is a no-op, a different one an error."""
    known = _REGISTRY.get(spec.name)
    if known is not None and known != spec:
        raise ValueError(f"dataset {spec.name!r} is already registered with another spec")
    _REGISTRY[spec.name] = spec
    return spec


def import_modules(modules: Iterable[str] | str | None) -> None:
    """Imports the modules of `config.dataset.imports` (each calls `register`)."""
    if isinstance(modules, str):
        modules = (modules,)
    for module in modules or ():
        importlib.import_module(module)


def _import_builtin(name: str) -> None:
    module = f"{_SPEC_PACKAGE}.{name}{_SPEC_SUFFIX}"
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise


def names() -> tuple[str, ...]:
    """Sorted names of the built-in datasets and of every dataset registered so far."""
    package = importlib.import_module(_SPEC_PACKAGE)
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.endswith(_SPEC_SUFFIX):
            _import_builtin(info.name[: -len(_SPEC_SUFFIX)])
    return tuple(sorted(_REGISTRY))


def get(name: str, imports: Iterable[str] | str | None = ()) -> DatasetSpec:
    """The spec of `name`, after importing `imports` (`config.dataset.imports`).

    Raises:
      ValueError listing the known names when `name` is not registered.
    """
    import_modules(imports)
    if isinstance(name, str) and name not in _REGISTRY and name.isidentifier():
        _import_builtin(name)
    if name not in _REGISTRY:
        raise ValueError(
            f"config.dataset.name={name!r} is not a registered dataset; known: {names()}. "
            "A dataset defined outside mbt registers itself in a module listed in "
            "config.dataset.imports (see docs/datasets.md, 'Add a dataset')."
        )
    return _REGISTRY[name]


def for_config(dataset_config: Any) -> DatasetSpec:
    """The spec of a `config.dataset` (a ConfigDict or mapping with `name`, `imports`)."""
    return get(dataset_config.get("name"), dataset_config.get("imports") or ())


def load(path: str) -> Any:
    """The attribute named by a lazy import path "package.module:attribute"."""
    module, _, attribute = path.partition(":")
    if not attribute:
        raise ValueError(f"{path!r} is not a 'module:attribute' path")
    return getattr(importlib.import_module(module), attribute)
