"""A multimodal model run on a subset of its modalities, sharing the full model's parameters.

Used by `python -m mbt.predict` for a file without an audio or a video stream and by the
robustness evaluation's dropped-token removal (`mbt.robustness`). TensorFlow-free.

The branch is `build_model` of the same config with `modalities` replaced. Whether a family
has branches (`ModelFamily.supports_branches`) and where each branch parameter lives in the full
model (`ModelFamily.branch_param_candidates`: e.g. MBT's and SFT's CLS renaming, MBT's shared
concat-fusion blocks) is the family's knowledge, next to its model.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import ml_collections

from mbt import export
from mbt import models
from mbt.pretrained import formats


def branch_families() -> tuple[str, ...]:
    """The `config.model.name`s whose model can run on a subset of its modalities."""
    return tuple(n for n in models.known_names() if models.get_family(n).supports_branches)


def branch_model(
    model_config: ml_collections.ConfigDict,
    num_classes: int,
    input_shapes: Mapping[str, Sequence[int]],
    params: Mapping[str, Any],
    modalities: Sequence[str],
):
    """(model, params) of the model of `model_config` on `modalities` only.

    `input_shapes`: per-example input shape of each modality (at least those kept), for the
    branch's parameter shapes. `params`: the full model's (nested); the branch's are the same
    arrays, not copies. Raises ValueError for a model without branches or a parameter the full
    model lacks.
    """
    family = models.get_family(model_config.get("name"))
    if not family.supports_branches:
        raise ValueError(
            f"config.model.name={family.name!r} cannot run a subset of its modalities "
            f"(drop a modality's tokens); models that can: {branch_families()}"
        )
    modalities = tuple(modalities)
    full_modalities = tuple(model_config.modalities)
    sub_config = ml_collections.ConfigDict(model_config.to_dict())
    sub_config.modalities = modalities
    model = models.build_model(sub_config, int(num_classes))
    expected = export.expected_param_shapes(model, {m: tuple(input_shapes[m]) for m in modalities})
    full = formats.flatten(params)
    branch = {}
    for path in expected:
        candidates = family.branch_param_candidates(path, modalities, full_modalities)
        source = next((c for c in candidates if c in full), None)
        if source is None:
            raise ValueError(
                f"branch {modalities}: parameter {path} has no counterpart "
                f"among {candidates} in the full model"
            )
        branch[path] = full[source]
    sub_params = formats.unflatten(branch)
    export.check_param_shapes(sub_params, expected, f"branch {modalities}")
    return model, sub_params
