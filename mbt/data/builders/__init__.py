"""TFDS builders for AudioSet, VGGSound and EPIC-Kitchens-100 (local copies, manual dir).

Importing this package registers `audioset`, `vggsound` and `epic_kitchens` with TFDS, so
`tfds build --imports=mbt.data.builders vggsound --config=tiny ...` and
`tfds.builder('vggsound/tiny', data_dir=...)` find them.
"""

from mbt.data.builders.audioset import Audioset
from mbt.data.builders.epic_kitchens import EpicKitchens
from mbt.data.builders.vggsound import Vggsound

__all__ = ["Audioset", "EpicKitchens", "Vggsound"]
