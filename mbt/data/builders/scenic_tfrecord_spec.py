"""Scenic/DMVR SequenceExample TFRecords' registry entry (no TensorFlow).

No TFDS builder: `mbt.data.sources.scenic_source_from_values` reads the records of
`config.dataset.tfrecord_pattern` directly (`mbt.data.scenic_tfrecord`); the label space
comes from `config.dataset.{num_classes, class_names, multi_label, class_splits}`.
"""

from mbt.data import registry

SPEC = registry.register(
    registry.DatasetSpec(
        name="scenic_tfrecord",
        source_factory="mbt.data.sources:scenic_source_from_values",
        default_splits=("train", "validation", "test"),
        label_kind=registry.FROM_CONFIG,
        class_names_from="config",
        default_fps=25.0,
    )
)
