"""EPIC-Kitchens-100's registry entry (no TensorFlow); the builder is
`epic_kitchens.EpicKitchens`. Labels: a verb head (97 classes) and a noun head (300)."""

from mbt.data import registry

SPEC = registry.register(
    registry.DatasetSpec(
        name="epic_kitchens",
        builder="mbt.data.builders.epic_kitchens:EpicKitchens",
        default_splits=("train", "validation", "validation"),
        label_kind=registry.CLASS_SPLITS,
        class_splits=(97, 300),
        head_names=("verb", "noun"),
        num_classes=97 + 300,
        synthetic="mbt.data.synthetic:generate_epic",
    )
)
