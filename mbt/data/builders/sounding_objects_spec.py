"""The sounding-objects benchmark's registry entry (no TensorFlow); builder and generator are
in `sounding_objects.py`."""

from mbt.data import registry

SPEC = registry.register(
    registry.DatasetSpec(
        name="sounding_objects",
        builder="mbt.data.builders.sounding_objects:SoundingObjects",
        default_splits=("train", "test", "test"),
        label_kind=registry.SINGLE_LABEL,
        num_classes=4,
        default_fps=10.0,
        synthetic="mbt.data.builders.sounding_objects:generate",
    )
)
