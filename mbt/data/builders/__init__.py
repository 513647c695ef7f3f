"""TFDS builders for AudioSet, VGGSound, EPIC-Kitchens-100 and the sounding-objects
benchmark, and every dataset's spec.

`<name>.py` holds a builder (imports TensorFlow); `<name>_spec.py` its `mbt.data.registry`
entry (imports no TensorFlow). Importing this package imports neither: the builder
classes are loaded on first access, and importing a builder module
registers it with TFDS, e.g. `tfds build --imports=mbt.data.builders.vggsound vggsound`.
"""

import importlib

_BUILDERS = {
    "Audioset": "mbt.data.builders.audioset",
    "EpicKitchens": "mbt.data.builders.epic_kitchens",
    "SoundingObjects": "mbt.data.builders.sounding_objects",
    "Vggsound": "mbt.data.builders.vggsound",
}

__all__ = sorted(_BUILDERS)


def __getattr__(name: str):
    if name in _BUILDERS:
        return getattr(importlib.import_module(_BUILDERS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
