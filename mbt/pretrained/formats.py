"""Readers of the on-disk checkpoint formats, returning plain numpy parameters.

Formats (`config.init_from.checkpoint_format`):
- `vit_npz`: the `vision_transformer` repository's `.npz` (flat '/'-joined keys such as
  `Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel`).
- `big_vision_npz`: a big_vision `.npz` (keys under `params/`, e.g. `params/pos_embedding`).
- `scenic`: an MBT train state: a Scenic MBT training checkpoint, or mbt's own.
- `flax`: a Scenic/Flax ViT train state (a ViT params tree).
- `torch_safetensors`: a timm or Hugging Face ViT in a `.safetensors` file (`torch_vit`).
- `auto`: decided from the file: `.npz` by its keys, a train state by whether its params tree
  is an MBT's.

Train states are flax msgpack files or orbax directories (`train_state` finds and reads them).
The parameters sit under `optimizer/target` (Scenic before its optax move), `params` (newer
Scenic, mbt), or `target`; a bare params tree works too.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from mbt.pretrained import train_state

FORMATS = ("auto", "vit_npz", "big_vision_npz", "scenic", "flax", "torch_safetensors")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dict → `{'a/b/c': leaf}`; array-like leaves (numpy, jax, `ShapeDtypeStruct`) are
    kept as they are, anything else becomes a numpy array."""
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, path + "/"))
        else:
            flat[path] = (
                value if hasattr(value, "shape") and hasattr(value, "dtype") else np.asarray(value)
            )
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """`{'a/b/c': array}` → nested dict."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return tree


def read_npz(path: str) -> dict[str, np.ndarray]:
    """All arrays of an `.npz` file by key (loaded eagerly; the file is closed after)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config.init_from.checkpoint_path={path!r}: no such file")
    with np.load(path, allow_pickle=False) as data:
        return {key: np.asarray(data[key]) for key in data.files}


def _shape(leaf: Any) -> tuple[int, ...]:
    """An array's shape, or the shape an orbax metadata leaf records."""
    return tuple(leaf.shape) if hasattr(leaf, "shape") else np.shape(leaf)


def is_mbt_tree(params: Mapping[str, Any]) -> bool:
    """True when a params tree (arrays, or orbax metadata leaves) is an MBT's rather than a
    plain ViT's.

    MBT-only marks: a `bottleneck`, modality-suffixed embeddings/position embeddings/blocks,
    `cls<modality>`, a 3-D (tubelet) embedding kernel, or a position embedding whose patch
    count is not a square grid (frames x grid of a temporal-sampling video model).
    """
    names = set(params)
    if "bottleneck" in names or any(n.startswith("embedding_") for n in names):
        return True
    if any(n.startswith("cls") and n != "cls" for n in names):
        return True
    transformer = params.get("Transformer", {})
    if any(re.match(r"^(posembed_input_|encoderblock_\d+_)", n) for n in transformer):
        return True
    kernel = (
        params.get("embedding", {}).get("kernel")
        if isinstance(params.get("embedding"), Mapping)
        else None
    )
    if kernel is not None and len(_shape(kernel)) == 5:
        return True
    # A single-modality video MBT with a 2-D (temporal sampling) kernel has a ViT's names; its
    # position embedding covers frames x grid, which no square image grid gives.
    posemb = transformer.get("posembed_input", {})
    table = posemb.get("pos_embedding") if isinstance(posemb, Mapping) else None
    if table is None or len(_shape(table)) != 3:
        return False
    grid = _shape(table)[1] - (1 if "cls" in names else 0)
    return grid > 0 and math.isqrt(grid) ** 2 != grid


def safetensors_file(path: str) -> str | None:
    """`path` if it is a `.safetensors` file, a Hugging Face model folder's
    `model.safetensors`, else None."""
    if path.endswith(".safetensors") and os.path.isfile(path):
        return path
    inside = os.path.join(path, "model.safetensors")
    return inside if os.path.isdir(path) and os.path.isfile(inside) else None


def detect_format(path: str) -> str:
    """One of `vit_npz`, `big_vision_npz`, `scenic`, `flax`, `torch_safetensors` for the
    checkpoint at `path`."""
    if safetensors_file(path):
        return "torch_safetensors"
    file = path if os.path.isfile(path) else None
    if file is not None and file.endswith(".npz"):
        keys = read_npz_keys(file)
        if any(k.startswith("params/") for k in keys):
            return "big_vision_npz"
        return "vit_npz"
    found = train_state.locate(path)
    if os.path.isfile(found):
        with open(found, "rb") as f:
            magic = f.read(4)
        if magic[:2] == b"PK":  # a zip archive: an .npz under another name
            keys = read_npz_keys(found)
            return "big_vision_npz" if any(k.startswith("params/") for k in keys) else "vit_npz"
    _, params = train_state.peek_params(found)
    return "scenic" if is_mbt_tree(params) else "flax"


def read_npz_keys(path: str) -> list[str]:
    """The array names of an `.npz` without loading the arrays."""
    with np.load(path, allow_pickle=False) as data:
        return list(data.files)
