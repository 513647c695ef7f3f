"""Device mesh, batch sharding and path-regex sharding rules for parameters and optimiser state.

The mesh has two axes, `('data', 'model')`, shaped by `config.mesh_shape` (one entry may be
-1 = "all remaining devices"; default `(-1, 1)`: pure data parallelism). Batches are split
over 'data' along their leading axis. Every array of the train state (parameters, optimiser
state, step, RNG) gets a `PartitionSpec` from its tree path:

1. Partition rules of the model's family (`ModelFamily.partition_rules`, `rules_for(config)`;
   regex searched in the '/'-joined path, first match wins): e.g. the attention heads of
   query/key/value/out and the hidden units of the MLP (transformers) or the output features
   of the convolutions (C-LSTM) are split over 'model'; small parameters have explicit
   `REPLICATE` rules. Optimiser-state paths end in the parameter's path, so momentum and Adam
   moments follow their parameter. The train state's own leaves (`step`, `rng`, scalar
   counters) are covered by `STATE_RULES`. An array that no rule covers (or whose rule has
   another rank) is replicated and reported in one warning (`uncovered_paths`).
2. FSDP (`config.fsdp`): the largest still-unsharded dimension divisible by the 'data' size
   of every array with at least `fsdp_min_size` elements is split over 'data'.

A dimension that the axis size does not divide stays replicated, so any mesh is valid.
Rules are applied to the abstract state from `jax.eval_shape`, before anything is allocated.
"""

import logging
import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mbt import models
from mbt.models.family import MODEL_AXIS
from mbt.models.family import REPLICATE

_LOG = logging.getLogger(__name__)

DATA_AXIS = "data"
AXES = (DATA_AXIS, MODEL_AXIS)

# The train state's leaves that are not parameters or their optimiser statistics.
STATE_RULES = (
    (r"^step$", REPLICATE),
    (r"^rng$", REPLICATE),
)


