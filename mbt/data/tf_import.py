"""How mbt's input pipeline imports TensorFlow and traces its tf.data functions, for a quicker
start of every process that reads data.

- `install()` (run by `mbt.data`): the first `import tensorflow` after it runs without the
  Keras package that TensorFlow's `__init__` imports eagerly, and without JAX where nothing
  has imported JAX yet (TFLite's optional JAX converter imports it). Keras loads Keras 3 with
  scipy and the rest of its stack: measured with TF 2.21 on 2 CPU cores, `import tensorflow`
  takes 3.2 s of CPU and 500 MB instead of 6.1 s and 798 MB (without Keras alone: 3.6 s,
  610 MB). mbt never uses Keras or TFLite; `tf.keras`, `import keras` and `import jax` still
  work afterwards (TensorFlow loads Keras lazily on first use). Setting
  `MBT_IMPORT_KERAS_WITH_TF=1` keeps TensorFlow's eager imports.
- `as_graph(fn)`: a function for `tf.data.Dataset.map` / `flat_map` traced as written, without
  AutoGraph's source conversion. The pipeline's functions branch only on Python values
  (config and shapes), never on tensors, so the conversion changes nothing but costs about
  1.8 s in each process that builds a pipeline.
"""

import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Callable
from typing import Any

KEEP_KERAS_ENV = "MBT_IMPORT_KERAS_WITH_TF"


class _RefusedImport(importlib.abc.Loader):
    """Loader of a module whose import is refused (an ImportError, as if not installed; the
    import system then drops the half-made module)."""

    def exec_module(self, module):
        raise ImportError(f"{module.__name__} is not imported while TensorFlow loads (mbt.data)")


class _Refused(importlib.abc.MetaPathFinder):
    """Finds the `names` where they are installed, with a loader that refuses to import them:
    TF's `__init__` still learns where Keras lies (`find_spec`, for `tf.keras`'s path), and its
    eager `import keras...` (and TFLite's `from jax import jit`) fails with the ImportError it
    catches."""

    def __init__(self, names: frozenset[str]):
        self.names = names

    def find_spec(self, name, path, target=None):
        if name not in self.names:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None:
            spec.loader = _RefusedImport()
        return spec


class _LoadTensorFlowWithoutKeras(importlib.abc.MetaPathFinder):
    """Meta path hook for the first `import tensorflow`: runs TensorFlow's own loader with
    `_Refused` in place, then removes both."""

    def find_spec(self, name, path, target=None):
        if name != "tensorflow":
            return None
        uninstall()
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or "keras" in sys.modules:
            return spec
        spec.loader = _WithoutKeras(spec.loader)
        return spec


class _WithoutKeras(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        # JAX only where nothing has imported it yet: TFLite's optional JAX converter (which
        # mbt never uses) imports it eagerly, which costs a process that only reads data,
        # such as a Beam worker, about 1 s and 150 MB.
        refuse = _Refused(frozenset({"keras"} | ({"jax"} - set(sys.modules))))
        sys.meta_path.insert(0, refuse)
        try:
            self._loader.exec_module(module)
        finally:
            sys.meta_path.remove(refuse)
        module.__loader__ = module.__spec__.loader = self._loader  # TF's own, from now on

    def __getattr__(self, name):  # get_source, is_package, ...: TF's loader answers
        return getattr(self._loader, name)


_HOOK = _LoadTensorFlowWithoutKeras()


def install() -> None:
    """Makes the next first `import tensorflow` skip Keras (nothing if TF is loaded already,
    or with MBT_IMPORT_KERAS_WITH_TF=1)."""
    if (
        "tensorflow" in sys.modules
        or os.environ.get(KEEP_KERAS_ENV, "") not in ("", "0")
        or _HOOK in sys.meta_path
    ):
        return
    sys.meta_path.insert(0, _HOOK)


def uninstall() -> None:
    if _HOOK in sys.meta_path:
        sys.meta_path.remove(_HOOK)


def as_graph(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` for tf.data to trace as written, without AutoGraph's conversion."""
    import tensorflow as tf

    return tf.autograph.experimental.do_not_convert(fn)
