"""AudioSet's registry entry (no TensorFlow); the builder is `audioset.Audioset`."""

from mbt.data import registry

SPEC = registry.register(
    registry.DatasetSpec(
        name="audioset",
        builder="mbt.data.builders.audioset:Audioset",
        default_splits=("balanced_train", "eval", "eval"),
        label_kind=registry.MULTI_LABEL,
        num_classes=527,
        synthetic="mbt.data.synthetic:generate_audioset",
    )
)
