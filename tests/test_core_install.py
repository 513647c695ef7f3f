"""`pip install -e .` (no extras) is enough for the model, the train step and the benchmarks.

The installed distribution's metadata says what a core install brings: its requirements
without an extra, and theirs, transitively. A subprocess then blocks every installed
top-level module that only distributions outside that set provide (TensorFlow, TFDS, PyAV,
h5py, apache-beam, scikit-learn, ...), as on a machine with the core install alone, and
imports the core modules and runs a benchmark script there.
"""

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import textwrap

from packaging.requirements import Requirement

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_SIDE = ("tensorflow-cpu", "tensorflow-datasets", "av", "h5py", "tensorboard")
CORE_MODULES = (
    "mbt.models",
    "mbt.train_step",
    "mbt.train",
    "mbt.sharding",
    "mbt.optim",
    "mbt.checkpointing",
    "mbt.metrics",
    "mbt.evaluate",
    "mbt.tools.flops",
    "mbt.pretrained",
    "mbt.export",
    "mbt.recipe",
)


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", Requirement(requirement).name).lower()


def _core_requirements(dist: str) -> list[str]:
    """Requirements of `dist` that apply without any extra."""
    out = []
    for text in importlib.metadata.requires(dist) or ():
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            out.append(_name(text))
    return out


def _core_closure() -> set[str]:
    """Normalised names of the distributions a core install of mbt brings."""
    seen, todo = {"mbt"}, ["mbt"]
    while todo:
        for name in _core_requirements(todo.pop()):
            if name not in seen:
                seen.add(name)
                try:
                    importlib.metadata.distribution(name)
                except importlib.metadata.PackageNotFoundError:
                    continue  # not installed here: nothing to block or walk
                todo.append(name)
    return seen


def _blocked_modules(closure: set[str]) -> list[str]:
    """Installed top-level modules provided only by distributions outside `closure`."""
    blocked = []
    for module, dists in importlib.metadata.packages_distributions().items():
        names = {re.sub(r"[-_.]+", "-", d).lower() for d in dists}
        if module != "mbt" and not names & closure:
            blocked.append(module)
    return sorted(blocked)


def test_core_requirements_leave_the_data_side_to_the_data_extra():
    core = set(_core_requirements("mbt"))
    assert {"jax", "flax", "optax", "orbax-checkpoint", "ml-collections", "clu"} <= core
    assert not core & set(DATA_SIDE), "reinstall with `pip install -e '.[test]'` if stale"
    data = set()
    for text in importlib.metadata.requires("mbt") or ():
        req = Requirement(text)
        if req.marker is not None and req.marker.evaluate({"extra": "data"}):
            data.add(_name(text))
    assert set(DATA_SIDE) <= data


_SCRIPT = textwrap.dedent("""
    import importlib, importlib.abc, json, runpy, sys

    BLOCKED = set(json.loads(sys.argv[1]))

    class BlockOutsideCore(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split('.')[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (not in the core install)")
            return None

    sys.meta_path.insert(0, BlockOutsideCore())
    for module in json.loads(sys.argv[2]):
        importlib.import_module(module)
    sys.argv = ['scripts/benchmark_model.py', '--steps=1', '--out=']
    try:
        runpy.run_path('scripts/benchmark_model.py', run_name='__main__')
    except SystemExit as e:
        assert not e.code, e.code
    print('core ok')
""")


def test_model_train_step_and_a_benchmark_run_with_the_core_install_only():
    blocked = _blocked_modules(_core_closure())
    assert {"tensorflow", "tensorflow_datasets", "av", "h5py", "sklearn"} <= set(blocked)
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT, json.dumps(blocked), json.dumps(CORE_MODULES)],
        capture_output=True,
        text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        timeout=600,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "core ok" in result.stdout
    assert "fused / einsum" in result.stdout  # the benchmark printed its comparison
