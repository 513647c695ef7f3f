"""Finding a train state on disk and reading its parameters: flax msgpack files and orbax
checkpoint directories.

What `config.init_from.checkpoint_path` (or `load_scenic_mbt`'s path) may name, tried in order:
- a file: a flax msgpack checkpoint `checkpoint_<step>` (what
  `flax.training.checkpoints.save_checkpoint` wrote before flax moved to orbax);
- an orbax PyTree checkpoint directory, one holding `_METADATA`, `manifest.ocdbt` or
  `checkpoint` (flax's own test): what `save_checkpoint` writes since flax moved to orbax, and so
  what Scenic's `save_checkpoint` writes today, or one step of an orbax `CheckpointManager`;
- one step of mbt's training checkpoints (`<workdir>/checkpoints/<step>`: its `state`);
- a directory of `checkpoint_<step>` files or directories, else of numbered step directories:
  the highest step, read as above;
- an mbt workdir: the highest step of its `checkpoints/`.

Orbax directories are read with orbax itself (any sharding they were written with: every
array comes back as one numpy array), and only the parameters and the step are read: a train
state's optimizer moments are twice the size of its parameters.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import serialization

# Files whose presence makes a directory an orbax checkpoint, as flax's restore_checkpoint
# decides it (`checkpoint` is the aggregate file of orbax's older layout).
ORBAX_MARKERS = ("_METADATA", "manifest.ocdbt", "checkpoint")
STEP_KEYS = ("global_step", "step")  # where Scenic / mbt train states keep their step
# Where train states keep their parameters, most specific first.
PARAMS_LOCATIONS = (("optimizer", "target"), ("params",), ("target",))

_FLAX_STEP = re.compile(r"^checkpoint_(\d+)$")
_NUMBERED_STEP = re.compile(r"^(\d+)$")


@dataclasses.dataclass
class StoredParams:
    """A train state's parameters (nested dict of numpy arrays) and where they were."""

    path: str  # the msgpack file or orbax directory read
    params: dict[str, Any]
    location: str  # where in the state: 'optimizer/target' (older Scenic), 'params', ...
    step: int | None


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


def is_orbax_checkpoint(path: str) -> bool:
    return os.path.isdir(path) and any(
        os.path.exists(os.path.join(path, marker)) for marker in ORBAX_MARKERS
    )


def _highest_step(directory: str) -> str | None:
    """The `checkpoint_<step>` entry with the highest step, else the highest numbered directory
    (an orbax CheckpointManager's steps); None when there is neither. Unfinished orbax writes
    (`<name>.orbax-checkpoint-tmp-<n>`) match neither pattern."""
    flax_steps, numbered = {}, {}
    for name in os.listdir(directory):
        if match := _FLAX_STEP.match(name):
            flax_steps[int(match.group(1))] = name
        elif (match := _NUMBERED_STEP.match(name)) and os.path.isdir(os.path.join(directory, name)):
            numbered[int(match.group(1))] = name
    steps = flax_steps or numbered
    return os.path.join(directory, steps[max(steps)]) if steps else None


def locate(path: str) -> str:
    """The msgpack file or orbax directory that `path` names (module docstring)."""
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint path {path!r} is neither a file nor a directory")
    if is_orbax_checkpoint(path):
        return path
    if is_orbax_checkpoint(state := os.path.join(path, "state")):
        return state
    if step := _highest_step(path):
        return locate(step)
    nested = os.path.join(path, "checkpoints")  # an mbt workdir
    if os.path.isdir(nested) and (step := _highest_step(nested)):
        return locate(step)
    raise FileNotFoundError(
        f"no checkpoint found in directory {path!r}: looked for a flax msgpack file "
        "'checkpoint_<step>', an orbax checkpoint directory (holding _METADATA, manifest.ocdbt "
        "or checkpoint), 'checkpoint_<step>/' or numbered step directories, and an mbt "
        "workdir's 'checkpoints/<step>/state'"
    )


def read_msgpack(file: str) -> dict[str, Any]:
    """The state dict of a flax msgpack checkpoint file."""
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


