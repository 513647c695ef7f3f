"""The model, the train step and the benchmarks must run where TensorFlow is not installed.

The GPU machines have JAX but no TensorFlow; only `mbt.data` may import it. A subprocess makes
`import tensorflow` fail (as on such a machine) and imports and runs the TF-free modules.
"""

import os
import subprocess
import sys
import textwrap

TF_FREE_MODULES = (
    "mbt.models",
    "mbt.models.mbt",
    "mbt.models.vit",
    "mbt.models.tokenizers",
    "mbt.train_step",
    "mbt.losses",
    "mbt.mixup",
    "mbt.optim",
    "mbt.sharding",
    "mbt.metrics",
    "mbt.evaluate",
    "mbt.tools.flops",
    "mbt.train",
    "mbt.checkpointing",
    "mbt.models.sft",
    "mbt.models.clstm",
    "mbt.pretrained",
    "mbt.export",
    "mbt.data.registry",
    "mbt.data.builders.audioset_spec",
    "mbt.data.builders.vggsound_spec",
    "mbt.data.builders.epic_kitchens_spec",
    "mbt.data.builders.scenic_tfrecord_spec",
)
# Benchmark scripts, imported as modules (their main() is not run).
TF_FREE_SCRIPTS = ("scripts/benchmark_model.py", "scripts/fusion_flops.py")

_SCRIPT = textwrap.dedent("""
    import importlib, importlib.abc, sys

    class BlockTensorFlow(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split('.')[0] in ('tensorflow', 'tensorflow_datasets'):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
            return None

    sys.meta_path.insert(0, BlockTensorFlow())
    import importlib.util
    for module in sys.argv[1:]:
        if module.endswith('.py'):
            spec = importlib.util.spec_from_file_location('script_under_test', module)
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
        else:
            importlib.import_module(module)

    import jax, jax.numpy as jnp
    from mbt import models
    config = models.default_mbt_config()
    config.variant = None
    config.update(hidden_size=8, num_layers=2, num_heads=2, mlp_dim=16, fusion_layer=1)
    config.tokenizers.rgb.patches = (2, 8, 8)
    config.tokenizers.spectrogram.patches = (8, 8)
    model = models.build_model(config, 3)
    x = {'rgb': jnp.zeros((1, 2, 8, 8, 3)), 'spectrogram': jnp.zeros((1, 16, 8, 1))}
    params = model.init(jax.random.PRNGKey(0), x, train=False)['params']
    assert model.apply({'params': params}, x, train=False).shape == (1, 3)
    loaded = sorted(m for m in sys.modules
                    if m.split('.')[0] in ('tensorflow', 'tensorflow_datasets'))
    assert not loaded, loaded
    print('ok')
""")


def test_model_and_train_step_import_and_run_without_tensorflow():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    scripts = [os.path.join(repo, s) for s in TF_FREE_SCRIPTS]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT, *TF_FREE_MODULES, *scripts],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=repo,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")
