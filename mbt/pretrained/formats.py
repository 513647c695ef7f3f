"""Readers of the on-disk checkpoint formats, returning plain numpy parameters.

Formats (`config.init_from.checkpoint_format`):
- `vit_npz`: the `vision_transformer` repository's `.npz` (flat '/'-joined keys such as
  `Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel`).
- `big_vision_npz`: a big_vision `.npz` (keys under `params/`, e.g. `params/pos_embedding`).
- `scenic`: a Scenic MBT training checkpoint (msgpack `checkpoint_<step>`).
- `flax`: a Scenic/Flax ViT checkpoint (msgpack `checkpoint_<step>` holding a ViT params tree).
- `auto`: decided from the file: `.npz` by its keys, msgpack by whether the tree is an MBT.

msgpack checkpoints are what `flax.training.checkpoints.save_checkpoint` writes: one file
`checkpoint_<step>` holding the train state. The parameters sit under `optimizer/target`
(Scenic before its optax move), `params` (newer Scenic), or `target`; a bare params tree works too.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import serialization

FORMATS = ("auto", "vit_npz", "big_vision_npz", "scenic", "flax")

# Where train states keep their parameters, most specific first.
PARAMS_LOCATIONS = (("optimizer", "target"), ("params",), ("target",))

_CHECKPOINT_FILE = re.compile(r"^checkpoint_(\d+)$")


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


def resolve_checkpoint_file(path: str) -> str:
    """`path` itself if it is a file, else the `checkpoint_<step>` with the highest step in it."""
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint path {path!r} is neither a file nor a directory")
    steps = {}
    for name in os.listdir(path):
        match = _CHECKPOINT_FILE.match(name)
        if match and os.path.isfile(os.path.join(path, name)):
            steps[int(match.group(1))] = name
    if not steps:
        raise FileNotFoundError(
            f"no msgpack checkpoint file 'checkpoint_<step>' in directory {path!r} (orbax "
            "checkpoint directories are not read here; point at a flax msgpack file)"
        )
    return os.path.join(path, steps[max(steps)])


def read_msgpack(path: str) -> dict[str, Any]:
    """The state dict of a flax msgpack checkpoint (file, or directory of `checkpoint_<step>`)."""
    file = resolve_checkpoint_file(path)
    with open(file, "rb") as f:
        data = f.read()
    try:
        tree = serialization.msgpack_restore(data)
    except Exception as err:  # msgpack raises several unrelated types on garbage
        raise ValueError(
            f"{file!r} is not a flax msgpack checkpoint ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(tree, dict):
        raise ValueError(f"{file!r} holds a {type(tree).__name__}, not a dict of parameters")
    return tree


def find_params(state: Mapping[str, Any], source: str = "checkpoint") -> tuple[dict, str]:
    """The params tree inside a train state, and where it was ('optimizer/target', 'params', …).

    A state that holds none of the known locations but has parameter-like keys at the top
    (`Transformer`, `embedding…`) is itself the params tree (location '').
    """
    for location in PARAMS_LOCATIONS:
        node: Any = state
        for key in location:
            node = node.get(key) if isinstance(node, Mapping) else None
        if isinstance(node, Mapping) and node:
            # Newer flax nests a second 'params' collection inside some states.
            if set(node) == {"params"} and isinstance(node["params"], Mapping):
                return dict(node["params"]), "/".join(location) + "/params"
            return dict(node), "/".join(location)
    if "Transformer" in state or any(str(k).startswith("embedding") for k in state):
        return dict(state), ""
    raise ValueError(
        f"{source}: no parameters found; looked under "
        f"{['/'.join(loc) for loc in PARAMS_LOCATIONS]} and at the top level; "
        f"top-level keys are {sorted(state)[:20]}"
    )


def is_mbt_tree(params: Mapping[str, Any]) -> bool:
    """True when a params tree is an MBT's rather than a plain ViT's.

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
    if kernel is not None and np.ndim(kernel) == 5:
        return True
    # A single-modality video MBT with a 2-D (temporal sampling) kernel has a ViT's names; its
    # position embedding covers frames x grid, which no square image grid gives.
    posemb = transformer.get("posembed_input", {})
    table = posemb.get("pos_embedding") if isinstance(posemb, Mapping) else None
    if table is None or np.ndim(table) != 3:
        return False
    grid = np.shape(table)[1] - (1 if "cls" in names else 0)
    return grid > 0 and math.isqrt(grid) ** 2 != grid


def detect_format(path: str) -> str:
    """One of `vit_npz`, `big_vision_npz`, `scenic`, `flax` for the checkpoint at `path`."""
    file = path if os.path.isfile(path) else None
    if file is not None and file.endswith(".npz"):
        keys = read_npz_keys(file)
        if any(k.startswith("params/") for k in keys):
            return "big_vision_npz"
        return "vit_npz"
    file = resolve_checkpoint_file(path)
    with open(file, "rb") as f:
        magic = f.read(4)
    if magic[:2] == b"PK":  # a zip archive: an .npz under another name
        keys = read_npz_keys(file)
        return "big_vision_npz" if any(k.startswith("params/") for k in keys) else "vit_npz"
    params, _ = find_params(read_msgpack(file), file)
    return "scenic" if is_mbt_tree(params) else "flax"


def read_npz_keys(path: str) -> list[str]:
    """The array names of an `.npz` without loading the arrays."""
    with np.load(path, allow_pickle=False) as data:
        return list(data.files)
