"""`pip install -e .` (no extras) is enough for the model, the train step and the benchmarks.

The GPU machines have JAX but no TensorFlow; only `mbt.data`'s builders and pipeline may
import it. The installed distribution's metadata says what a core install brings: its
requirements without an extra, and theirs, transitively. A subprocess then blocks every
installed top-level module that only distributions outside that set provide (TensorFlow,
TFDS, PyAV, h5py, apache-beam, scikit-learn, ...), as on a machine with the core install
alone, imports the TF-free modules and benchmark scripts, runs a tiny MBT and one benchmark
there, and checks that no TensorFlow module was loaded.
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
    "mbt.models.mbt",
    "mbt.models.vit",
    "mbt.models.tokenizers",
    "mbt.models.sft",
    "mbt.models.clstm",
    "mbt.train_step",
    "mbt.train",
    "mbt.losses",
    "mbt.mixup",
    "mbt.sharding",
    "mbt.optim",
    "mbt.checkpointing",
    "mbt.metrics",
    "mbt.evaluate",
    "mbt.tools.flops",
    "mbt.tools.bench",
    "mbt.tools.device_peaks",
    "mbt.pretrained",
    "mbt.export",
    "mbt.recipe",
    "mbt.data.registry",
    "mbt.data.builders.audioset_spec",
    "mbt.data.builders.vggsound_spec",
    "mbt.data.builders.epic_kitchens_spec",
    "mbt.data.builders.scenic_tfrecord_spec",
)
# Benchmark scripts imported as modules (their main() is not run), and one run for real.
CORE_SCRIPTS = ("scripts/fusion_flops.py",)
CORE_BENCHMARK = "scripts/benchmark_model.py"  # run with its flags (it defines absl flags)


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
    assert {"jax", "flax", "optax", "orbax-checkpoint", "ml-collections"} <= core
    assert not core & set(DATA_SIDE), "reinstall with `pip install -e '.[test]'` if stale"
    data = set()
    for text in importlib.metadata.requires("mbt") or ():
        req = Requirement(text)
        if req.marker is not None and req.marker.evaluate({"extra": "data"}):
            data.add(_name(text))
    assert set(DATA_SIDE) <= data


_HIDE_OUTSIDE_CORE = textwrap.dedent("""
    import importlib, importlib.abc, importlib.util, json, runpy, sys

    BLOCKED = set(json.loads(sys.argv[1]))

    # Blocked modules look absent: `import` raises ModuleNotFoundError and
    # `importlib.util.find_spec` returns None, as on a machine without them.
    class HideOutsideCore(importlib.abc.MetaPathFinder):

        def __init__(self, finder):
            self.finder = finder

        def find_spec(self, name, path, target=None):
            if name.split('.')[0] in BLOCKED or not hasattr(self.finder, 'find_spec'):
                return None
            return self.finder.find_spec(name, path, target)

        def invalidate_caches(self):
            if hasattr(self.finder, 'invalidate_caches'):
                self.finder.invalidate_caches()

    sys.meta_path[:] = [HideOutsideCore(finder) for finder in sys.meta_path]
""")

# The end of each script: nothing of TensorFlow was imported.
_NO_TENSORFLOW_LOADED = textwrap.dedent("""
    loaded = sorted(m for m in sys.modules
                    if m.split('.')[0] in ('tensorflow', 'tensorflow_datasets'))
    assert not loaded, loaded
