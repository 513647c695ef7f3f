"""The dataset registry: built-in specs, lookups by name, and reading specs without TensorFlow."""

import os
import subprocess
import sys
import textwrap

import pytest

from mbt.data import registry

BUILTIN = ("audioset", "epic_kitchens", "scenic_tfrecord", "vggsound")


def test_names_lists_the_builtin_datasets():
    assert set(BUILTIN) <= set(registry.names())
    assert list(registry.names()) == sorted(registry.names())


def test_builtin_specs():
    epic = registry.get("epic_kitchens")
    assert epic.label_layout({}) == (False, (97, 300))
    assert epic.head_names == ("verb", "noun") and epic.num_classes == 397
    assert registry.get("audioset").label_layout({}) == (True, None)
    assert registry.get("vggsound").label_layout({}) == (False, None)
    assert registry.get("vggsound").default_splits == ("train", "test", "test")
    scenic = registry.get("scenic_tfrecord")
    assert scenic.builder is None and scenic.class_names_from == "config"
    assert scenic.label_layout({"multi_label": True, "class_splits": ()}) == (True, None)
    assert scenic.label_layout({"multi_label": True, "class_splits": (2, 3)}) == (False, (2, 3))
    for name in BUILTIN:
        spec = registry.get(name)
        target = spec.builder or spec.source_factory
        module, _, attribute = target.partition(":")
        assert module.startswith("mbt.data.") and attribute


def test_unknown_name_lists_known_names_and_mentions_imports():
    with pytest.raises(
        ValueError, match=r"'kinetics'.*known: \('audioset'.*config.dataset.imports"
    ):
        registry.get("kinetics")
    with pytest.raises(ModuleNotFoundError, match="no_such_dataset_module"):
        registry.get("vggsound", imports=("no_such_dataset_module",))


def test_register_rejects_a_different_spec_under_a_known_name():
    spec = registry.get("vggsound")
    assert registry.register(spec) is spec  # the same spec again: fine
    clash = registry.DatasetSpec(
        name="vggsound",
        builder="somewhere:Else",
        default_splits=("train", "test", "test"),
        label_kind=registry.SINGLE_LABEL,
    )
    with pytest.raises(ValueError, match="already registered"):
        registry.register(clash)


def test_spec_checks_its_fields():
    with pytest.raises(ValueError, match="label_kind"):
        registry.DatasetSpec("x", ("a", "b", "c"), "several", builder="m:C")
    with pytest.raises(ValueError, match="exactly one of builder and source_factory"):
        registry.DatasetSpec("x", ("a", "b", "c"), registry.SINGLE_LABEL)
    with pytest.raises(ValueError, match="head name per split"):
        registry.DatasetSpec(
            "x", ("a", "b", "c"), registry.CLASS_SPLITS, builder="m:C", class_splits=(2, 3)
        )


_NO_TF = textwrap.dedent("""
    import importlib.abc, sys

    class BlockTensorFlow(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split('.')[0] in ('tensorflow', 'tensorflow_datasets'):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
            return None

    sys.meta_path.insert(0, BlockTensorFlow())
    from mbt.data import registry
    names = registry.names()
    specs = [registry.get(n) for n in names]
    from mbt.tools import flops
    import ml_collections
    config = ml_collections.ConfigDict({'dataset': {'name': 'epic_kitchens'}})
    assert flops.num_classes_from_config(config) == 397
    from mbt import export
    assert export.default_head_names('epic_kitchens', (97, 300)) == ('verb', 'noun')
    loaded = sorted(m for m in sys.modules
                    if m.split('.')[0] in ('tensorflow', 'tensorflow_datasets'))
    assert not loaded, loaded
    print(' '.join(names))
""")


def test_specs_are_read_without_tensorflow():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, "-c", _NO_TF],
        capture_output=True,
        text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        timeout=300,
        cwd=repo,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert set(BUILTIN) <= set(result.stdout.split())