def resolve_mesh_shape(mesh_shape: Sequence[int] | None, num_devices: int) -> tuple[int, int]:
    """`(data, model)` with a -1 entry filled in; ValueError when it does not fit the devices."""
    shape = tuple(int(s) for s in (mesh_shape if mesh_shape is not None else (-1, 1)))
    if len(shape) != 2:
        raise ValueError(f"config.mesh_shape={shape} must have 2 entries (data, model)")
    if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"config.mesh_shape={shape}: entries must be positive, at most one -1")
    if -1 in shape:
        known = int(np.prod([s for s in shape if s != -1]))
        if num_devices % known:
            raise ValueError(
                f"config.mesh_shape={shape}: {num_devices} devices are not divisible by {known}"
            )
        shape = tuple(num_devices // known if s == -1 else s for s in shape)
    data, model = shape
    if data * model > num_devices:
        raise ValueError(
            f"config.mesh_shape={shape} needs {shape[0] * shape[1]} devices but "
            f"{num_devices} are available; use -1 for one axis"
        )
    return data, model


def make_mesh(
    mesh_shape: Sequence[int] | None = None, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """A `Mesh` with axes ('data', 'model') over `devices` (default: all devices).

    A shape with fewer devices than available (no -1) uses the first ones and logs a
    warning (single process only: every process must take part in a multi-process mesh).
    """
    devices = list(devices if devices is not None else jax.devices())
    shape = resolve_mesh_shape(mesh_shape, len(devices))
    used = shape[0] * shape[1]
    if used < len(devices):
        if jax.process_count() > 1:
            raise ValueError(
                f"config.mesh_shape={shape} uses {used} of {len(devices)} devices; "
                "with several processes the mesh must cover all devices"
            )
        _LOG.warning("config.mesh_shape=%s uses %d of the %d devices.", shape, used, len(devices))
        devices = devices[:used]
    try:
        grid = mesh_utils.create_device_mesh(shape, devices=devices)
    except (ValueError, AssertionError, NotImplementedError):
        grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, AXES)


def path_to_str(path) -> str:
    """Tree path -> 'a/b/0/c' (dict keys, attribute names and sequence indices)."""
    parts = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
        else:
            parts.append(str(entry))
    return "/".join(parts)


def rules_for(model_config) -> tuple[tuple[str, tuple], ...]:
    """The partition rules of the family of `config.model.name`."""
    return tuple(models.get_family(model_config.get("name")).partition_rules)


def matching_rule(
    path: str, shape: Sequence[int], rules: Sequence[tuple[str, tuple]]
) -> tuple | None:
    """The spec of the first rule whose regex is found in `path`; None when no rule covers it.

    A 0-d array is always covered (replicated); a rule of another rank than `shape` (and not
    `REPLICATE`) does not cover it.
    """
    if len(shape) == 0:
        return REPLICATE
    for pattern, rule in tuple(rules) + STATE_RULES:
        if re.search(pattern, path):
            if rule == REPLICATE or len(rule) == len(shape):
                return tuple(rule)
            return None
    return None


def spec_for(
    path: str,
    shape: Sequence[int],
    mesh: Mesh,
    *,
    rules: Sequence[tuple[str, tuple]],
    fsdp: bool = False,
    fsdp_min_size: int = 2**14,
) -> P:
    """PartitionSpec of one array from its path and shape (see the module docstring)."""
    spec: list[str | None] = [None] * len(shape)
    rule = matching_rule(path, shape, rules)
    if mesh.shape[MODEL_AXIS] > 1 and rule:
        for dim, axis in enumerate(rule):
            if axis is not None and shape[dim] % mesh.shape[axis] == 0:
                spec[dim] = axis
    data_size = mesh.shape[DATA_AXIS]
    if fsdp and data_size > 1 and int(np.prod(shape, dtype=np.int64)) >= fsdp_min_size:
        free = [d for d in range(len(shape)) if spec[d] is None and shape[d] % data_size == 0]
        if free:
            largest = max(free, key=lambda d: (shape[d], -d))
            spec[largest] = DATA_AXIS
    return P(*spec)


def uncovered_paths(abstract_tree: Any, rules: Sequence[tuple[str, tuple]]) -> list[str]:
    """The '/'-joined paths of the leaves no rule covers (`matching_rule`), in tree order."""
    return [
        path_to_str(path)
        for path, leaf in jax.tree_util.tree_leaves_with_path(abstract_tree)
        if matching_rule(path_to_str(path), np.shape(leaf), rules) is None
    ]


def tree_shardings(
    abstract_tree: Any,
    mesh: Mesh,
    *,
    rules: Sequence[tuple[str, tuple]],
    fsdp: bool = False,
    fsdp_min_size: int = 2**14,
) -> Any:
    """`NamedSharding` for every leaf of an abstract tree (e.g. `jax.eval_shape` output).

    `rules`: the model family's partition rules (`rules_for(config.model)`). Leaves no rule
    covers are replicated (FSDP still applies) and listed in one warning.
    """
    uncovered = uncovered_paths(abstract_tree, rules)
    if uncovered:
        _LOG.warning(
            "%d arrays match no partition rule of the model family and are replicated over "
            "'model' (add rules to its ModelFamily.partition_rules): %s",
            len(uncovered),
            ", ".join(uncovered),
        )

    def one(path, leaf):
        return NamedSharding(
            mesh,
            spec_for(
                path_to_str(path),
                np.shape(leaf),
                mesh,
                rules=rules,
                fsdp=fsdp,
                fsdp_min_size=fsdp_min_size,
            ),
        )

    return jax.tree_util.tree_map_with_path(one, abstract_tree)


def describe_shardings(shardings: Any) -> list[str]:
    """Lines 'path: spec' for the leaves that are not fully replicated (for logging)."""
    lines = []
    for path, sharding in jax.tree_util.tree_leaves_with_path(shardings):
        if any(axis is not None for axis in sharding.spec):
            lines.append(f"{path_to_str(path)}: {tuple(sharding.spec)}")
    return lines


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over 'data', replicated over 'model'."""
    return NamedSharding(mesh, P(DATA_AXIS))


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Per-process numpy batch `[local_batch, ...]` -> global arrays `[global_batch, ...]`.

    With one process the global batch is the local one; with several, process `i`'s rows are
    the slice of the global batch that lives on its devices.
    """
    sharding = batch_sharding(mesh)
    return {
        name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for name, value in local_batch.items()
    }
