"""Shared by the tests of `scripts/`: a script imported as a module (its `main` is not run)."""

import functools
import importlib.util
import os
import types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@functools.cache
def load_script(name: str) -> types.ModuleType:
    """`scripts/<name>.py` as a module, loaded once per session (scripts that define absl flags
    on the global FLAGS could not be loaded twice)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "scripts", f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
