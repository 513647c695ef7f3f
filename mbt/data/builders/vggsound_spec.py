"""VGGSound's registry entry (no TensorFlow); the builder is `vggsound.Vggsound`."""

from mbt.data import registry

SPEC = registry.register(
    registry.DatasetSpec(
        name="vggsound",
        builder="mbt.data.builders.vggsound:Vggsound",
        default_splits=("train", "test", "test"),
        label_kind=registry.SINGLE_LABEL,
        num_classes=309,
        synthetic="mbt.data.synthetic:generate_vggsound",
    )
)