def _orbax_metadata_tree(directory: str) -> dict[str, Any] | None:
    """The saved tree of an orbax PyTree checkpoint with array metadata (shape, dtype) as
    leaves, reading nothing but the metadata; None when the checkpoint has no tree metadata
    (orbax's older layout, or a damaged `_METADATA`)."""
    import orbax.checkpoint as ocp  # lazily: orbax is slow to import and only needed here

    from mbt import checkpointing  # its one_line; it imports orbax, so it is lazy here too

    try:
        metadata = ocp.PyTreeCheckpointer().metadata(directory)
    except Exception as err:  # orbax and tensorstore raise many unrelated types
        raise ValueError(
            f"{directory!r} could not be read as an orbax checkpoint "
            f"({checkpointing.one_line(err)})"
        ) from err
    # orbax >= 0.11 wraps the tree (StepMetadata.item_metadata.tree); older ones return it.
    tree = getattr(metadata, "item_metadata", metadata)
    tree = getattr(tree, "tree", tree)
    if tree is None:
        return None
    if not isinstance(tree, Mapping):
        raise ValueError(f"{directory!r} holds a {type(tree).__name__}, not a train state")
    return dict(tree)


def _subtree(tree: Mapping[str, Any], location: str) -> Any:
    node: Any = tree
    for key in filter(None, location.split("/")):
        node = node[key]
    return node


def _nest(location: str, value: Any) -> dict[str, Any]:
    """`{'a': {'b': value}}` for location 'a/b'."""
    keys = [k for k in location.split("/") if k]
    for key in reversed(keys):
        value = {key: value}
    return value


def _restore_orbax(directory: str, tree: dict[str, Any] | None) -> dict[str, Any]:
    """The orbax train state in `directory` as numpy arrays: with its metadata `tree`, only the
    parameters and the step (whatever sharding they were saved with); without, all of it."""
    import jax
    import orbax.checkpoint as ocp

    from mbt import checkpointing

    args = None
    if tree is not None:
        _, location = find_params(tree, directory)
        item = _nest(location, _subtree(tree, location)) if location else dict(tree)
        for key in STEP_KEYS:
            if key in tree and not isinstance(tree[key], Mapping | list | tuple):
                item[key] = tree[key]
        as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
        args = ocp.args.PyTreeRestore(item=item, restore_args=as_numpy, partial_restore=True)
    try:
        checkpointer = ocp.PyTreeCheckpointer()
        restored = (
            checkpointer.restore(directory)
            if args is None
            else checkpointer.restore(directory, args=args)
        )
    except Exception as err:  # orbax and tensorstore raise many unrelated types
        raise ValueError(
            f"{directory!r}: the orbax checkpoint could not be read ({checkpointing.one_line(err)})"
        ) from err
    if not isinstance(restored, Mapping):
        raise ValueError(f"{directory!r} holds a {type(restored).__name__}, not a train state")
    return jax.tree.map(np.asarray, dict(restored))


def _step_from_path(path: str) -> int | None:
    """The step a checkpoint path names: `checkpoint_<step>`, or mbt's `<step>/state`."""
    parts = os.path.normpath(path).split(os.sep)
    for name in reversed(parts[-2:]):
        if match := _FLAX_STEP.match(name) or _NUMBERED_STEP.match(name):
            return int(match.group(1))
    return None


def read_params(path: str) -> StoredParams:
    """The parameters of the train state that `path` names (module docstring), with their
    location in the state and the step."""
    found = locate(path)
    if os.path.isfile(found):
        state = read_msgpack(found)
    else:
        state = _restore_orbax(found, _orbax_metadata_tree(found))
    params, location = find_params(state, found)
    step = next((state[k] for k in STEP_KEYS if k in state), None)
    if step is None:
        step = _step_from_path(found)
    return StoredParams(found, params, location, None if step is None else int(np.asarray(step)))


def peek_params(path: str) -> tuple[str, dict[str, Any]]:
    """(file or directory, params tree) cheaply: an orbax checkpoint's tree holds metadata
    leaves with `.shape`, not arrays; a msgpack file is read whole."""
    found = locate(path)
    if os.path.isfile(found):
        return found, find_params(read_msgpack(found), found)[0]
    tree = _orbax_metadata_tree(found)
    return found, find_params(tree if tree is not None else _restore_orbax(found, None), found)[0]
