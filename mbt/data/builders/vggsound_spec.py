"""VGGSound's registry entry and its official class list (no TensorFlow); the builder is
`vggsound.Vggsound`.

`vggsound_classes.txt` (package data) holds the 309 official class names, one per line, in
class-index order: the names of the authors' `data/stat.csv` (github.com/hche11/VGGSound)
sorted as their data loader sorts them (Python's `sorted`, by code point). Names are kept
exactly, including the official spelling 'eletric blender running'.
"""

import functools
import importlib.resources

from mbt.data import registry

NUM_CLASSES = 309
CLASS_LIST = "vggsound_classes.txt"

SPEC = registry.register(
    registry.DatasetSpec(
        name="vggsound",
        builder="mbt.data.builders.vggsound:Vggsound",
        default_splits=("train", "test", "test"),
        label_kind=registry.SINGLE_LABEL,
        num_classes=NUM_CLASSES,
        synthetic="mbt.data.synthetic:generate_vggsound",
    )
)


@functools.cache
def official_class_names() -> tuple[str, ...]:
    """The 309 official VGGSound class names; a class index is a position in this tuple.

    Raises:
      RuntimeError: the shipped list is damaged (wrong count, repeats, not sorted).
    """
    text = importlib.resources.files(__package__).joinpath(CLASS_LIST).read_text("utf-8")
    names = tuple(line for line in text.splitlines() if line)
    if len(set(names)) != NUM_CLASSES or len(names) != NUM_CLASSES or list(names) != sorted(names):
        raise RuntimeError(
            f"{__package__}/{CLASS_LIST} must hold {NUM_CLASSES} distinct names in sorted "
            f"order; it holds {len(names)} ({len(set(names))} distinct). Reinstall mbt."
        )
    return names