""")

_SCRIPT = (
    _HIDE_OUTSIDE_CORE
    + textwrap.dedent("""
    for module in json.loads(sys.argv[2]):
        importlib.import_module(module)
    for path in json.loads(sys.argv[3]):
        spec = importlib.util.spec_from_file_location('script_under_test', path)
        spec.loader.exec_module(importlib.util.module_from_spec(spec))

    import jax, jax.numpy as jnp
    from mbt import models
    config = models.default_mbt_config()
    config.variant = None
    config.update(hidden_size=8, num_layers=2, num_heads=2, mlp_dim=16, fusion_layer=1)
    config.tokenizers.rgb.patches = (2, 8, 8)
    config.tokenizers.spectrogram.patches = (8, 8)
    model = models.build_model(config, 3)
    x = {'rgb': jnp.zeros((1, 2, 8, 8, 3)), 'spectrogram': jnp.zeros((1, 16, 8, 1))}
    params = jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x, train=False))(x)['params']
    assert model.apply({'params': params}, x, train=False).shape == (1, 3)

    sys.argv = [sys.argv[4], '--steps=1', '--out=']
    try:
        runpy.run_path(sys.argv[0], run_name='__main__')
    except SystemExit as e:
        assert not e.code, e.code
""")
    + _NO_TENSORFLOW_LOADED
    + "print('core ok')\n"
)


def _run_hidden(script: str, xla_flags: str, *args: str) -> subprocess.CompletedProcess:
    """`python -c script args...` on CPU with `XLA_FLAGS`, from the repository root."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags)
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=REPO,
    )


def test_model_train_step_and_benchmarks_run_with_the_core_install_only_no_tensorflow():
    blocked = _blocked_modules(_core_closure())
    assert {"tensorflow", "tensorflow_datasets", "av", "h5py", "sklearn"} <= set(blocked)
    result = _run_hidden(
        _SCRIPT,
        os.environ.get("XLA_FLAGS", ""),
        json.dumps(blocked),
        json.dumps(CORE_MODULES),
        json.dumps([os.path.join(REPO, s) for s in CORE_SCRIPTS]),
        CORE_BENCHMARK,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "core ok" in result.stdout
    assert "time / einsum time" in result.stdout  # the benchmark printed its comparison


# `python -m mbt.main ARGS` (argv[2]: JSON) with the core install alone.
_MAIN_SCRIPT = (
    _HIDE_OUTSIDE_CORE
    + textwrap.dedent("""
    sys.argv = ['mbt.main'] + json.loads(sys.argv[2])
    try:
        runpy.run_module('mbt.main', run_name='__main__', alter_sys=True)
    except SystemExit as e:
        assert not e.code, e.code
""")
    + _NO_TENSORFLOW_LOADED
    + "print('main ok')\n"
)


def _core_main(blocked: list[str], devices: int, *flags: str) -> subprocess.CompletedProcess:
    xla_flags = f"--xla_force_host_platform_device_count={devices}"
    return _run_hidden(_MAIN_SCRIPT, xla_flags, json.dumps(blocked), json.dumps(flags))


def test_the_trainer_runs_and_resumes_on_random_input_with_the_core_install_only(tmp_path):
    """`config.dataset.random_input`: no dataset, no TensorFlow; trained on one device, then
    resumed on two with more steps, tested both times; nothing exported."""
    blocked = _blocked_modules(_core_closure())
    workdir = str(tmp_path / "run")
    flags = (
        "--config=configs/synthetic.py:model=sft",
        f"--workdir={workdir}",
        "--config.dataset.random_input.enabled=True",
        "--config.dataset.random_input.test_examples=8",
        "--config.checkpoint.every_steps=3",
    )
    first = _core_main(blocked, 1, *flags, "--config.num_train_steps=6")
    assert first.returncode == 0 and "main ok" in first.stdout, first.stderr[-3000:]
    assert "no dataset is read" in first.stderr
    assert "1 local cpu devices" in first.stderr
    with open(os.path.join(workdir, "results_test.json")) as f:
        assert json.load(f)["step"] == 6
    assert not os.path.exists(os.path.join(workdir, "export"))

    again = _core_main(blocked, 2, *flags, "--config.num_train_steps=9")
    assert again.returncode == 0 and "main ok" in again.stdout, again.stderr[-3000:]
    assert "2 local cpu devices" in again.stderr
    assert "Resumed at step 6 of 9" in again.stderr
    with open(os.path.join(workdir, "results_test.json")) as f:
        results = json.load(f)
    assert results["step"] == 9
    assert results["metrics"]["num_examples"] == 8
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints")))[-1] == "9"
